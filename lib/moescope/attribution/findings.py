"""The attribution paper's findings, one function each, returning tidy DataFrames (numbers, not plots).

Every function takes a model as a name (organism, local folder, hub id) or a :class:`~moescope.models.LoadedModel`,
and relations as paper task names, relation stems or :class:`~moescope.data.Relation` objects. Prompts use
template 0; the first ``n_samples`` facts of each relation are used (None: all). Metrics are on the gold
object's first token: HIT@10 = mean 1[rank <= 10], MRR = mean 1/rank.

- :func:`table1`                   Table 1: HIT@10, MRR, FFN/attention gain, peak position, per-layer efficiency
- :func:`depth_profile`            per-layer mean gains and stage shares (thirds, and the paper's 13/19/24 split)
- :func:`shared_routed_ablation`   Table 2: routed only / shared only / shared + top-k
- :func:`blocking`                 Table 5: block the top-k attributed (layer, expert) pairs, MRR and its drop
- :func:`head_expert_coordination` r(head, expert), head inhibition, forcing experts, integrated gradients
- :func:`neuron_roles`             top neurons per layer; shared vs routed contribution per task family
- :func:`prompt_views`             every level of attribution for one prompt (the explorer)
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from .. import arch, data, metrics
from ..capture import Trace, capture, expert_coefficients, expert_outputs
from ..interventions import block_experts, drop_routed_experts, drop_shared_expert, force_experts, inhibit_heads
from ..interventions import set_top_k, zero_experts
from ..models import LoadedModel, load_model
from ..routing import family
from . import paper, summaries
from .lpi import Attribution, attribute

PAPER_TASK_OF = {stem: task for task, stem in data.PAPER_TASKS.items()}
DEFAULT_RELATIONS = tuple(data.PAPER_TASKS)


# ---------------------------------------------------------------------------------------------------- helpers
def loaded(model: str | LoadedModel, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """A :class:`LoadedModel` from a name (loaded) or as given."""
    return model if isinstance(model, LoadedModel) else load_model(model, device, dtype)


def facts(relations: Iterable[str | data.Relation] = DEFAULT_RELATIONS, n_samples: int | None = None,
          template: int = 0) -> pd.DataFrame:
    """Prompts of the first ``n_samples`` facts per relation, with the paper's task name and task family."""
    rels = [r if isinstance(r, data.Relation) else data.load_relation(r) for r in relations]
    frame = data.facts_frame(rels, template)
    if n_samples is not None:
        frame = frame.groupby("relation", sort=False).head(n_samples).reset_index(drop=True)
    frame["task"] = frame["relation"].map(lambda s: PAPER_TASK_OF.get(s, s))
    frame["family"] = frame["task"].map(lambda t: data.TASK_FAMILY.get(t, "other"))
    return frame


def _attribute(lm: LoadedModel, fr: pd.DataFrame, **kwargs) -> Attribution:
    attr = attribute(lm.model, lm.tokenizer, list(fr.prompt), list(fr.object), progress=False, **kwargs)
    for col in ("relation", "task", "family"):
        attr.samples[col] = fr[col].values
    return attr


def _scores(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    return metrics.score_prompts(lm.model, lm.tokenizer, list(fr.prompt), list(fr.object))


def _with_relation(table: pd.DataFrame, samples: pd.DataFrame, cols=("relation", "task", "family")) -> pd.DataFrame:
    return table.merge(samples[["sample_id", *cols]], on="sample_id", how="left")


# ---------------------------------------------------------------------------------------------------- Table 1
def table1(models: Sequence[str | LoadedModel], relations=DEFAULT_RELATIONS, n_samples: int | None = None,
           device: str = "cpu", dtype: str = "float32") -> pd.DataFrame:
    """Table 1 per model, pooled over all samples of all relations.

    FFN gain = mean_i sum_l FFNGain_{i,l}; Attn gain likewise; per-layer efficiency = FFN gain / L; peak
    position = mean_i (argmax_l FFNGain_{i,l} + 1) / L (see :func:`moescope.summaries.efficiency`).
    """
    rows, fr = [], facts(relations, n_samples)
    for m in models:
        lm = loaded(m, device, dtype)
        attr = _attribute(lm, fr, neurons=False)
        eff = summaries.efficiency(attr.layers)
        rows.append({"model": lm.name, "paper_model": paper.paper_name(lm.name), "moe": arch.is_moe(lm.model),
                     "layers": eff["layers"], **metrics.hit_mrr(attr.samples["rank"]),
                     **{k: eff[k] for k in ("ffn_gain", "attn_gain", "peak_position", "per_layer_efficiency")},
                     "n": len(attr.samples)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- depth
@dataclass
class DepthProfile:
    """``profile``: model, layer, depth, attn_gain, ffn_gain (means over samples), stage (thirds), paper_stage.
    ``stages``: model, reading ('thirds' / 'paper 13-19-24'), early, middle, late shares of summed FFN gain."""

    profile: pd.DataFrame
    stages: pd.DataFrame


def depth_profile(models: Sequence[str | LoadedModel], relations=DEFAULT_RELATIONS, n_samples: int | None = None,
                  device: str = "cpu", dtype: str = "float32") -> DepthProfile:
    """Mean per-layer gains and the share of sum_l mean_i FFNGain_{i,l} in each depth stage.

    Two stage readings: equal thirds of the depth, and the paper's Qwen1.5-MoE boundaries carried over as
    relative depth ((l+1)/L <= 13/24 early, <= 19/24 middle, else late).
    """
    profiles, stages, fr = [], [], facts(relations, n_samples)
    for m in models:
        lm = loaded(m, device, dtype)
        prof = summaries.layer_profile(_attribute(lm, fr, neurons=False).layers)
        prof["paper_stage"] = [paper.stage_of(d) for d in prof["depth"]]
        prof.insert(0, "model", lm.name)
        profiles.append(prof)
        total = prof["ffn_gain"].sum()
        for reading, col in (("thirds", "stage"), ("paper 13-19-24", "paper_stage")):
            stages.append({"model": lm.name, "reading": reading,
                           **{s: float(prof.loc[prof[col] == s, "ffn_gain"].sum() / total) for s in summaries.STAGES}})
    return DepthProfile(pd.concat(profiles, ignore_index=True), pd.DataFrame(stages))


# ---------------------------------------------------------------------------------------------------- Table 2
def shared_routed_ablation(model: str | LoadedModel, relations=DEFAULT_RELATIONS, n_samples: int | None = None,
                           ks: Sequence[int] = (1, 2, 4), routed_only_ks: Sequence[int] = (1, 2),
                           device: str = "cpu", dtype: str = "float32") -> pd.DataFrame:
    """Table 2: HIT@10 and MRR with only the top-k routed experts (shared expert dropped), only the shared expert
    (routed experts' output -> 0), and the shared expert plus the top-k routed experts (``set_top_k``).

    Raises :class:`~moescope.arch.ArchitectureError` for a model without a shared expert.
    """
    lm = loaded(model, device, dtype)
    if not arch.has_shared_expert(lm.model):
        raise arch.ArchitectureError(
            f"shared_routed_ablation needs an MoE model with a shared expert (Qwen2-MoE, DeepSeek); "
            f"{lm.name} ({type(lm.model).__name__}) has none")
    fr, k_default, n_exp = facts(relations, n_samples), arch.top_k(lm.model), arch.num_experts(lm.model)
    configs = [(f"top-{k} routed only", False, k) for k in routed_only_ks] + [("shared only", True, 0)]
    configs += [(f"shared + top-{k}" + (" (default)" if k == k_default else ""), True, k)
                for k in sorted(set(ks) | {k_default})]
    rows = []
    for name, shared, k in configs:
        if k > n_exp:
            raise ValueError(f"top-{k} exceeds the {n_exp} routed experts of {lm.name}")
        with ExitStack() as stack:
            if not shared:
                stack.enter_context(drop_shared_expert(lm.model))
            stack.enter_context(drop_routed_experts(lm.model) if k == 0 else set_top_k(lm.model, k))
            ranks = _scores(lm, fr)["rank"]
        rows.append({"config": name, "shared": shared, "top_k": k, "default": shared and k == k_default,
                     **metrics.hit_mrr(ranks), "n": len(ranks)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- Table 5
def blocking(model: str | LoadedModel, relations=DEFAULT_RELATIONS, n_samples: int | None = None,
             ks: Sequence[int] = (1, 5, 10), methods: Sequence[str] = ("reroute", "zero"),
             device: str = "cpu", dtype: str = "float32") -> pd.DataFrame:
    """Table 5: per relation, rank (layer, routed expert) pairs by their ExpertGain summed over the relation's
    samples (:func:`moescope.summaries.top_experts`), block the top k, and re-score.

    ``reroute``: the blocked experts' router logits -> -inf, the next-best expert takes the slot
    (:func:`~moescope.interventions.block_experts`); ``zero``: keep routing, scale their output by 0
    (:func:`~moescope.interventions.zero_experts`). drop = 1 - MRR_k / MRR_orig. k = 0 blocks nothing through
    the same code path (equals the original).
    """
    lm = loaded(model, device, dtype)
    arch.require_moe(lm.model, "blocking")
    fr = facts(relations, n_samples)
    attr = _attribute(lm, fr, neurons=False)
    experts = _with_relation(attr.experts, attr.samples)
    rows = []
    for rel, sub in fr.groupby("relation", sort=False):
        orig = metrics.hit_mrr(_scores(lm, sub)["rank"])
        for method in methods:
            if method not in ("reroute", "zero"):
                raise ValueError(f"method must be 'reroute' or 'zero', not {method!r}")
            for k in ks:
                spec = summaries.top_experts(experts[experts.relation == rel], k)
                ctx = block_experts(lm.model, spec) if method == "reroute" else zero_experts(lm.model, spec)
                with ctx:
                    after = metrics.hit_mrr(_scores(lm, sub)["rank"])
                rows.append({"model": lm.name, "relation": rel, "task": PAPER_TASK_OF.get(rel, rel), "method": method,
                             "k": k, "n_blocked": sum(map(len, spec.values())), "orig_mrr": orig["mrr"],
                             "mrr": after["mrr"], "hit@10": after["hit@10"],
                             "drop": 1 - after["mrr"] / orig["mrr"] if orig["mrr"] else np.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- heads <-> experts
def _centered_router_logit(router, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """logit_j - mean_e logit_e (softmax-invariant) of expert ``expert[b]`` for x [..., B, H]."""
    logits = F.linear(x, router.weight, getattr(router, "bias", None))
    idx = expert.view(*[1] * (logits.dim() - 2), -1, 1).expand(*logits.shape[:-1], 1)
    return logits.gather(-1, idx).squeeze(-1) - logits.mean(-1)


def _frozen_moe(p: arch.LayerParts, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """MoE block output for x [m, B, H] with the experts ``index`` [B, k] of the clean run (weights recomputed)."""
    m, b, h = x.shape
    flat = x.reshape(m * b, h)
    idx = index.repeat(m, 1)
    probs = torch.softmax(F.linear(flat, p.router.weight).float(), -1)
    w = probs.gather(1, idx)
    if getattr(p.router, "norm_topk_prob", True):
        w = w / w.sum(-1, keepdim=True)
    out = (w.unsqueeze(-1).to(x.dtype) * expert_outputs(p.experts, expert_coefficients(p.experts, flat, idx), idx)).sum(1)
    if p.ffn is not None:
        shared = p.ffn(flat)
        out = out + (torch.sigmoid(p.ffn_gate(flat)) * shared if p.ffn_gate is not None else shared)
    return out.view(m, b, h)


def router_ig(model, trace: Trace, layer: int, expert: torch.Tensor, steps: int = 16) -> dict[str, torch.Tensor]:
    """Integrated gradients of the centered router logit f = logit_j - mean_e logit_e of expert ``expert[b]`` at
    MoE layer ``layer`` (last position) with respect to every head output of layers 0..layer.

    Path: head outputs H -> alpha * H, alpha in (0, 1] (midpoint rule, ``steps`` points, all in one batch);
    baseline = zero head outputs. Along the path the last-position residual is recomputed:
    r = embed + sum_{l<=layer} (alpha * sum_h H_{l,h} + o_proj bias) + sum_{l<layer} MLP_l(norm(r_mid_l)), with
    each earlier MoE layer's expert *selection* frozen at the clean run (its weights recomputed), so f is smooth.
    IG_{l,h} = H_{l,h} . mean_alpha grad_{H_{l,h}} f; completeness: sum IG ~= f(H) - f(0).

    Returns ig [B, layer+1, n_heads], f_x [B], f_0 [B].
    """
    parts = arch.layers(model)
    if family(parts[layer].router) != "softmax":
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


@dataclass
class Coordination:
    """Results of :func:`head_expert_coordination`.

    correlation: reading, r, p, n.  key_heads: layer, head, gain.  interventions: condition, mrr, hit@10,
    topk_gate (mean clean-top-k router probability).  ig: sample_id, layer, expert, f_x, f_0, ig_sum,
    share_all, share_key.  summary: one row of the scalar claims.
    """

    correlation: pd.DataFrame
    key_heads: pd.DataFrame
    interventions: pd.DataFrame
    ig: pd.DataFrame
    summary: pd.DataFrame


def head_expert_coordination(model: str | LoadedModel, relations=DEFAULT_RELATIONS, n_samples: int | None = None,
                             n_heads: int = 2, ig_steps: int = 16, device: str = "cpu",
                             dtype: str = "float32") -> Coordination:
    """Do attention heads guide expert selection?

    1. Correlation (Pearson, ``scipy.stats.pearsonr``), pooled over (sample, MoE layer):
       'same layer': X = sum_h max(HeadGain_{l,h}, 0), Y = sum_j ExpertGain_{l,j} (routed experts);
       'lagged': X at layer l, Y at layer l+1; 'top head vs top gate': X = max_h HeadGain_{l,h}, Y = top-1 gate.
    2. Key heads = the ``n_heads`` (layer, head) pairs with the largest summed HeadGain over all samples.
       Inhibiting them (their o_proj input -> 0, every token): change of the clean top-k experts' summed router
       probability at the last token (mean over samples and the MoE layers at or after the first key head's
       layer) and of the MRR.
    3. Forcing: while inhibited, force each sample's clean top-k experts that had a positive ExpertGain (at least
       its best one) back into the routing at its last token. recovery = (MRR_forced - MRR_inh) / (MRR - MRR_inh).
    4. Integrated gradients (:func:`router_ig`) of the clean top-1 expert's centered router logit at every MoE
       layer: f(x) = f(0) + sum_{l,h} IG_{l,h}; share_all = sum|IG| / (sum|IG| + |f(0)|) and share_key = the key
       heads' part of the same mass.
    """
    lm = loaded(model, device, dtype)
    mdl = lm.model
    arch.require_moe(mdl, "head_expert_coordination")
    fr = facts(relations, n_samples)
    attr = _attribute(lm, fr, neurons=False)
    moe_layers = [p.index for p in arch.layers(mdl) if p.is_moe]

    # 1. correlation
    heads, experts = attr.heads, attr.experts
    x_sum = heads.assign(pos=heads.gain.clip(lower=0)).groupby(["sample_id", "layer"]).pos.sum().rename("x")
    x_top = heads.groupby(["sample_id", "layer"]).gain.max().rename("x")
    routed = experts[experts.expert >= 0]
    y_gain = routed.groupby(["sample_id", "layer"]).gain.sum().rename("y")
    y_gate = routed.groupby(["sample_id", "layer"]).gate.max().rename("y")
    lagged = y_gain.reset_index().assign(layer=lambda d: d.layer - 1).set_index(["sample_id", "layer"]).y
    readings = {"same layer (sum+ head gain vs expert gain)": (x_sum, y_gain),
                "lagged (head gain l vs expert gain l+1)": (x_sum, lagged),
                "top head gain vs top-1 gate prob": (x_top, y_gate)}
    corr = []
    for name, (x, y) in readings.items():
        both = pd.concat([x, y], axis=1, join="inner").dropna()
        both = both[both.index.get_level_values("layer").isin(moe_layers)]
        ok = len(both) > 2 and both.x.std() > 0 and both.y.std() > 0
        r, p = stats.pearsonr(both.x, both.y) if ok else (np.nan, np.nan)
        corr.append({"reading": name, "r": float(r), "p": float(p), "n": len(both)})
    corr = pd.DataFrame(corr)

    # 2. inhibition
    key_heads = (heads.groupby(["layer", "head"], as_index=False).gain.sum()
                 .sort_values(["gain", "layer", "head"], ascending=[False, True, True]).head(n_heads)
                 .reset_index(drop=True))
    spec: dict[int, list[int]] = {}
    for row in key_heads.itertuples():
        spec.setdefault(int(row.layer), []).append(int(row.head))
    first = min(spec)
    gate_layers = [l for l in moe_layers if l >= first]
    enc = metrics.encode(lm.tokenizer, list(fr.prompt), list(fr.object), metrics.context_length(mdl))
    dev = lm.device
    ids, mask = enc.input_ids.to(dev), enc.attention_mask.to(dev)
    clean = capture(mdl, ids, mask)
    with inhibit_heads(mdl, spec):
        inh = capture(mdl, ids, mask)

    def topk_gate(tr: Trace) -> float:
        return float(torch.stack([tr.layers[l].router_probs.gather(1, clean.layers[l].topk_index).sum(1)
                                  for l in gate_layers]).mean())

    def mrr(logits):
        return metrics.hit_mrr(metrics.ranks(logits, enc.target_ids.to(logits.device)).cpu())

    # 3. forcing the attributed experts, one prompt at a time (each has its own experts)
    pos_gain = experts[(experts.expert >= 0)].sort_values("gain", ascending=False)
    forced_logits = []
    for b in range(len(fr)):
        sel = pos_gain[pos_gain.sample_id == b]
        chosen = sel[sel.gain > 0]
        chosen = chosen if len(chosen) else sel.head(1)
        fspec: dict[int, list[int]] = {}
        for row in chosen.itertuples():
            fspec.setdefault(int(row.layer), []).append(int(row.expert))
        n = int(mask[b].sum())
        tokens = torch.zeros(n, dtype=torch.bool, device=dev)
        tokens[-1] = True
        with inhibit_heads(mdl, spec), force_experts(mdl, fspec, tokens=tokens):
            forced_logits.append(mdl(input_ids=ids[b : b + 1, :n], use_cache=False).logits[0, -1].float())
    forced = torch.stack(forced_logits)
    rows = [{"condition": "clean", **mrr(clean.logits), "topk_gate": topk_gate(clean)},
            {"condition": "heads inhibited", **mrr(inh.logits), "topk_gate": topk_gate(inh)},
            {"condition": "inhibited + experts forced", **mrr(forced), "topk_gate": np.nan}]
    inter = pd.DataFrame(rows)

    # 4. integrated gradients
    key_mask = torch.zeros(len(arch.layers(mdl)), arch.num_heads(mdl), dtype=torch.bool)
    for l, hs in spec.items():
        key_mask[l, hs] = True
    ig_rows = []
    for l in moe_layers:
        target = clean.layers[l].topk_index[:, 0]
        out = router_ig(mdl, clean, l, target, steps=ig_steps)
        ig = out["ig"].cpu()
        mass = ig.abs().sum((1, 2))
        denom = mass + out["f_0"].abs().cpu()
        key_part = (ig.abs() * key_mask[: l + 1]).sum((1, 2))
        for b in range(len(fr)):
            ig_rows.append({"sample_id": b, "layer": l, "expert": int(target[b]), "f_x": float(out["f_x"][b]),
                            "f_0": float(out["f_0"][b]), "ig_sum": float(ig[b].sum()),
                            "share_all": float(mass[b] / denom[b]), "share_key": float(key_part[b] / denom[b])})
    ig_frame = pd.DataFrame(ig_rows)
    c, i, fo = (inter.mrr[k] for k in range(3))
    summary = pd.DataFrame([{
        "r_same_layer": corr.r[0], "p_same_layer": corr.p[0], "r_lagged": corr.r[1], "r_top_gate": corr.r[2],
        "gate_drop": 1 - inter.topk_gate[1] / inter.topk_gate[0], "mrr_drop": 1 - i / c if c else np.nan,
        "recovery": (fo - i) / (c - i) if abs(c - i) > 1e-9 else np.nan,
        "ig_share_all": ig_frame.share_all.mean(), "ig_share_key": ig_frame.share_key.mean(),
        "ig_completeness_error": float((ig_frame.ig_sum - (ig_frame.f_x - ig_frame.f_0)).abs().max()),
    }])
    return Coordination(corr, key_heads, inter, ig_frame, summary)


# ---------------------------------------------------------------------------------------------------- neurons
@dataclass
class NeuronRoles:
    """layer_counts: layer, kind (shared/routed), count, share of the per-sample top neurons.
    top_neurons: layer, expert, neuron, kind, mean_score, hits (samples where it is in the top), top per layer.
    contributions: family, stage, shared_gain, routed_gain, shared_share (of the positive gain).
    top_kind: family, shared_fraction of the top neurons."""

    layer_counts: pd.DataFrame
    top_neurons: pd.DataFrame
    contributions: pd.DataFrame
    top_kind: pd.DataFrame


def neuron_roles(model: str | LoadedModel, relations=DEFAULT_RELATIONS, n_samples: int | None = None,
                 top: int = 50, per_layer: int = 5, device: str = "cpu", dtype: str = "float32") -> NeuronRoles:
    """Basic (shared) vs refinement (routed): which neurons and experts carry the gain, per layer and task family.

    Per sample the ``top`` neurons by Imp (all layers, shared and selected routed experts; expert -1 = the
    shared expert, or the dense FFN of a dense model) are counted per layer, as the paper counts its top
    neurons. Expert-level: shared_gain = mean_i ExpertGain_{i,l,-1}, routed_gain = mean_i sum_j ExpertGain_{i,l,j};
    shared_share = sum max(shared, 0) / (sum max(shared, 0) + sum max(routed, 0)) per (family, stage).
    """
    lm = loaded(model, device, dtype)
    fr = facts(relations, n_samples)
    attr = _attribute(lm, fr, neurons=True, top_neurons=top)
    n_layers = len(arch.layers(lm.model))
    neur = _with_relation(attr.neurons, attr.samples).assign(kind=lambda d: np.where(d.expert < 0, "shared", "routed"))
    counts = neur.groupby(["layer", "kind"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / counts["count"].sum()
    top_n = (neur.groupby(["layer", "expert", "neuron", "kind"], as_index=False)
             .agg(mean_score=("score", "mean"), hits=("score", "size"))
             .sort_values(["layer", "hits", "mean_score"], ascending=[True, False, False])
             .groupby("layer").head(per_layer).reset_index(drop=True))
    ex = _with_relation(attr.experts, attr.samples).assign(kind=lambda d: np.where(d.expert < 0, "shared", "routed"))
    ex["stage"] = [summaries.stage_of(l, n_layers) for l in ex.layer]
    per_sample = ex.groupby(["family", "stage", "sample_id", "kind"]).gain.sum().unstack("kind", fill_value=0.0)
    for kind in ("shared", "routed"):
        if kind not in per_sample:
            per_sample[kind] = 0.0
    contrib = []
    for (fam, stage), g in per_sample.groupby(level=["family", "stage"]):
        pos_s, pos_r = g.shared.clip(lower=0).sum(), g.routed.clip(lower=0).sum()
        contrib.append({"family": fam, "stage": stage, "shared_gain": g.shared.mean(), "routed_gain": g.routed.mean(),
                        "shared_share": pos_s / (pos_s + pos_r) if pos_s + pos_r > 0 else np.nan})
    top_kind = (neur.groupby("family").kind.apply(lambda k: float((k == "shared").mean()))
                .rename("shared_fraction").reset_index())
    return NeuronRoles(counts, top_n, pd.DataFrame(contrib), top_kind)


# ---------------------------------------------------------------------------------------------------- explorer
def prompt_views(lm: LoadedModel, prompt: str, obj: str, top: int = 10) -> dict[str, pd.DataFrame]:
    """Every level of LPI attribution for one prompt: samples, layers, heads, experts and the ``top`` neurons."""
    attr = attribute(lm.model, lm.tokenizer, [prompt], [obj], neurons=True, top_neurons=top, progress=False)
    return attr.tables()
