"""Real shapes: every attribution code path on a random-weight model of a published configuration, cut to its
first layers, checked against float64, timed, with the peak memory of the process.

    python -m moescope.attribution.realshape MODEL_ID [--dtype bfloat16] [--layers N] [--prompts N] [--out F.json]

builds one model of :data:`moescope.configs.REAL_CONFIGS` (one per process, so the peak is that model's) and
runs :func:`check` on it:

1. ``attribute``: every level, every neuron (all experts the prompts selected, shared expert or dense FFN);
2. float64 reference of sampled neuron scores (the largest and random ones), computed directly:
   Imp = log_softmax(W_U (gamma s (u + g m v)))[w] - log_softmax(W_U (gamma s u))[w], vocabulary in chunks;
3. blocking (MoE): the top attributed experts blocked with re-routing (never selected again) and zeroed
   (the MoE output then equals the other experts' terms plus the shared expert's);
4. heads: the top head of each layer inhibited (its output is 0; the other heads still sum to the attention output).

The tests run :func:`check` on every family at reduced width (fast) and at full width one process per model
(``pytest -m realshape``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import pandas as pd
import torch
from torch import nn

from .. import arch, configs, numerics
from ..capture import Trace, capture
from ..interventions import block_experts, inhibit_heads, zero_experts
from ..offload import input_device, materialized
from ..prompts import context_length, encode
from ..vocab import word_tokenizer
from . import summaries
from .lpi import Attribution, attribute

#: Largest |score - float64 reference| accepted, by the precision of the vocabulary projection.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-4}


def synthetic_tokenizer(vocab: int):
    """A word-level tokenizer with exactly ``vocab`` tokens (w0, w1, ...) for random-weight models."""
    return word_tokenizer([" ".join(f"w{i}" for i in range(vocab - 4))])


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[str]:
    """``n`` prompts of ``length`` random words of :func:`synthetic_tokenizer`."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{i}" for i in torch.randint(0, vocab - 4, (length,), generator=g).tolist()) for _ in range(n)]


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def trace_prompts(model: nn.Module, tokenizer, prompts: list[str]) -> Trace:
    """The captured forward pass of ``prompts`` (right-padded, at each prompt's last token)."""
    enc = encode(tokenizer, prompts, None, context_length(model))
    device = input_device(model)
    return capture(model, enc.input_ids.to(device), enc.attention_mask.to(device))


def sample_neurons(neurons: pd.DataFrame, n_top: int = 16, n_random: int = 32, seed: int = 0) -> pd.DataFrame:
    """The ``n_top`` neurons of largest |score| and ``n_random`` others drawn at random."""
    top = neurons.reindex(neurons.score.abs().sort_values(ascending=False).index).head(n_top)
    rest = neurons.drop(top.index)
    return pd.concat([top, rest.sample(min(n_random, len(rest)), random_state=seed)])


@torch.no_grad()
def reference_gains(model: nn.Module, trace: Trace, targets: torch.Tensor, samples: torch.Tensor,
                    base: torch.Tensor, delta: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """log p(w | base + delta) - log p(w | base) per row, in float64, straight from the model's final norm and
    unembedding (scale frozen to the final residual of the row's sample; vocabulary in chunks)."""
    norm, head = arch.final_norm(model), model.get_output_embeddings()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    h = trace.resid_final.double().cpu()[samples]
    s = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps).repeat(2, 1)
    with materialized(norm, head):
        x = torch.cat([base, base + delta]).double() * norm.weight.double().cpu() * s
        w_u = arch.unembedding(model)
        logits = torch.cat([x @ w_u[i : i + chunk].double().cpu().T for i in range(0, w_u.shape[0], chunk)], dim=1)
    logp = torch.log_softmax(logits, -1).gather(1, targets.cpu()[samples].repeat(2)[:, None]).squeeze(1)
    return logp[len(samples):] - logp[: len(samples)]


def reference_neuron_scores(model: nn.Module, trace: Trace, targets: torch.Tensor, rows: pd.DataFrame) -> torch.Tensor:
    """Imp of each (sample_id, layer, expert, neuron) row in float64: u, g, m as captured, v from the weights."""
    parts, base, delta = arch.layers(model), [], []
    for r in rows.itertuples():
        b, c, p, k = int(r.sample_id), trace.layers[int(r.layer)], parts[int(r.layer)], int(r.neuron)
        with materialized(p.experts, p.ffn):
            if r.expert >= 0:
                slot = int((c.topk_index[b] == r.expert).nonzero()[0, 0])
                g, m, v = c.topk_weight[b, slot], c.expert_coef[b, slot, k], p.experts.down_proj[int(r.expert)][:, k]
            else:
                g, m, v = c.ffn_gate[b], c.ffn_coef[b, k], p.ffn.down_proj.weight[:, k]
            base.append(c.resid_mid[b].double().cpu())
            delta.append(g.double().cpu() * m.double().cpu() * v.double().cpu())
    samples = torch.tensor(rows.sample_id.tolist())
    return reference_gains(model, trace, targets, samples, torch.stack(base), torch.stack(delta))


def reference_layer_gains(model: nn.Module, trace: Trace, targets: torch.Tensor) -> pd.DataFrame:
    """AttnGain and FFNGain of every (sample, layer) in float64 from the captured residual stream."""
    n = len(trace.resid_final)
    samples = torch.arange(n).repeat(len(trace.layers))
    pick = lambda name: torch.cat([getattr(c, name).double().cpu() for c in trace.layers])  # noqa: E731
    attn = reference_gains(model, trace, targets, samples, pick("resid_pre"), pick("attn_out"))
    ffn = reference_gains(model, trace, targets, samples, pick("resid_mid"), pick("mlp_out"))
    return pd.DataFrame({"sample_id": samples.numpy(), "layer": torch.arange(len(trace.layers)).repeat_interleave(n).numpy(),
                         "attn_gain": attn.numpy(), "ffn_gain": ffn.numpy()})


def _blocking(model: nn.Module, tokenizer, prompts: list[str], attr: Attribution, k: int = 2) -> dict:
    """Block / zero the top-k attributed experts; check the routing and MoE-output identities under each."""
    spec = summaries.top_experts(attr.experts, k)
    with block_experts(model, spec):
        tr = trace_prompts(model, tokenizer, prompts)
    reselected = sum(int(torch.isin(tr.layers[l].topk_index, torch.tensor(e, device=tr.layers[l].topk_index.device)).sum())
                     for l, e in spec.items())
    with zero_experts(model, spec):
        tz = trace_prompts(model, tokenizer, prompts)
    err = 0.0
    for l, blocked in spec.items():
        c = tz.layers[l]
        keep = ~torch.isin(c.topk_index, torch.tensor(blocked, device=c.topk_index.device))
        recon = (keep.unsqueeze(-1) * c.topk_weight.unsqueeze(-1) * c.expert_out).sum(1).float()
        if c.ffn_out is not None:
            recon += (c.ffn_gate.unsqueeze(-1) * c.ffn_out).float()
        err = max(err, float((recon - c.mlp_out.float()).norm() / c.mlp_out.float().norm()))
    return {"blocked": sum(map(len, spec.values())), "blocked_reselected": reselected, "zeroed_output_rel_err": err}


def _heads(model: nn.Module, tokenizer, prompts: list[str], attr: Attribution) -> dict:
    """Inhibit each layer's top head; its output must vanish and the others still sum to the attention output."""
    top = attr.heads.groupby(["layer", "head"], as_index=False).gain.sum().sort_values("gain").groupby("layer").tail(1)
    spec = {int(r.layer): [int(r.head)] for r in top.itertuples()}
    with inhibit_heads(model, spec):
        tr = trace_prompts(model, tokenizer, prompts)
    max_inhibited = max(float(tr.layers[l].head_out[:, h].abs().max()) for l, (h,) in spec.items())
    parts = arch.layers(model)
    err = 0.0
    for l, c in enumerate(tr.layers):
        with materialized(parts[l].o_proj):
            bias = parts[l].o_proj.bias
            total = c.head_out.float().sum(1) + (0 if bias is None else bias.float().to(c.head_out.device))
        err = max(err, float((total - c.attn_out.float()).norm() / c.attn_out.float().norm()))
    return {"inhibited_heads": len(spec), "inhibited_max_abs_output": max_inhibited, "heads_sum_rel_err": err}


def check(model: nn.Module, tokenizer, prompts: list[str], projection_dtype: torch.dtype | None = None,
          **attribute_kwargs) -> dict:
    """Run every attribution path on ``model`` and check it (see the module docstring); one dict of results."""
    start = time.perf_counter()
    attr = attribute(model, tokenizer, prompts, target="top1", batch_size=len(prompts), progress=False,
                     projection_dtype=projection_dtype, **attribute_kwargs)
    seconds = time.perf_counter() - start
    trace = trace_prompts(model, tokenizer, prompts)
    targets = torch.tensor(attr.samples.target_token_id.tolist())
    rows = sample_neurons(attr.neurons)
    ref = reference_neuron_scores(model, trace, targets, rows)
    err = (torch.tensor(rows.score.tolist(), dtype=torch.float64) - ref).abs()
    layers = attr.layers.merge(reference_layer_gains(model, trace, targets), on=["sample_id", "layer"], suffixes=("", "_ref"))
    layer_err = max((layers[c] - layers[f"{c}_ref"]).abs().max() for c in ("attn_gain", "ffn_gain"))
    out = {
        "attribute_s_per_prompt": seconds / len(prompts), "neurons_scored": len(attr.neurons),
        "neurons_checked": len(rows), "max_abs_err": float(err.max()),
        "tolerance": TOLERANCE[projection_dtype or torch.float32], "max_abs_score": float(ref.abs().max()),
        "layer_gain_max_abs_err": float(layer_err), "heads_rows": len(attr.heads), "experts_rows": len(attr.experts),
    }
    if arch.is_moe(model):
        out |= _blocking(model, tokenizer, prompts, attr)
    out |= _heads(model, tokenizer, prompts, attr)
    return out


def build_real(model_id: str, dtype: torch.dtype, layers: int | None = None, seed: int = 0) -> nn.Module:
    """Random-weight ``model_id`` at real width, cut to ``layers`` (default: up to its first MoE layer)."""
    torch.manual_seed(seed)
    config = configs.real_config(model_id, layers or configs.first_moe_layer(model_id) + 1)
    return configs.build(config, dtype=dtype).eval()


def run(model_id: str, dtype: torch.dtype, layers: int | None = None, n_prompts: int = 2, length: int = 8) -> dict:
    """Build ``model_id`` at real width and :func:`check` it; the row records sizes, times and peak memory."""
    start = time.perf_counter()
    model = build_real(model_id, dtype, layers)
    built = time.perf_counter() - start
    vocab = int(model.config.vocab_size)
    tok = synthetic_tokenizer(vocab)
    row = {"model": model_id, "dtype": str(dtype).removeprefix("torch."), "layers": len(arch.layers(model)),
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "prompts": n_prompts, "build_s": built}
    row |= check(model, tok, random_prompts(n_prompts, length, vocab))
    row |= {"peak_rss_gib": peak_rss_gib(), "load_avg_1min": os.getloadavg()[0], "threads": torch.get_num_threads(),
            "numerics": "pinned" if not numerics.problems() else "native"}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(configs.REAL_CONFIGS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", help="JSON file for the result row (default: print it)")
    args = parser.parse_args(argv)
    row = run(args.model, getattr(torch, args.dtype), args.layers, args.prompts)
    text = json.dumps(row, indent=1)
    if args.out:
        from ..results import write_json_atomic

        write_json_atomic(args.out, row)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
