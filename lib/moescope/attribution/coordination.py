"""Do attention heads guide expert selection? ("semantic-driven routing"; r = 0.68, inhibition, forcing, IG).

Steps, each its own function:

1. :func:`layer_pairs`: per (prompt, MoE layer) X = sum_h max(HeadGain_{l,h}, 0) and Y = sum_j ExpertGain_{l,j}
   over the routed experts (also the top head's gain and the top-1 gate). :func:`within_layer_r` correlates X
   and Y across prompts *within* each layer (never pooled across layers).
2. :func:`key_heads`: the ``n_heads`` (layer, head) pairs with the largest summed HeadGain.
3. :func:`conditions`: per prompt, the reciprocal rank and the clean top-k experts' summed router probability
   (the "top-k gate", averaged over the MoE layers at or after the first inhibited head) when the key heads are
   inhibited (o_proj input -> 0 at every token); with the clean routing restored while they are inhibited
   (mediation: what is left of the drop does not pass through routing); and, one prompt at a time, with the
   prompt's positively attributed clean experts forced back at its last token (forcing).
4. :func:`random_head_draws`: the same inhibition with random heads (the control).
5. :func:`router_ig` / :func:`ig_shares`: integrated gradients of the clean top-1 expert's centred router logit
   with respect to every head output; the key heads' and random heads' share of the attribution mass.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import arch, metrics, routing
from ..capture import Trace, capture, expert_coefficients, expert_outputs
from ..interventions import fixed_routing, force_experts, inhibit_heads, recorded_routing
from ..models import LoadedModel
from ..prompts import Encoded, context_length, encode
from . import tasks
from .lpi import Attribution

HeadSpec = dict[int, list[int]]


# ---------------------------------------------------------------------------------------------------- 1. correlation
def layer_pairs(attr: Attribution, moe_layers: Sequence[int]) -> pd.DataFrame:
    """Per (sample, MoE layer): x = sum of positive head gains, x_top = best head gain, y = summed routed
    expert gain, gate = top-1 router weight (with the next MoE layer's y as y_next, NaN at the last)."""
    heads, routed = attr.heads, attr.experts[attr.experts.expert >= 0]
    by = ["sample_id", "layer"]
    out = pd.concat([
        heads.assign(pos=heads.gain.clip(lower=0)).groupby(by).pos.sum().rename("x"),
        heads.groupby(by).gain.max().rename("x_top"),
        routed.groupby(by).gain.sum().rename("y"),
        routed.groupby(by).gate.max().rename("gate"),
    ], axis=1, join="inner").reset_index()
    out = out[out.layer.isin(moe_layers)].sort_values(by, ignore_index=True)
    nxt = out[["sample_id", "layer", "y"]].assign(layer=lambda d: d.layer.map(_previous(moe_layers)))
    return out.merge(nxt.rename(columns={"y": "y_next"}), on=by, how="left")


def _previous(layers: Sequence[int]) -> dict[int, int]:
    return {b: a for a, b in zip(layers[:-1], layers[1:])}


def matrices(pairs: pd.DataFrame, x: str = "x", y: str = "y") -> tuple[np.ndarray, np.ndarray, list[int]]:
    """X[i, l], Y[i, l] over prompts i and MoE layers l (columns where both are defined for every prompt)."""
    wide_x, wide_y = (pairs.pivot(index="sample_id", columns="layer", values=c) for c in (x, y))
    keep = [l for l in wide_x.columns if wide_x[l].notna().all() and wide_y[l].notna().all()]
    return wide_x[keep].to_numpy(float), wide_y[keep].to_numpy(float), keep


def within_layer_r(xm: np.ndarray, ym: np.ndarray) -> np.ndarray:
    """Pearson r of each column (layer) of X with the same column of Y across the rows (prompts): axis -2 of
    [..., prompts, layers] arrays; NaN where either is constant."""
    xc, yc = xm - xm.mean(-2, keepdims=True), ym - ym.mean(-2, keepdims=True)
    denom = np.sqrt((xc**2).sum(-2) * (yc**2).sum(-2))
    return np.where(denom > 1e-12, (xc * yc).sum(-2) / np.where(denom > 1e-12, denom, 1.0), np.nan)


def mean_r(xm: np.ndarray, ym: np.ndarray) -> np.ndarray | float:
    """The summary: mean over layers of the within-layer r (NaN when no layer has one); one per leading index."""
    r = within_layer_r(xm, ym)
    finite = np.isfinite(r)
    total, count = np.where(finite, r, 0.0).sum(-1), finite.sum(-1)
    out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def shuffled(ym: np.ndarray, rng: np.random.Generator, times: int | None = None) -> np.ndarray:
    """Y with its prompts permuted independently in each layer (the null of no head-expert link); ``times``
    permutations stacked on a leading axis."""
    shape = (times or 1, *ym.shape)
    order = rng.random(shape).argsort(axis=1)
    out = np.take_along_axis(np.broadcast_to(ym, shape), order, axis=1)
    return out if times else out[0]


# ---------------------------------------------------------------------------------------------------- 2. key heads
def key_heads(heads: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` (layer, head) pairs with the largest HeadGain summed over all prompts."""
    return (heads.groupby(["layer", "head"], as_index=False).gain.sum()
            .sort_values(["gain", "layer", "head"], ascending=[False, True, True]).head(n).reset_index(drop=True))


def head_spec(table: pd.DataFrame) -> HeadSpec:
    """{layer: [head, ...]} of a (layer, head) table."""
    spec: HeadSpec = {}
    for row in table.itertuples():
        spec.setdefault(int(row.layer), []).append(int(row.head))
    return spec


def random_head_specs(n_layers: int, n_heads: int, n: int, draws: int, exclude: HeadSpec, seed: int = 0) -> list[HeadSpec]:
    """``draws`` sets of ``n`` distinct (layer, head) pairs drawn uniformly among those not in ``exclude``."""
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if h not in exclude.get(l, [])]
    rng = np.random.default_rng(seed)
    return [head_spec(pd.DataFrame([pool[i] for i in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))],
                                   columns=["layer", "head"])) for _ in range(draws)]


# ---------------------------------------------------------------------------------------------------- 3. conditions
def _rr(logits: torch.Tensor, enc: Encoded) -> np.ndarray:
    return (1.0 / metrics.ranks(logits, enc.target_ids.to(logits.device)).float()).cpu().numpy()


def topk_gate(trace: Trace, clean: Trace, layers: Sequence[int]) -> np.ndarray:
    """Per prompt: mean over ``layers`` of the summed router probability of the clean run's top-k experts."""
    return torch.stack([trace.layers[l].router_probs.gather(1, clean.layers[l].topk_index).sum(1)
                        for l in layers]).mean(0).cpu().numpy()


def gate_layers(moe_layers: Sequence[int], spec: HeadSpec) -> list[int]:
    """The MoE layers at or after the first inhibited head."""
    return [l for l in moe_layers if l >= min(spec)]


def inhibited(lm: LoadedModel, enc: Encoded, clean: Trace, spec: HeadSpec, moe_layers: Sequence[int]) -> dict:
    """rr and top-k gate (clean and inhibited, over the same layers) with the heads of ``spec`` inhibited."""
    dev = lm.device
    with inhibit_heads(lm.model, spec):
        tr = capture(lm.model, enc.input_ids.to(dev), enc.attention_mask.to(dev))
    layers = gate_layers(moe_layers, spec)
    return {"rr": _rr(tr.logits, enc), "gate_clean": topk_gate(clean, clean, layers), "gate": topk_gate(tr, clean, layers)}


def mediated(lm: LoadedModel, enc: Encoded, spec: HeadSpec) -> np.ndarray:
    """rr with the heads inhibited but every MoE layer routing every token as in the clean run (same batch)."""
    ids, mask = enc.input_ids.to(lm.device), enc.attention_mask.to(lm.device)
    with torch.no_grad():
        with recorded_routing(lm.model) as clean_routing:
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        with inhibit_heads(lm.model, spec), fixed_routing(lm.model, dict(clean_routing)):
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return _rr(logits[torch.arange(len(ids)), mask.sum(1) - 1].float(), enc)


def forced_experts(experts: pd.DataFrame, sample_id: int) -> dict[int, list[int]]:
    """A prompt's clean routed experts with a positive ExpertGain (at least its best one), as {layer: [expert]}."""
    sel = experts[(experts.sample_id == sample_id) & (experts.expert >= 0)].sort_values("gain", ascending=False)
    chosen = sel[sel.gain > 0] if (sel.gain > 0).any() else sel.head(1)
    spec: dict[int, list[int]] = {}
    for row in chosen.itertuples():
        spec.setdefault(int(row.layer), []).append(int(row.expert))
    return spec


@torch.no_grad()
def forced(lm: LoadedModel, enc: Encoded, spec: HeadSpec, experts: pd.DataFrame) -> np.ndarray:
    """rr with the heads inhibited and each prompt's attributed experts forced at its last token."""
    logits = []
    for b in range(len(enc.input_ids)):
        n = int(enc.attention_mask[b].sum())
        last = torch.zeros(n, dtype=torch.bool, device=lm.device)
        last[-1] = True
        with inhibit_heads(lm.model, spec), force_experts(lm.model, forced_experts(experts, b), tokens=last):
            out = lm.model(input_ids=enc.input_ids[b : b + 1, :n].to(lm.device), use_cache=False)
        logits.append(out.logits[0, -1].float())
    return _rr(torch.stack(logits), enc)


def conditions(lm: LoadedModel, enc: Encoded, clean: Trace, spec: HeadSpec, experts: pd.DataFrame,
               moe_layers: Sequence[int]) -> pd.DataFrame:
    """Per prompt: rr clean / inhibited / mediated / forced and the top-k gate clean / inhibited."""
    inh = inhibited(lm, enc, clean, spec, moe_layers)
    return pd.DataFrame({"sample_id": range(len(enc.input_ids)), "rr_clean": _rr(clean.logits, enc),
                         "rr_inhibited": inh["rr"], "rr_mediated": mediated(lm, enc, spec),
                         "rr_forced": forced(lm, enc, spec, experts), "gate_clean": inh["gate_clean"],
                         "gate_inhibited": inh["gate"]})


def random_head_draws(lm: LoadedModel, enc: Encoded, clean: Trace, specs: Sequence[HeadSpec],
                      moe_layers: Sequence[int]) -> pd.DataFrame:
    """Per draw and prompt: rr and top-k gate with random heads inhibited (the control of :func:`inhibited`)."""
    frames = []
    for d, spec in enumerate(specs):
        inh = inhibited(lm, enc, clean, spec, moe_layers)
        frames.append(pd.DataFrame({"draw": d, "sample_id": range(len(inh["rr"])), "rr": inh["rr"],
                                    "gate_clean": inh["gate_clean"], "gate_inhibited": inh["gate"]}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------- 5. integrated gradients
def _centered_router_logit(router, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """z_j - mean_e z_e (softmax-invariant) of expert ``expert[b]`` for x [..., B, H]."""
    z = routing.logits(router, x)
    idx = expert.view(*[1] * (z.dim() - 2), -1, 1).expand(*z.shape[:-1], 1)
    return z.gather(-1, idx).squeeze(-1) - z.mean(-1)


def _frozen_moe(p: arch.LayerParts, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """MoE block output for x [m, B, H] routed to the experts ``index`` [B, k] of the clean run, with the weights
    the router gives them at x (:func:`moescope.routing.weights_at`)."""
    m, b, h = x.shape
    flat, idx = x.reshape(m * b, h), index.repeat(m, 1)
    w = routing.weights_at(p.router, routing.logits(p.router, flat), idx)
    out = (w.unsqueeze(-1).to(x.dtype) * expert_outputs(p.experts, expert_coefficients(p.experts, flat, idx), idx)).sum(1)
    if p.ffn is not None:
        shared = p.ffn(flat)
        out = out + (torch.sigmoid(p.ffn_gate(flat)) * shared if p.ffn_gate is not None else shared)
    return out.view(m, b, h)


def router_ig(model, trace: Trace, layer: int, expert: torch.Tensor, steps: int = 16) -> dict[str, torch.Tensor]:
    """Integrated gradients of the centred router logit f = z_j - mean_e z_e of expert ``expert[b]`` at MoE layer
    ``layer`` (last position) with respect to every head output of layers 0..layer.

    Path: head outputs H -> alpha * H, alpha in (0, 1] (midpoint rule, ``steps`` points, all in one batch);
    baseline = zero head outputs. Along the path the last-position residual is recomputed:
    r = embed + sum_{l<=layer} (alpha * sum_h H_{l,h} + o_proj bias) + sum_{l<layer} MLP_l(norm(r_mid_l)), with
    each earlier MoE layer's expert *selection* frozen at the clean run (its weights recomputed), so f is smooth.
    IG_{l,h} = H_{l,h} . mean_alpha grad_{H_{l,h}} f; completeness: sum IG ~= f(H) - f(0).

    Returns ig [B, layer+1, n_heads], f_x [B], f_0 [B].
    """
    parts = arch.layers(model)
    if routing.family(parts[layer].router) != "softmax":
        raise NotImplementedError("router_ig supports softmax routers (OLMoE, Qwen-MoE, Mixtral)")

    def f(alpha: torch.Tensor, variables: list[torch.Tensor] | None = None):
        r = trace.embed.unsqueeze(0).expand(len(alpha), -1, -1)
        for l in range(layer + 1):
            c, p = trace.layers[l], parts[l]
            heads = variables[l] if variables is not None else alpha.view(-1, 1, 1, 1) * c.head_out
            r = r + heads.sum(2) + (c.attn_out - c.head_out.sum(1))
            x = p.post_attention_norm(r)
            if l < layer:
                r = r + (_frozen_moe(p, x, c.topk_index) if p.is_moe else p.mlp(x))
        return _centered_router_logit(parts[layer].router, x, expert.to(x.device))

    alphas = (torch.arange(steps, dtype=trace.embed.dtype) + 0.5) / steps
    with torch.enable_grad():
        variables = [(alphas.view(-1, 1, 1, 1) * trace.layers[l].head_out).detach().requires_grad_()
                     for l in range(layer + 1)]
        f(alphas, variables).sum().backward()
    ig = torch.stack([(trace.layers[l].head_out * v.grad.mean(0)).sum(-1) for l, v in enumerate(variables)], 1)
    with torch.no_grad():
        ends = f(torch.tensor([0.0, 1.0], dtype=trace.embed.dtype))
    return {"ig": ig.detach(), "f_x": ends[1], "f_0": ends[0]}


def ig_key_heads(model, trace: Trace, moe_layers: Sequence[int], n: int, steps: int = 16) -> pd.DataFrame:
    """The ``n`` (layer, head) pairs with the largest router IG mass: sum over prompts and MoE layers l of
    |IG_{l',h}| of the clean top-1 expert's centred router logit at l (:func:`router_ig`), heads of l' <= l."""
    n_layers, n_heads = len(arch.layers(model)), arch.num_heads(model)
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for l in moe_layers:
        out = router_ig(model, trace, l, trace.layers[l].topk_index[:, 0], steps=steps)
        total[: l + 1] += out["ig"].abs().sum(0).double().cpu()
    table = pd.DataFrame([(l, h, float(total[l, h])) for l in range(n_layers) for h in range(n_heads)],
                         columns=["layer", "head", "ig"])
    return (table.sort_values(["ig", "layer", "head"], ascending=[False, True, True]).head(n)
            .reset_index(drop=True))


def head_mask(n_layers: int, n_heads: int, spec: HeadSpec) -> torch.Tensor:
    """Boolean [layers, heads] mask of the heads in ``spec``."""
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for l, hs in spec.items():
        mask[l, hs] = True
    return mask


def ig_shares(model, clean: Trace, moe_layers: Sequence[int], key: HeadSpec, controls: Sequence[HeadSpec],
              steps: int = 16) -> pd.DataFrame:
    """Per (prompt, MoE layer): IG of the clean top-1 expert's centred logit; share_all = sum|IG| /
    (sum|IG| + |f(0)|), share_key = the key heads' part of that mass, share_random = the mean part of the
    random head sets ``controls``; completeness = |sum IG - (f(x) - f(0))|."""
    n_layers, n_heads = len(arch.layers(model)), arch.num_heads(model)
    masks = [head_mask(n_layers, n_heads, s) for s in (key, *controls)]
    rows = []
    for l in moe_layers:
        target = clean.layers[l].topk_index[:, 0]
        out = router_ig(model, clean, l, target, steps=steps)
        ig = out["ig"].abs().cpu()
        mass = ig.sum((1, 2))
        denom = mass + out["f_0"].abs().cpu()
        parts = [(ig * m[: l + 1]).sum((1, 2)) / denom for m in masks]
        completeness = (out["ig"].sum((1, 2)) - (out["f_x"] - out["f_0"])).abs().cpu()
        for b in range(len(target)):
            rows.append({"sample_id": b, "layer": l, "expert": int(target[b]), "f_x": float(out["f_x"][b]),
                         "f_0": float(out["f_0"][b]), "share_all": float(mass[b] / denom[b]),
                         "share_key": float(parts[0][b]),
                         "share_random": float(np.mean([p[b] for p in parts[1:]])) if controls else np.nan,
                         "completeness": float(completeness[b])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- the study
@dataclass
class Coordination:
    """``pairs``: per (prompt, MoE layer) x, x_top, y, gate, y_next. ``key_heads``: layer, head, gain.
    ``ig_heads``: layer, head, ig (the key heads by router IG; empty for routers other than softmax).
    ``prompts``: per prompt rr_clean / rr_inhibited / rr_mediated / rr_forced, gate_clean / gate_inhibited, and
    with the IG-chosen heads inhibited rr_inhibited_ig / gate_clean_ig / gate_inhibited_ig.
    ``random_heads``: per draw and prompt rr, gate_clean, gate_inhibited. ``ig``: :func:`ig_shares` (empty for
    routers other than softmax). ``facts``: the model's and the prompts' facts (empty tables for a dense model)."""

    pairs: pd.DataFrame
    key_heads: pd.DataFrame
    ig_heads: pd.DataFrame
    prompts: pd.DataFrame
    random_heads: pd.DataFrame
    ig: pd.DataFrame
    facts: dict

    def interventions(self) -> pd.DataFrame:
        """MRR and mean top-k gate per condition (random heads averaged over draws)."""
        p, r = self.prompts, self.random_heads
        rows = [("clean", p.rr_clean, p.gate_clean), ("key heads inhibited", p.rr_inhibited, p.gate_inhibited),
                ("inhibited, clean routing restored", p.rr_mediated, None),
                ("inhibited, attributed experts forced", p.rr_forced, None),
                ("random heads inhibited", r.rr, r.gate_inhibited)]
        return pd.DataFrame([{"condition": c, "mrr": float(rr.mean()) if len(rr) else np.nan,
                              "topk_gate": float(g.mean()) if g is not None and len(g) else np.nan} for c, rr, g in rows])


def run(model: str | LoadedModel, relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
        n_heads: int = 2, n_random: int = 5, ig_steps: int = 16, seed: int = 0, device: str = "cpu",
        dtype: str | None = None) -> Coordination:
    """Every step of the head-expert study on one model (empty tables and its facts for a dense model). The key
    heads are chosen on the selection templates, by HeadGain and (softmax routers) by router IG; correlations,
    interventions and integrated gradients run on the test templates of the same facts
    (:data:`moescope.attribution.tasks.TEST`)."""
    lm = tasks.loaded(model, device, dtype)
    fr = tasks.facts(relations, n_samples, tasks.TEST, seed)
    attr = tasks.attribution(lm, fr, neurons=False)
    facts = tasks.model_facts(lm) | tasks.data_facts(attr.samples.assign(rr=1 / attr.samples["rank"]), fr)
    empty = pd.DataFrame()
    if not facts["moe"]:
        return Coordination(empty, empty, empty, empty, empty, empty, facts)
    moe_layers = [p.index for p in arch.layers(lm.model) if p.is_moe]
    selection = tasks.facts(relations, n_samples, tasks.SELECTION, seed)
    keys = key_heads(tasks.attribution(lm, selection, neurons=False).heads, n_heads)
    spec = head_spec(keys)
    controls = random_head_specs(facts["layers"], facts["heads"], n_heads, n_random, spec, seed)
    enc = encode(lm.tokenizer, list(fr.prompt), list(fr.object), context_length(lm.model))
    clean = capture(lm.model, enc.input_ids.to(lm.device), enc.attention_mask.to(lm.device))
    prompts = conditions(lm, enc, clean, spec, attr.experts, moe_layers).assign(task=fr.task.values)
    randoms = random_head_draws(lm, enc, clean, controls, moe_layers)
    ig = ig_heads = empty
    if facts["softmax_router"]:
        ig = ig_shares(lm.model, clean, moe_layers, spec, controls, ig_steps)
        sel_enc = encode(lm.tokenizer, list(selection.prompt), list(selection.object), context_length(lm.model))
        sel_trace = capture(lm.model, sel_enc.input_ids.to(lm.device), sel_enc.attention_mask.to(lm.device))
        ig_heads = ig_key_heads(lm.model, sel_trace, moe_layers, n_heads, ig_steps)
        by_ig = inhibited(lm, enc, clean, head_spec(ig_heads), moe_layers)
        prompts = prompts.assign(rr_inhibited_ig=by_ig["rr"], gate_clean_ig=by_ig["gate_clean"],
                                 gate_inhibited_ig=by_ig["gate"])
    return Coordination(layer_pairs(attr, moe_layers), keys, ig_heads, prompts, randoms, ig, facts)
