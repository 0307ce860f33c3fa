"""Speed of neuron-level attribution against what the hardware allows, all measured in one process.

    kit    : :func:`~moescope.attribution.attribute` over the prompts (every level, every neuron, batches of
             ``batch_size`` whose prompts share each expert's vocabulary projection), per prompt
    loop   : the reference per-neuron loop (one unembedding product + log-softmax per neuron), per prompt
    floor  : the work no exact method avoids, at rates measured in the same process, per prompt:
             projection = 2 H V x (the widths of the distinct experts each batch selected + the FFN widths)
             at the matmul rate of the projection's own shape, plus N V exponentials (N = neurons per prompt)
             at the exp rate of a fused, cache-resident exp-sum kernel.   ratio = kit / floor
    single_prompt_floor : the same without sharing projections across prompts (2 N H V flops per prompt)

On a CPU the suite runs twice, in two processes started with each numerics (:data:`moescope.numerics.CHOICES`):
pinned (the kit's default: identical on every CPU kind) and native (the CPU's fastest kernels).
:func:`both_numerics` puts them side by side, each kit time against the floor at the *native* rates (the
machine's physical limit), with ``pinned_over_native`` = kit time pinned / kit time native: the price of
identical results.

Exactness: a sample of neuron scores (the largest and random ones) against a float64 reference computed directly
from the model's weights (:func:`moescope.attribution.realshape.reference_neuron_scores`).

Models are organisms (loaded) or ids of :data:`moescope.configs.REAL_CONFIGS` (random weights at real width,
cut to ``layers``). One command per device (see :func:`suite`):

    moescope benchmark                  # CPU: the MoE organisms + OLMoE-1B-7B shapes (1 layer, fp32, 8 prompts)
    moescope benchmark --device cuda    # GPU: OLMoE-1B-7B and Qwen1.5-MoE-A2.7B, full depth, bf16, 128 prompts
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import torch
from torch import nn

from .. import arch, configs, numerics
from ..capture import capture
from ..offload import input_device, materialized
from ..prompts import context_length, encode
from . import lpi as attribution
from . import realshape

CPU_REAL = ("allenai/OLMoE-1B-7B-0924",)
GPU_REAL = ("allenai/OLMoE-1B-7B-0924", "Qwen/Qwen1.5-MoE-A2.7B")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeats: int) -> float:
    """Shortest of ``repeats`` timed calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(device: torch.device, dtype: torch.dtype, rows: int, hidden: int, vocab: int, repeats: int = 2) -> float:
    """FLOP/s of the projection's own product: [rows, hidden] @ [hidden, vocab] (the unembedding transposed)."""
    a = torch.randn(rows, hidden, device=device, dtype=dtype)
    w = torch.randn(vocab, hidden, device=device, dtype=dtype)
    return 2 * rows * hidden * vocab / _best_time(lambda: a @ w.T, device, repeats)


def _exp_sum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.exp(x[:, None] * y[None, :]).sum(-1)


def exp_rate(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Exponentials per second of a compiled exp-sum kernel on cache-resident data (one mul, exp, add each) over
    n x n elements (default 4096^2 on a CPU, 32768^2 on a GPU, where launch latency must not count)."""
    n = n or (4096 if device.type == "cpu" else 32768)
    kernel = torch.compile(_exp_sum, dynamic=False, options={"cpp.simdlen": 256})
    x = torch.rand(n, device=device) * 0.01
    y = torch.rand(n, device=device)
    return n * n / _best_time(lambda: kernel(x, y), device, repeats)


def warm_up_kernels(device: torch.device, projection_dtype: torch.dtype) -> None:
    """Compile the fused neuron kernel for the shapes it will see (one prompt or several), outside the timings."""
    for g in (1, 2):
        lp = torch.log_softmax(torch.randn(g, 7, device=device), -1)
        attribution.fused_logsumexp(lp, torch.randn(g, 3, device=device), torch.randn(3, 7, device=device).to(projection_dtype))


def neurons_per_prompt(model: nn.Module) -> int:
    """Neurons scored per prompt: every neuron of each selected expert and of the shared/dense FFN."""
    total = 0
    for p in arch.layers(model):
        if p.is_moe:
            total += int(model.config.num_experts_per_tok) * p.experts.down_proj.shape[-1]
        if p.ffn is not None:
            total += p.ffn.down_proj.weight.shape[-1]
    return total


@torch.no_grad()
def projected_columns(model: nn.Module, tokenizer, prompts: list[str], batch_size: int) -> int:
    """Neuron columns of the vocabulary projection the batches need: per batch and layer, the widths of the distinct
    experts its prompts selected plus the shared/dense FFN's width."""
    enc = encode(tokenizer, prompts, None, context_length(model))
    device, parts, total = input_device(model), arch.layers(model), 0
    for start in range(0, len(prompts), batch_size):
        sl = slice(start, start + batch_size)
        trace = capture(model, enc.input_ids[sl].to(device), enc.attention_mask[sl].to(device))
        for p, c in zip(parts, trace.layers):
            if c.topk_index is not None:
                total += len(c.topk_index.unique()) * p.experts.down_proj.shape[-1]
            if c.ffn_out is not None:
                total += p.ffn.down_proj.weight.shape[-1]
    return total


@torch.no_grad()
def loop_seconds_per_neuron(model: nn.Module, tokenizer, prompt: str, n_neurons: int = 200) -> float:
    """Time of the reference per-neuron loop (one unembedding + log-softmax per neuron), per neuron."""
    enc = encode(tokenizer, [prompt], None, context_length(model))
    device = input_device(model)
    tr = capture(model, enc.input_ids.to(device), enc.attention_mask.to(device))
    readout = attribution.Readout(model)
    tr = attribution.on_device(tr, readout.device)
    s, w = readout.scale(tr.resid_final), tr.logits.argmax(-1)
    index, layer = next((i, c) for i, c in enumerate(tr.layers) if c.topk_index is not None or c.ffn_out is not None)
    part = arch.layers(model)[index]
    with materialized(part.experts, part.ffn):
        if layer.topk_index is not None:
            coef, gate = layer.expert_coef[0, 0].float(), layer.topk_weight[0, 0].float()
            down = part.experts.down_proj[int(layer.topk_index[0, 0])].float()
        else:
            coef, gate, down = layer.ffn_coef[0].float(), layer.ffn_gate[0].float(), part.ffn.down_proj.weight.float()
    u = layer.resid_mid.float()
    n = min(n_neurons, coef.shape[0])
    _sync(device)
    start = time.perf_counter()
    for k in range(n):
        x = u + gate * coef[k] * down[:, k].to(u.device)
        float(readout.logprob(x, s, w) - readout.logprob(u, s, w))
    _sync(device)
    return (time.perf_counter() - start) / n


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return realshape.peak_rss_gib()


def run(model: nn.Module, tokenizer, prompts: list[str], batch_size: int, label: str,
        projection_dtype: torch.dtype | None = None) -> dict:
    """One benchmark row: kit, loop and floor per prompt in the same process, their ratios, exactness, memory."""
    device = input_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    proj_dtype = projection_dtype or torch.float32
    n = neurons_per_prompt(model)
    hidden, vocab = int(model.config.hidden_size), int(model.config.vocab_size)
    warm_up_kernels(device, proj_dtype)
    start = time.perf_counter()
    attr = attribution.attribute(model, tokenizer, prompts, target="top1", batch_size=batch_size, progress=False,
                                 projection_dtype=projection_dtype)
    _sync(device)
    kit = (time.perf_counter() - start) / len(prompts)
    loop = loop_seconds_per_neuron(model, tokenizer, prompts[0]) * n
    widest = max(p.experts.down_proj.shape[-1] if p.is_moe else p.ffn.down_proj.weight.shape[-1] for p in arch.layers(model))
    block = min(max(1, attribution.PROJECTION_BLOCK // vocab), widest)
    mm_rate = matmul_rate(device, proj_dtype, block, hidden, vocab)
    ex_rate = exp_rate(device)
    columns = projected_columns(model, tokenizer, prompts, batch_size)
    projection = 2 * columns * hidden * vocab / mm_rate / len(prompts)
    exps = n * vocab / ex_rate
    first = attr.neurons[attr.neurons.sample_id < batch_size]
    trace = attribution.on_device(realshape.trace_prompts(model, tokenizer, prompts[:batch_size]), torch.device("cpu"))
    rows = realshape.sample_neurons(first)
    ref = realshape.reference_neuron_scores(model, trace, torch.tensor(attr.samples.target_token_id.tolist()), rows)
    err = (torch.tensor(rows.score.tolist(), dtype=torch.float64) - ref).abs()
    return {
        "model": label, "layers": len(arch.layers(model)), "model_dtype": str(next(model.parameters()).dtype)[6:],
        "projection_dtype": str(proj_dtype)[6:], "device": _device_name(device), "threads": torch.get_num_threads(),
        "numerics": "pinned" if not numerics.problems() else "native", "prompts": len(prompts),
        "batch_size": batch_size, "neurons_per_prompt": n,
        "kit_ms_per_prompt": 1e3 * kit, "loop_ms_per_prompt": 1e3 * loop, "speedup_vs_loop": loop / kit,
        "floor_ms_per_prompt": 1e3 * (projection + exps), "floor_projection_ms": 1e3 * projection,
        "floor_exp_ms": 1e3 * exps, "ratio_to_floor": kit / (projection + exps),
        "single_prompt_floor_ms": 1e3 * (2 * n * hidden * vocab / mm_rate + exps),
        "matmul_tflops": mm_rate / 1e12, "exp_rate_g_per_s": ex_rate / 1e9,
        "max_abs_err": float(err.max()), "max_abs_score": float(ref.abs().max()), "neurons_checked": len(rows),
        "peak_memory_gib": _peak_memory_gib(device), "load_avg_1min": os.getloadavg()[0], "torch": torch.__version__,
    }


def _device_name(device: torch.device) -> str:
    from ..fingerprint import cpu_name

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def real_model(model_id: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, layers: int | None = None):
    """A random-weight model of a published configuration (cut to ``layers``), with a tokenizer of its vocabulary."""
    config = configs.real_config(model_id, layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = configs.build(config, dtype=dtype).eval()
    return model, realshape.synthetic_tokenizer(config.vocab_size)


def suite(device: str = "cpu", batch_size: int | None = None, models: list[str] | None = None,
          layers: int | None = None, dtype: str | None = None, n_prompts: int | None = None) -> pd.DataFrame:
    """Benchmark rows for ``models`` (organism names or REAL_CONFIGS ids).

    Defaults: CPU = the MoE organisms on every fact (template 0, batches of 128) and OLMoE-1B-7B at real width,
    1 layer, fp32, 8 prompts of 16 random tokens in one batch; GPU = OLMoE-1B-7B and Qwen1.5-MoE-A2.7B, full
    depth, bf16 weights and projection, 128 prompts of 16 tokens in one batch.
    """
    from .. import data, models as models_
    from ..organisms import zoo

    gpu = device != "cpu"
    names = models or (list(GPU_REAL) if gpu else [*zoo.MOE_ORGANISMS, *CPU_REAL])
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if gpu else torch.float32)
    rows = []
    for name in names:
        if name in configs.REAL_CONFIGS:
            n = n_prompts or (128 if gpu else 8)
            model, tok = real_model(name, device, torch_dtype, layers or (None if gpu else 1))
            prompts = realshape.random_prompts(n, 16, model.config.vocab_size)
            rows.append(run(model, tok, prompts, batch_size or n, name, torch_dtype if gpu else None))
        else:
            lm = models_.load_model(name, device, torch_dtype)
            model, prompts = lm.model, list(data.facts_frame(data.load_relations()).prompt)[:n_prompts]
            rows.append(run(model, lm.tokenizer, prompts, batch_size or 128, name))
        del model
        if gpu:
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame):
    """ms per prompt (log scale) per model: the per-neuron loop, the kit, and the floor; where the table has both
    numerics (:func:`both_numerics`), the kit pinned and native beside the floor at native rates."""
    import matplotlib.pyplot as plt

    from ..plots import PALETTE

    both = "native_floor_ms_per_prompt" in table
    models = list(dict.fromkeys(table.model))
    by = {(r.model, r.numerics): r for r in table.itertuples()}
    first = {m: by.get((m, "native")) or next(r for r in table.itertuples() if r.model == m) for m in models}
    bars = [("per-neuron loop", PALETTE["routed"], lambda m: first[m].loop_ms_per_prompt)]
    if both:
        bars += [("moescope, pinned numerics", PALETTE["moe"], lambda m: by[(m, "pinned")].kit_ms_per_prompt),
                 ("moescope, native numerics", PALETTE["dense"], lambda m: by[(m, "native")].kit_ms_per_prompt),
                 ("floor at native rates (matmul + exp)", "0.6", lambda m: first[m].native_floor_ms_per_prompt)]
    else:
        bars += [("moescope", PALETTE["moe"], lambda m: first[m].kit_ms_per_prompt),
                 ("floor (matmul + exp)", "0.6", lambda m: first[m].floor_ms_per_prompt)]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for j, (label, color, value) in enumerate(bars):
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(models))]
        ax.bar(xs, [value(m) for m in models], width, label=label, color=color)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)  # room above the bars for the notes
    for i, m in enumerate(models):
        note = (f"pinned {by[(m, 'pinned')].pinned_over_native:.1f}x native" if both
                else f"{first[m].ratio_to_floor:.2f}x floor")
        ax.annotate(note, (i, high * 25), ha="center", va="top", fontsize=8)
    ax.set_xticks(range(len(models)), [f"{m} ({first[m].layers}L)" for m in models], rotation=15, fontsize=8)
    ax.set_ylabel("ms per prompt (all neurons)")
    ax.set_title(f"Neuron-level LPI attribution on {table.device.iloc[0]}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    return fig


def _suite_in(choice: str, **options) -> pd.DataFrame:
    """:func:`suite` in a new process started with ``choice``'s numerics (they must precede torch's first kernel)."""
    code = ("import json, sys; from moescope.attribution import benchmark; "
            "print(benchmark.suite(**json.loads(sys.argv[1])).to_json(orient='records'))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(options)], capture_output=True, text=True,
                         env=numerics.environment(choice, dict(os.environ)))
    if out.returncode != 0:
        raise RuntimeError(f"the {choice} benchmark process failed: {out.stderr.strip().splitlines()[-1:]}")
    return pd.DataFrame(json.loads(out.stdout.strip().splitlines()[-1]))


def both_numerics(**options) -> pd.DataFrame:
    """The CPU suite under pinned and under native numerics, one row per model and numerics, with
    ``native_floor_ms_per_prompt`` (the floor at the native matmul and exp rates), ``ratio_to_native_floor`` =
    kit / native floor, and ``pinned_over_native`` = kit pinned / kit native (on both rows of a model)."""
    sides = {choice: _suite_in(choice, **options) for choice in numerics.CHOICES}
    native = sides["native"].set_index("model")
    table = pd.concat(list(sides.values()), ignore_index=True)
    table["native_floor_ms_per_prompt"] = table.model.map(native.floor_ms_per_prompt)
    table["ratio_to_native_floor"] = table.kit_ms_per_prompt / table.native_floor_ms_per_prompt
    pinned = sides["pinned"].set_index("model").kit_ms_per_prompt
    table["pinned_over_native"] = table.model.map(pinned / native.kit_ms_per_prompt)
    return table
