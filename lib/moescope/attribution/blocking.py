"""Table 5: block the top-k attributed (layer, expert) pairs of a task and re-score it, beside random pairs.

Ranking: per task, (layer, routed expert) pairs by sum_i ExpertGain_{i,l,j} over the task's prompts
(:func:`moescope.attribution.summaries.top_experts`). Three ways to block (all hooks, restored on exit):

    reroute : logit -> -inf before the softmax; the next-best expert takes the slot, weights renormalised
              over the unblocked experts                       (:func:`moescope.interventions.block_experts`)
    mask    : probability -> 0 after the softmax; the next-best expert takes the slot with its own clean
              probability                                      (:func:`moescope.interventions.mask_experts`)
    zero    : routing kept, the blocked experts' outputs x 0   (:func:`moescope.interventions.zero_experts`)

Control: ``n_random`` draws of k distinct (layer, expert) pairs, uniformly among all pairs, blocked the same way.
k is also expressed as a fraction of all pairs, and the paper's share (top-10 of Qwen1.5-MoE's 24 x 60 pairs,
of OLMoE's 16 x 64) is carried over as its own k. drop = 1 - MRR_blocked / MRR_original (per task).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from .. import arch
from ..interventions import block_experts, mask_experts, zero_experts
from ..models import LoadedModel
from . import paper, summaries, tasks

METHODS = {"reroute": block_experts, "mask": mask_experts, "zero": zero_experts}
Spec = dict[int, list[int]]


@dataclass
class Blocking:
    """``ranks``: task, sample_id, method, k, selection ('original' | 'attributed' | 'random'), draw, n_blocked,
    fraction, rank, rr. ``ranking``: task, layer, expert, gain, selected (the attributed order).
    ``paper_ks``: {paper model: k with the paper's top-10 share of pairs}. ``facts``: the model's and the
    prompts' facts, with each task's baseline MRR under ``task_mrr`` (empty tables for a dense model)."""

    ranks: pd.DataFrame
    ranking: pd.DataFrame
    paper_ks: dict[str, int]
    facts: dict

    @cached_property
    def rr(self) -> dict[tuple, np.ndarray]:
        """{(task, selection, method, k): rr [draws, prompts]} (the original under (task, 'original', 'none', 0))."""
        return {key: g.pivot(index="draw", columns="sample_id", values="rr").to_numpy()
                for key, g in self.ranks.groupby(["task", "selection", "method", "k"], sort=False)}

    def table(self) -> pd.DataFrame:
        """MRR and drop per task, method, k and selection (random draws averaged)."""
        r = self.ranks
        orig = r[r.selection == "original"].groupby("task").rr.mean()
        out = (r[r.selection != "original"].groupby(["task", "method", "k", "selection"], as_index=False, sort=False)
               .agg(n_blocked=("n_blocked", "mean"), fraction=("fraction", "mean"), mrr=("rr", "mean")))
        out.insert(4, "orig_mrr", out.task.map(orig).astype(float))  # float also when nothing was blocked
        out["drop"] = 1 - out.mrr / out.orig_mrr
        return out


def blocked(model, method: str, spec: Mapping[int, Sequence[int]]):
    """The context manager that blocks ``spec`` ({layer: [expert, ...]}) by ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, not {method!r}")
    return METHODS[method](model, spec)


def all_pairs(model) -> list[tuple[int, int]]:
    """Every (MoE layer, routed expert) pair of the model."""
    return [(p.index, e) for p in arch.layers(model) if p.is_moe for e in range(p.experts.gate_up_proj.shape[0])]


def random_specs(pairs: Sequence[tuple[int, int]], k: int, draws: int, seed: int = 0) -> list[Spec]:
    """``draws`` sets of k distinct pairs drawn uniformly without replacement, as {layer: [expert, ...]}."""
    if k > len(pairs):
        raise ValueError(f"cannot draw {k} distinct pairs from {len(pairs)}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        spec: Spec = {}
        for i in sorted(rng.choice(len(pairs), size=k, replace=False)):
            layer, expert = pairs[i]
            spec.setdefault(layer, []).append(expert)
        out.append(spec)
    return out


def paper_share_ks(n_pairs: int) -> dict[str, int]:
    """{paper model: round(n_pairs * share of pairs its top-10 blocked)} (0 when the share is under one pair)."""
    return {m: int(round(n_pairs * paper.blocked_fraction(m))) for m in paper.TABLE5_MODEL.values()}


def rankings(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    """Per task, the (layer, routed expert) pairs ranked by summed ExpertGain over the task's prompts."""
    attr = tasks.attribution(lm, fr, neurons=False)
    experts = tasks.with_samples(attr.experts, attr.samples)
    return pd.concat([summaries.expert_ranking(g).assign(task=t) for t, g in experts.groupby("task", sort=False)],
                     ignore_index=True)


def top_spec(ranking: pd.DataFrame, k: int) -> Spec:
    """The first k pairs of a ranking (layer, expert columns, best first) as {layer: [expert, ...]}."""
    spec: Spec = {}
    for row in ranking.head(k).itertuples():
        spec.setdefault(int(row.layer), []).append(int(row.expert))
    return spec


def _score(lm, prompts: pd.DataFrame, method: str, spec: Spec, **labels) -> pd.DataFrame:
    with blocked(lm.model, method, spec):
        sc = tasks.scores(lm, prompts)
    return sc.assign(sample_id=prompts.index.values, method=method, n_blocked=sum(map(len, spec.values())), **labels)


def block_all(lm: LoadedModel, fr: pd.DataFrame, ranking: pd.DataFrame, ks: Sequence[int], methods: Sequence[str],
              n_random: int, seed: int) -> pd.DataFrame:
    """Ranks of every prompt with its task's top-k attributed pairs blocked, and with the same random pairs
    blocked for every task (one pass over all prompts per draw)."""
    pairs, frames = all_pairs(lm.model), []
    for k in ks:
        draws = random_specs(pairs, min(k, len(pairs)), n_random, seed + k)
        for method in methods:
            for task, sub in fr.groupby("task", sort=False):
                spec = top_spec(ranking[ranking.task == task], k)
                frames.append(_score(lm, sub, method, spec, k=k, selection="attributed", draw=0))
            frames += [_score(lm, fr, method, d, k=k, selection="random", draw=i) for i, d in enumerate(draws)]
    return pd.concat(frames, ignore_index=True)


def run(model: str | LoadedModel, relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
        ks: Sequence[int] = (1, 5, 10), methods: Sequence[str] = tuple(METHODS), n_random: int = 5, seed: int = 0,
        device: str = "cpu", dtype: str | None = None, template: int = 0) -> Blocking:
    """Table 5 with its controls on one model (ks plus each paper model's top-10 share carried over as k)."""
    lm = tasks.loaded(model, device, dtype)
    fr = tasks.facts(relations, n_samples, template)
    base = tasks.scores(lm, fr).assign(sample_id=fr.index.values)
    facts = tasks.model_facts(lm) | tasks.data_facts(base) | {"task_mrr": base.groupby("task").rr.mean().to_dict()}
    original = base.assign(method="none", k=0, selection="original", draw=0, n_blocked=0)
    if not facts["moe"]:
        return Blocking(original.assign(fraction=0.0), pd.DataFrame(), {}, facts)
    share_ks = paper_share_ks(facts["pairs"])
    all_ks = sorted(set(ks) | {k for k in share_ks.values() if k > 0})
    ranking = rankings(lm, fr)
    ranks = pd.concat([original, block_all(lm, fr, ranking, all_ks, methods, n_random, seed)], ignore_index=True)
    ranks["fraction"] = ranks.n_blocked / facts["pairs"]
    return Blocking(ranks, ranking, share_ks, facts)


def summary(by_model: Mapping[str, Sequence[Blocking]]) -> pd.DataFrame:
    """Drop per model, task, method and k: attributed beside random (each the mean over the model's seeds)."""
    frames = [b.table().assign(model=m) for m, rs in by_model.items() for b in rs if len(b.ranking)]
    if not frames:
        return pd.DataFrame(columns=["model", "task", "method", "k", "fraction", "orig_mrr", "attributed", "random"])
    t = pd.concat(frames, ignore_index=True)
    t = t.groupby(["model", "task", "method", "k", "selection"], as_index=False, sort=False)[
        ["fraction", "orig_mrr", "drop"]].mean()
    wide = t.pivot_table(index=["model", "task", "method", "k"], columns="selection", values="drop", sort=False)
    keys = t[t.selection == "attributed"].set_index(["model", "task", "method", "k"])[["fraction", "orig_mrr"]]
    return keys.join(wide).reset_index()
