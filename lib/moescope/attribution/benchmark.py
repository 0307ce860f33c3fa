"""Speed of neuron-level attribution: the kit's batched scorer against the per-neuron loop, on the organisms
(CPU) or on random-weight models of the real configurations (GPU), with exactness checked against float64.

    per-neuron loop : one unembedding product and log-softmax per neuron (the reference approach)
    batched         : moescope.attribution.attribute over a relation-sized batch (each expert's vocabulary
                      projection computed once per batch, online log-sum-exp)
    roofline        : 2 * N_neurons * H * V flops at the matmul rate measured in the same process
"""
from __future__ import annotations

import platform
import time

import pandas as pd
import torch
from torch import nn

from .. import arch, configs
from ..prompts import context_length, encode
from ..capture import capture
from ..vocab import word_tokenizer
from . import lpi as attribution


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured dense matmul throughput (FLOP/s) of an n x n x n product."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def synthetic_tokenizer(vocab: int):
    """A word-level tokenizer with exactly ``vocab`` tokens (w0, w1, ...) for random-weight models."""
    return word_tokenizer([" ".join(f"w{i}" for i in range(vocab - 4))])


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{i}" for i in torch.randint(0, vocab - 4, (length,), generator=g).tolist()) for _ in range(n)]


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
def loop_seconds_per_neuron(model: nn.Module, tokenizer, prompt: str, n_neurons: int = 200) -> float:
    """Time of the reference per-neuron loop (one unembedding + log-softmax per neuron), per neuron."""
    enc = encode(tokenizer, [prompt], None, context_length(model))
    device = next(model.parameters()).device
    tr = capture(model, enc.input_ids.to(device), enc.attention_mask.to(device))
    readout = attribution.Readout(model)
    s, w = readout.scale(tr.resid_final), tr.logits.argmax(-1)
    layer = next(c for c in tr.layers if c.topk_index is not None or c.ffn_out is not None)
    part = arch.layers(model)[tr.layers.index(layer)]
    if layer.topk_index is not None:
        coef, gate = layer.expert_coef[0, 0], layer.topk_weight[0, 0]
        down = part.experts.down_proj[int(layer.topk_index[0, 0])]
    else:
        coef, gate, down = layer.ffn_coef[0], layer.ffn_gate[0], part.ffn.down_proj.weight
    n = min(n_neurons, coef.shape[0])
    _sync(device)
    start = time.perf_counter()
    for k in range(n):
        x = layer.resid_mid + gate * coef[k] * down[:, k]
        float(readout.logprob(x, s, w) - readout.logprob(layer.resid_mid, s, w))
    _sync(device)
    return (time.perf_counter() - start) / n


def batched_seconds_per_prompt(model: nn.Module, tokenizer, prompts: list[str], batch_size: int) -> float:
    """Time of the kit's batched attribution (all levels, all neurons), per prompt."""
    device = next(model.parameters()).device
    attribution.attribute(model, tokenizer, prompts[:2], target="top1", batch_size=2, progress=False)
    _sync(device)
    start = time.perf_counter()
    attribution.attribute(model, tokenizer, prompts, target="top1", batch_size=batch_size, progress=False)
    _sync(device)
    return (time.perf_counter() - start) / len(prompts)


def run(model: nn.Module, tokenizer, prompts: list[str], batch_size: int, label: str) -> dict:
    """One benchmark row: loop vs batched timings, their ratio, and the roofline at the measured matmul rate."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n = neurons_per_prompt(model)
    hidden, vocab = int(model.config.hidden_size), int(model.config.vocab_size)
    loop = loop_seconds_per_neuron(model, tokenizer, prompts[0]) * n
    batched = batched_seconds_per_prompt(model, tokenizer, prompts, batch_size)
    rate = matmul_rate(device, dtype if device.type == "cuda" else torch.float32)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "model": label, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "neurons_per_prompt": n, "prompts": len(prompts),
        "loop_ms_per_prompt": 1e3 * loop, "batched_ms_per_prompt": 1e3 * batched, "speedup": loop / batched,
        "roofline_ms_per_prompt": 1e3 * 2 * n * hidden * vocab / rate, "matmul_tflops": rate / 1e12,
        "peak_gpu_gib": peak_mem, "torch": torch.__version__,
    }


def real_model(model_id: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """A random-weight model of a published configuration, with a tokenizer of the same vocabulary size."""
    config = configs.real_config(model_id)
    with torch.device(device):
        model = configs.build(config).to(dtype).eval()
    return model, synthetic_tokenizer(config.vocab_size)


def suite(device: str = "cpu", batch_size: int = 128) -> pd.DataFrame:
    """CPU: the MoE organisms on every fact (template 0). GPU: OLMoE-1B-7B and Qwen1.5-MoE-A2.7B configurations
    with random bf16 weights on 128 random 16-token prompts."""
    from .. import data, models
    from ..organisms import zoo

    rows = []
    if device == "cpu":
        prompts = list(data.facts_frame(data.load_relations()).prompt)
        for name in zoo.MOE_ORGANISMS:
            lm = models.load_model(name)
            rows.append(run(lm.model, lm.tokenizer, prompts, batch_size, name))
    else:
        for model_id in ("allenai/OLMoE-1B-7B-0924", "Qwen/Qwen1.5-MoE-A2.7B"):
            model, tok = real_model(model_id, device)
            rows.append(run(model, tok, random_prompts(128, 16, model.config.vocab_size), batch_size, model_id))
            del model
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame):
    """Bar chart of ms per prompt: per-neuron loop vs batched (log scale)."""
    import matplotlib.pyplot as plt

    from ..plots import PALETTE

    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = range(len(table))
    ax.bar([i - 0.2 for i in x], table.loop_ms_per_prompt, 0.4, label="per-neuron loop", color=PALETTE["paper"])
    ax.bar([i + 0.2 for i in x], table.batched_ms_per_prompt, 0.4, label="moescope batched", color=PALETTE["moe"])
    for i, s in zip(x, table.speedup):
        ax.annotate(f"{s:.0f}x", (i + 0.2, table.batched_ms_per_prompt.iloc[i]), ha="center", va="bottom")
    ax.set_xticks(list(x), table.model)
    ax.set_yscale("log")
    ax.set_ylabel("ms per prompt (all neurons)")
    ax.set_title(f"Neuron-level LPI attribution on {table.device.iloc[0]}")
    ax.legend()
    return fig
