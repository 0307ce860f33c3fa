"""The kit's estimate of every claim of :mod:`.claims`, from the findings' results, decided by the registry's rule.

Intervals (:mod:`moescope.statistics`): a percentile bootstrap over prompts (paired: every condition of a
statistic is resampled on the same prompts), and, when a model was trained from several seeds, the hierarchical
bootstrap (seeds, then prompts within each seed). A claim with a control measured on the same prompts (and seeds)
is decided on kit - control with its paired interval. Each function returns report rows
(:func:`moescope.verdicts.decide`); a model that cannot test a claim gets the claim's row with
``not testable: <the unmet precondition>``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import statistics, verdicts as v
from ..statistics import eta_squared, over_seeds, paired_difference, ratio, resample, stratified
from . import ablation, claims, coordination, paper, replicas, summaries
from .blocking import Blocking
from .coordination import Coordination
from .depth import DepthProfile, gain_matrix
from .efficiency import Efficiency, group_readings
from .neurons import NeuronRoles

PERMUTATIONS = 2000
#: the reading of a claim with layer 0 (the first layer) set apart: every statistic over layers 1..L-1
WITHOUT_LAYER0 = "without layer 0"
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- helpers
def label(names: Sequence[str]) -> str:
    """A model's name in the report, with the number of seeds when there are several."""
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} seeds)"


def merged_facts(facts: Sequence[Mapping[str, Any]], **extra) -> dict[str, Any]:
    """The first seed's facts, with the baselines averaged over seeds, plus ``extra``."""
    out = dict(facts[0])
    for key in ("baseline_mrr", "baseline_hit@10"):
        if all(key in f for f in facts):
            out[key] = float(np.mean([f[key] for f in facts]))
    return out | extra


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if len(a) else math.nan


def ratio_drop(before: np.ndarray, after: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> 1 - mean(after[idx]) / mean(before[idx]) (the same prompts in both)."""
    return lambda idx: 1 - ratio(after[idx].mean(-1), before[idx].mean(-1))


def absolute_drop(before: np.ndarray, after: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> mean(before[idx]) - mean(after[idx]): the MRR lost, in MRR units (bounded by the baseline MRR, so
    its interval cannot run past what is possible at a low baseline, unlike a ratio to it)."""
    return lambda idx: before[idx].mean(-1) - after[idx].mean(-1)


def recovered(low: np.ndarray, high: np.ndarray, mid: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> (mean mid - mean low) / (mean high - mean low): how much of the way from low to high mid gets."""
    return lambda idx: ratio(mid[idx].mean(-1) - low[idx].mean(-1), high[idx].mean(-1) - low[idx].mean(-1))


def _per_seed(results: Sequence[Any], estimate: Callable[[Any], v.Estimate | None]) -> v.Estimate | None:
    return over_seeds([estimate(r) for r in results])


# ---------------------------------------------------------------------------------------------------- Table 1
def _spec_groups(models: Sequence[str]) -> list[list[str]]:
    """The models grouped by spec (the registry's seeds), in order of first appearance."""
    groups: list[list[str]] = []
    for m in models:
        same = set(replicas.seeds(m))
        for g in groups:
            if g[0] in same:
                g.append(m)
                break
        else:
            groups.append([m])
    return groups


def table1_rows(eff: Efficiency) -> list[Row]:
    """Per model (seeds pooled): the Table 1 values of the paper model it is or mirrors; then the efficiency
    advantage under every reading, on the depth-matched groups (bootstrap over prompts for one group, t over
    groups for several)."""
    rows = []
    for names in _spec_groups(list(eff.table.model)):
        f = eff.facts[names[0]]
        paper_model = f.get("checkpoint") or f.get("mirrors")
        if paper_model not in paper.TABLE1.model.values:
            continue
        for col, stat in (("hit@10", lambda r, ffn, L: lambda i: (r[i] <= 10).mean(-1)),
                          ("mrr", lambda r, ffn, L: lambda i: (1 / r[i]).mean(-1)),
                          ("per_layer_efficiency", lambda r, ffn, L: lambda i: ffn[i].mean(-1) / L)):
            ests = []
            for m in names:
                s = eff.samples[eff.samples.model == m]
                ests.append(resample(stat(s["rank"].to_numpy(), s.ffn_gain.to_numpy(), eff.facts[m]["layers"]), len(s)))
            rows.append(claims.decide(f"T1.{paper_model}.{col}", merged_facts([eff.facts[m] for m in names]),
                                      over_seeds(ests), model=label(names)))
    return rows + advantage_rows(eff)


def _group_note(eff: Efficiency) -> str:
    groups = "; ".join(f"{g.label}: {', '.join(g.moe)} vs {', '.join(g.dense)}" for g in eff.groups) or "none"
    out = replicas.unmatched(eff.table, eff.groups)
    rest = ", ".join(f"{r.model} ({r.layers} layers)" for r in out.itertuples())
    return f"depth-matched groups: {groups}" + (f"; not matched: {rest}" if rest else "")


def _group_estimate(eff: Efficiency, group, reading: str, n: int, seed: int, gain: str = "ffn") -> v.Estimate:
    """One depth-matched group's reading (of the FFN or the attention gain), bootstrap over its prompts (the MoE
    and dense models resampled on the same prompts); ``seed``: the bootstrap's seed."""
    return statistics.bootstrap(lambda idx: np.asarray(group_readings(eff, group, idx, gain).get(reading, np.nan)),
                                n, reps=statistics.REPS, seed=seed, batched=True)


def advantage_rows(eff: Efficiency, reading: str = v.PAPER_READING) -> list[Row]:
    """The MoE-over-dense efficiency advantage, each reading, on the depth-matched groups only: per depth (its seeds,
    hierarchical bootstrap: seeds, then prompts) and, when the run has several depths, pooled over them. Depths are
    strata, not replicates: the pooled row is the mean of the per-depth estimates with each depth resampled on its
    own (:func:`moescope.statistics.over_strata`), so its interval does not count the spread between depths as
    sampling error. Every row is the same claim under the same rule (the report tallies it once, over its rows);
    with one depth the pooled row is that depth's row. ``reading`` names the variant ``eff`` is under (e.g.
    :data:`WITHOUT_LAYER0` for ``eff.without_layer0()``)."""
    n = int(eff.samples.groupby("model").size().min()) if len(eff.samples) else 0
    statistics_of = ({"T1.advantage.direction": ("mean MoE / mean dense", "ffn")}
                     | {k: (r, "ffn") for k, (r, *_) in claims.ADVANTAGE.items()}
                     | {k: (r, "attn") for k, (r, *_) in claims.ATTENTION.items()})
    rows = []
    for cid, (statistic, gain) in statistics_of.items():
        groups = [g for g in eff.groups if g.pair is not None or "paired" not in statistic]
        depths = sorted({g.depth for g in groups})
        by_depth = []
        for i, depth in enumerate(depths):
            at = [g for g in groups if g.depth == depth]
            ests = [_group_estimate(eff, g, statistic, n, statistics.SEED, gain) for g in at]
            est = (statistics.one_model(ests[0]) if len(ests) == 1 else
                   statistics.hierarchical(ests, statistics.REPS, statistics.SEED + i))  # own seed: depths resampled apart
            by_depth.append((depth, at, est))
        if len(by_depth) > 1:
            for depth, at, est in by_depth:
                rows.append(_advantage_row(cid, [g for g in eff.groups if g.depth == depth],
                                           est.relabel(f"{est.over} ({depth}-layer pairs)"),
                                           f"{depth} layers: {label([g.moe[0] for g in at])} vs "
                                           f"{label([g.dense[0] for g in at])}", eff, reading))
        if not by_depth:
            kit = None
        elif len(by_depth) == 1:
            kit = by_depth[0][2]
        else:
            kit = statistics.over_strata([e for *_, e in by_depth], f"depths ({', '.join(map(str, depths))} layers) "
                                         "x seeds x prompts")
        rows.append(_advantage_row(cid, eff.groups, kit, ("pooled over depths: " if len(by_depth) > 1 else "")
                                   + ", ".join(eff.table.model), eff, reading))
    return rows


def _denominator_low(eff: Efficiency, groups: Sequence, gain: str) -> float:
    """The lowest 95% lower bound, over the dense models of ``groups``, of their mean gain per layer (FFN or
    attention): the readings divide by it, so below 0 their ratio is undefined on these prompts."""
    per_prompt = eff.ffn if gain == "ffn" else eff.attn
    lows = [resample(lambda idx, x=per_prompt[d]: x[idx].mean(-1), len(per_prompt[d])).low
            for g in groups for d in g.dense]
    return float(min(lows)) if lows else math.nan


def _advantage_row(cid: str, groups: Sequence, kit: v.Estimate | None, model: str, eff: Efficiency,
                   reading: str = v.PAPER_READING) -> Row:
    """One advantage row over the depth-matched ``groups`` of its scope (one depth, or all); ``model`` names it."""
    gain = "attn" if cid in claims.ATTENTION else "ffn"
    facts = {"model": "all", "matched_groups": len(groups), "paired_groups": sum(g.pair is not None for g in groups),
             "denominator_low": _denominator_low(eff, groups, gain)}
    return claims.decide(cid, facts, kit, v.Estimate(0.0), _group_note(eff), model=model, reading=reading)


# ---------------------------------------------------------------------------------------------------- depth
def _stage_share(g: np.ndarray, mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> sum over prompts idx and the stage's layers of g / sum over prompts idx and all layers."""
    return lambda idx: ratio(g[idx][..., mask].sum((-1, -2)), g[idx].sum((-1, -2)))


def _depth_estimates(dp: DepthProfile, model: str, without_layer0: bool = False) -> dict[str, v.Estimate]:
    g = gain_matrix(dp.layers, model)
    layers = dp.layers[(dp.layers.model == model) & (dp.layers.sample_id == dp.layers.sample_id.min())]
    stage = layers.sort_values("layer").paper_stage.to_numpy()
    n, L = g.shape
    if without_layer0:  # the other layers keep their place (and stage) in the full depth: peak = (argmax + 2) / L
        g, stage = g[:, 1:], stage[1:]
    first = 2 if without_layer0 else 1
    out = {s: resample(_stage_share(g, stage == s), n) for s in summaries.STAGES}
    early, late = _stage_share(g, stage == "early"), _stage_share(g, stage == "late")
    out["late_amplification"] = resample(lambda idx: late(idx) - early(idx), n)
    out["peak"] = resample(lambda idx: ((g[idx].argmax(-1) + first) / L).mean(-1), n)
    if "topk_mass" not in dp.layers or without_layer0:
        return out
    mass = dp.layers[dp.layers.model == model].pivot(index="sample_id", columns="layer", values="topk_mass")
    routed = mass.notna().all().to_numpy()
    if routed.any():
        m = mass.to_numpy()
        first, last = (routed & (stage == "early")), (routed & (stage == "late"))
        out["screening"] = resample(lambda idx: m[idx][..., first].mean((-1, -2)) - m[idx][..., last].mean((-1, -2)), n)
    return out


def _total_gain_low(dp: DepthProfile, model: str, without_layer0: bool = False) -> float:
    """95% lower bound of mean_i sum_l FFNGain_{i,l} (layers 1.. when ``without_layer0``): the stage shares'
    denominator, so at or below 0 a share is undefined."""
    g = gain_matrix(dp.layers, model)[:, 1 if without_layer0 else 0:].sum(-1)
    return resample(lambda idx: g[idx].mean(-1), len(g)).low


def _partner(dp: DepthProfile, model: str) -> str | None:
    """The registry's partner of ``model`` if it is in the profile, else a dense model of the same depth."""
    registered = replicas.partner(model)
    if registered in dp.facts:
        return registered
    same = [m for m, f in dp.facts.items() if not f["moe"] and f["layers"] == dp.facts[model]["layers"]]
    return same[0] if same and dp.facts[model]["moe"] else None


def depth_rows(dp: DepthProfile, reading: str = v.PAPER_READING, without_layer0: bool = False) -> list[Row]:
    """Stage shares, late amplification and screening (MoE models) and peak position (every model), seeds pooled,
    with the depth-matched dense partner's value beside them. ``reading`` names the lens variant ``dp`` was
    computed under; ``without_layer0``: every statistic over layers 1..L-1 (layer 0 set apart)."""
    rows = []
    for names in _spec_groups(list(dp.facts)):
        per_seed = [_depth_estimates(dp, m, without_layer0) for m in names]
        partners = [_partner(dp, m) for m in names]
        controls = [_depth_estimates(dp, p, without_layer0) if p else None for p in partners]
        facts = merged_facts([dp.facts[m] for m in names], total_gain_low=min(
            _total_gain_low(dp, m, without_layer0) for m in names))
        keys = ["peak"] + (["early", "middle", "late", "late_amplification"] if facts["moe"] else [])
        for key in keys:
            cid = "depth.peak" if key == "peak" else ("depth.late_amplification" if key == "late_amplification"
                                                      else f"depth.stage.{key}")
            control = over_seeds([c[key] for c in controls]) if all(controls) else None
            note = f"control: {', '.join(p for p in partners if p)}" if all(partners) else "no depth-matched partner"
            rows.append(claims.decide(cid, facts, over_seeds([e[key] for e in per_seed]), control, note, label(names),
                                      reading=reading))
        if facts["moe"] and not without_layer0:
            kit = over_seeds([e.get("screening") for e in per_seed])
            rows.append(claims.decide("depth.screening", facts, kit, v.Estimate(0.0), "control: routing spread "
                                      "evenly (top-k mass k/E at every depth: difference 0)", label(names),
                                      reading=reading))
    return rows


#: the readings of the depth claims besides the paper's: (reading, lens, layer 0 set apart)
DEPTH_VARIANTS = (("lens: local scale", "local", False), ("lens: contrastive", "contrastive", False),
                  (WITHOUT_LAYER0, "final", True))


# ---------------------------------------------------------------------------------------------------- Table 2
def _config_rr(abl: ablation.Ablation, config: str) -> np.ndarray:
    return abl.ranks[abl.ranks.config == config].sort_values("sample_id").rr.to_numpy()


def _default(abl: ablation.Ablation) -> str:
    return abl.table.loc[abl.table["default"].astype(bool), "config"].iloc[0]


def table2_rows(results: Sequence[ablation.Ablation]) -> list[Row]:
    """Each Table 2 configuration as the share of the way from 'neither' (the floor) to the default it recovers."""
    names = [r.facts["model"] for r in results]
    testable = all(len(r.table) for r in results)
    gap = [(_mean(_config_rr(r, _default(r))) - _mean(_config_rr(r, ablation.NEITHER))) if len(r.table) else math.nan
           for r in results]
    facts = merged_facts([r.facts for r in results], ablation_gap=float(np.mean(gap)))
    rows = []
    for config, (cid, *_) in claims.TABLE2_CLAIMS.items():
        kit = control = None
        if testable:
            def estimate(r, c=config):
                floor, top, mid = (_config_rr(r, x) for x in (ablation.NEITHER, _default(r), c))
                return resample(recovered(floor, top, mid), len(mid)) if len(mid) else None
            kit = _per_seed(results, estimate)
            control = _per_seed(results, lambda r: statistics.mean_of(_config_rr(r, ablation.NEITHER)))
        rows.append(claims.decide(cid, facts, kit, control, "control value: MRR with neither shared nor routed "
                                  "experts", label(names)))
    return rows


# ---------------------------------------------------------------------------------------------------- Table 5
def _rr(b: Blocking, task: str, selection: str, method: str = "reroute", k: int = 0) -> np.ndarray:
    """rr of a task's prompts, [draws, prompts] (one row for the original and the attributed selection)."""
    return b.rr[(task, "original", "none", 0) if selection == "original" else (task, selection, method, k)]


def _drop(b: Blocking, task: str, method: str, k: int, absolute: bool = False, against: str = "random"
          ) -> tuple[v.Estimate | None, v.Estimate | None]:
    """(attributed drop, control drop: the mean over the matched random draws, or the frequency ranking's) of one
    task, bootstrap over its facts (None when the condition was not run); relative (1 - MRR_blocked / MRR), or
    ``absolute`` (MRR - MRR_blocked)."""
    if (task, "attributed", method, k) not in b.rr or (task, against, method, k) not in b.rr:
        return None, None
    drop = absolute_drop if absolute else ratio_drop
    base = _rr(b, task, "original")[0]
    att, rnd = _rr(b, task, "attributed", method, k)[0], _rr(b, task, against, method, k)
    ctl = lambda idx: np.mean([drop(base, row)(idx) for row in rnd], axis=0)  # noqa: E731
    return resample(drop(base, att), len(base)), resample(ctl, len(base))


def _fraction(b: Blocking, task: str, k: int) -> float:
    r = b.ranks[(b.ranks.task == task) & (b.ranks.selection == "attributed") & (b.ranks.k == k)]
    return float(r.fraction.max()) if len(r) else math.nan


def _tasks(results: Sequence[Blocking]) -> list[str]:
    return [t for t in paper.TABLE5.task.unique() if all(t in r.facts.get("task_mrr", {}) for r in results)]


def table5_rows(by_model: Mapping[str, Sequence[Blocking]], reading: str = v.PAPER_READING) -> list[Row]:
    """Every Table 5 row of a run: each model's (:func:`table5_model_rows`), then the cross-model contrast.
    ``reading`` names the variant the results are under (:data:`WITHOUT_LAYER0` for ``Blocking.without_layer0``)."""
    return ([row for rs in by_model.values() for row in table5_model_rows(rs, reading)]
            + table5_contrast_rows(by_model, reading))


def table5_model_rows(results: Sequence[Blocking], reading: str = v.PAPER_READING) -> list[Row]:
    """Table 5 on one model (seeds pooled): the architecture-matched paper model's drops at top-1/5/10 and at the
    paper's share of pairs, attributed vs random under each method, core-sensitive vs tolerant, OLMoE's '76%'.
    Under a reading that blocked by re-routing only (layer 0 set apart), the mask and zero rows are left out."""
    names = [r.facts["model"] for r in results]
    f0 = results[0].facts
    pm = paper.TABLE5_MODEL[bool(f0["shared_expert"])]
    moe = all(r.facts["moe"] for r in results)
    rows = []

    def facts_for(task: str, k: int | None) -> dict:
        mrr = float(np.mean([r.facts["task_mrr"].get(task, math.nan) for r in results]))
        prior = float(np.mean([r.facts.get("task_prior", {}).get(task, math.nan) for r in results]))
        frac = float(np.mean([_fraction(r, task, k) for r in results])) if moe and k else math.nan
        return merged_facts([r.facts for r in results], baseline_mrr=mrr, fraction=frac, prior_mrr=prior,
                            beyond_prior=mrr - prior)

    def drops(task, method, k, absolute=False, against="random"):
        """(kit, control, kit - control paired over the same prompts and seeds), relative or absolute; the
        control is the matched random draws or (``against='frequency'``) the routing-frequency ranking."""
        if not moe:
            return None, None, None
        pairs = [_drop(r, task, method, k, absolute, against) for r in results]
        kit, ctl = over_seeds([p[0] for p in pairs]), over_seeds([p[1] for p in pairs])
        return kit, ctl, paired_difference(kit, ctl)

    def size(task, k, note):
        """A size row's (kit, random control, note): the relative drop the paper reports is decided; beside it, the
        absolute MRR drop and its paired difference to random (bounded where a ratio to a low baseline is not)."""
        kit, ctl, _ = drops(task, "reroute", k)
        a, _, d = drops(task, "reroute", k, absolute=True)
        return kit, ctl, "; ".join(x for x in (note, _absolute_note(a, d)) if x)

    blocked_by = {m for b in results for m in b.ranks.method.unique()} - {"none"}

    def ran(k):
        return "" if not moe or (k in set(results[0].ranks.k)) else f"top-{k} was not blocked in this run"

    for task in _tasks(results):
        for k in (1, 5, 10):
            kit, ctl, note = size(task, k, ran(k))
            rows.append(claims.decide(claims.table5_id(pm, task, k), facts_for(task, k), kit, ctl, note, label(names),
                                      reading=reading))
        share_k = min(r.paper_ks.get(pm, 0) for r in results) if moe else 0
        kit, ctl, note = size(task, share_k, f"k = {share_k} of {f0['pairs']} pairs") if share_k else \
            (None, None, f"k = {share_k} of {f0['pairs']} pairs")
        rows.append(claims.decide(claims.table5_id(pm, task, "share"), facts_for(task, share_k) | {"share_k": share_k},
                                  kit, ctl, note, label(names), reading=reading))
        for method in [m for m in ("reroute", "mask", "zero") if m in blocked_by or not moe]:
            kit, ctl, diff = drops(task, method, 10, absolute=True)
            rows.append(claims.decide(f"T5.attributed_vs_random.{method}.{task}", facts_for(task, 10), kit, ctl,
                                      ran(10), label(names), diff, reading))
        kit, ctl, diff = drops(task, "reroute", 10, absolute=True, against="frequency")
        rows.append(claims.decide(f"T5.attributed_vs_frequency.{task}", facts_for(task, 10), kit, ctl, ran(10),
                                  label(names), diff, reading))
    rows.append(_core_vs_tolerant(results, names, moe, reading))
    for cid in ("T5.olmoe76.drop_of", "T5.olmoe76.falls_to"):
        task = "country_capital"
        note = "on country_capital, the task the abstract's number belongs to"
        kit, ctl, note = size(task, 10, note) if task in _tasks(results) else (None, None, note)
        f = facts_for(task, 10) if task in _tasks(results) else merged_facts([r.facts for r in results])
        rows.append(claims.decide(cid, f, kit, ctl, note, label(names), reading=reading))
    return rows


def _absolute_note(drop: v.Estimate | None, diff: v.Estimate | None) -> str:
    """'absolute MRR drop 0.2 [0.1, 0.3]; minus random 0.19 [0.1, 0.28]' (empty when undefined)."""
    def fmt(e):
        return f"{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]" if e is not None and e.finite and e.has_interval else ""
    parts = [f"absolute MRR drop {fmt(drop)}" if fmt(drop) else "", f"minus random {fmt(diff)}" if fmt(diff) else ""]
    return "; ".join(p for p in parts if p)


def _family_drop(b: Blocking, family_tasks: Sequence[str]) -> Callable[[dict[str, np.ndarray]], float]:
    """Mean over ``family_tasks`` of drop@10 (re-routed), from per-task index arrays."""
    arrays = {t: (_rr(b, t, "original")[0], _rr(b, t, "attributed", "reroute", 10)[0]) for t in family_tasks}
    return lambda idx: np.mean([ratio_drop(o, a)(idx[t]) for t, (o, a) in arrays.items()], axis=0)


def _core_vs_tolerant(results: Sequence[Blocking], names: list[str], moe: bool, reading: str = v.PAPER_READING
                      ) -> Row:
    present = _tasks(results)
    core = [t for t in claims.CORE_TASKS if t in present]
    tolerant = [t for t in claims.TOLERANT_TASKS if t in present]
    facts = merged_facts([r.facts for r in results],
                         baseline_mrr=float(np.mean([r.facts["task_mrr"][t] for r in results for t in core + tolerant]))
                         if core and tolerant else math.nan,
                         fraction=float(np.mean([_fraction(r, t, 10) for r in results for t in core + tolerant]))
                         if moe and core and tolerant else math.nan)
    kit = None
    if moe and core and tolerant and all(10 in set(r.ranks.k) for r in results):
        def estimate(b):
            c, t = _family_drop(b, core), _family_drop(b, tolerant)
            sizes = {x: len(_rr(b, x, "original")[0]) for x in core + tolerant}
            return stratified(lambda idx: c(idx) - t(idx), sizes)
        kit = _per_seed(results, estimate)
    return claims.decide("T5.core_vs_tolerant", facts, kit, note=f"core: {', '.join(core)}; tolerant: "
                         f"{', '.join(tolerant)}", model=label(names), reading=reading)


def _drop_contrast(a: Sequence[Blocking], b: Sequence[Blocking]) -> tuple[v.Estimate, dict[str, float]]:
    """Mean drop@10 (re-routed) over the tasks both ran, model a - model b, stratified bootstrap over each task's
    facts, seeds paired by index (independent models: the pairing only fixes the resampling), and their facts."""
    both = list(a) + list(b)
    present = _tasks(both)
    ests = []
    for ra, rb in zip(a, b):
        fa, fb = _family_drop(ra, present), _family_drop(rb, present)
        sizes = {t: len(_rr(ra, t, "original")[0]) for t in present}
        ests.append(stratified(lambda idx, fa=fa, fb=fb: fa(idx) - fb(idx), sizes))
    facts = {"baseline_mrr": float(np.mean([r.facts["baseline_mrr"] for r in both])),
             "beyond_prior": float(np.mean([r.facts.get("beyond_prior", math.nan) for r in both])),
             "fraction": float(np.mean([_fraction(r, t, 10) for r in both for t in present]))}
    return over_seeds(ests), facts


def table5_contrast_rows(by_model: Mapping[str, Sequence[Blocking]], reading: str = v.PAPER_READING) -> list[Row]:
    """Robustness to blocking across models (mean drop@10 over the tasks, seeds pooled): 'a deep MoE with a shared
    expert is robust, a shallow one without degrades' (the shallowest unshared MoE against the deepest shared one,
    depth and the shared expert confounded as in the paper), and the shared expert's share of it at equal depth
    (an unshared MoE against a shared one of the same depth)."""
    moe = {m: rs for m, rs in by_model.items() if rs[0].facts["moe"]}
    shared = [m for m, rs in moe.items() if rs[0].facts["shared_expert"]]
    unshared = [m for m, rs in moe.items() if not rs[0].facts["shared_expert"]]
    depth = {m: moe[m][0].facts["layers"] for m in moe}
    ran = all(10 in set(r.ranks.k) for rs in moe.values() for r in rs)
    deep = max(shared, key=depth.get, default=None)
    shallow = min(unshared, key=depth.get, default=None)
    contrast = bool(deep and shallow and depth[deep] > depth[shallow])
    equal = next(((u, s) for s in shared for u in unshared if depth[u] == depth[s]), None)
    rows = []
    for cid, pair, flag in (("T5.shared_depth_robust", (shallow, deep) if contrast else None, "contrast"),
                            ("T5.shared_equal_depth", equal, "equal_depth")):
        facts: dict[str, Any] = {"model": "all", flag: pair is not None}
        kit = None
        if pair is not None and ran:
            kit, more = _drop_contrast(moe[pair[0]], moe[pair[1]])
            facts |= more
        note = (f"without a shared expert: {label([r.facts['model'] for r in moe[pair[0]]])} ({depth[pair[0]]} "
                f"layers); with one: {label([r.facts['model'] for r in moe[pair[1]]])} ({depth[pair[1]]} layers)"
                if pair else "needs both kinds of MoE in the run" + (" at the same depth" if flag == "equal_depth" else ""))
        rows.append(claims.decide(cid, facts, kit, note=note, model=", ".join(by_model), reading=reading))
    return rows


# ---------------------------------------------------------------------------------------------------- heads <-> experts
def _r_estimates(co: Coordination, y: str) -> tuple[v.Estimate, v.Estimate, float]:
    """(mean within-layer r with its bootstrap interval, the shuffled null, permutation p-value)."""
    xm, ym, _ = coordination.matrices(co.pairs, "x", y)
    if xm.shape[1] == 0:
        return v.Estimate(math.nan), v.Estimate(math.nan), math.nan
    kit = resample(lambda idx: coordination.mean_r(xm[idx], ym[idx]), len(xm))
    null = np.asarray(coordination.mean_r(xm, coordination.shuffled(ym, np.random.default_rng(0), PERMUTATIONS)))
    null = null[np.isfinite(null)]
    if not len(null):
        return kit, v.Estimate(math.nan), math.nan
    lo, hi = statistics.percentiles(null)
    p = (1 + (null >= kit.value).sum()) / (1 + len(null)) if math.isfinite(kit.value) else math.nan
    return kit, v.Estimate(float(null.mean()), lo, hi, len(null), "permutations"), float(p)


def _random_drop(co: Coordination, rr: bool) -> v.Estimate:
    """Mean over random-head draws of the MRR drop (rr) or the top-k gate drop, bootstrap over prompts."""
    r = co.random_heads
    if rr:
        base = co.prompts.rr_clean.to_numpy()
        arrays = [(base, g.rr.to_numpy()) for _, g in r.groupby("draw")]
    else:
        arrays = [(g.gate_clean.to_numpy(), g.gate_inhibited.to_numpy()) for _, g in r.groupby("draw")]
    return resample(lambda idx: np.mean([ratio_drop(b, a)(idx) for b, a in arrays], axis=0), len(co.prompts))


def _prompt_shares(co: Coordination, column: str) -> np.ndarray:
    return co.ig.groupby("sample_id")[column].mean().to_numpy()


def coordination_rows(results: Sequence[Coordination]) -> list[Row]:
    """Head-expert correlation (within layers, against shuffled prompts), its significance, head inhibition
    (against random heads), forcing and mediation recovery, and the integrated-gradients shares."""
    names = [r.facts["model"] for r in results]
    moe = all(r.facts["moe"] for r in results)
    drops = [float(r.prompts.rr_clean.mean() - r.prompts.rr_inhibited.mean()) if moe else math.nan for r in results]
    facts = merged_facts([r.facts for r in results], inhibition_drop=float(np.mean(drops)))
    est: dict[str, tuple[v.Estimate | None, v.Estimate | None]] = {}
    note = {}
    if moe:
        for cid, y in (("HE.r", "y"), ("HE.r_lagged", "y_next")):
            parts = [_r_estimates(r, y) for r in results]
            est[cid] = over_seeds([p[0] for p in parts]), over_seeds([p[1] for p in parts])
            if y == "y":
                est["HE.p"] = v.Estimate(max(p[2] for p in parts)), est[cid][1]
                note["HE.p"] = "largest p over the seeds" if len(parts) > 1 else ""
        p = [r.prompts for r in results]

        def drops(clean: str, inhibited: str) -> v.Estimate | None:
            return over_seeds([resample(ratio_drop(q[clean].to_numpy(), q[inhibited].to_numpy()), len(q)) for q in p])

        est["HE.inhibit_gate"] = drops("gate_clean", "gate_inhibited"), over_seeds([_random_drop(r, False)
                                                                                     for r in results])
        est["HE.inhibit_mrr"] = drops("rr_clean", "rr_inhibited"), over_seeds([_random_drop(r, True) for r in results])
        if all("gate_inhibited_ig" in q for q in p):
            est["HE.inhibit_gate_ig"] = drops("gate_clean_ig", "gate_inhibited_ig"), est["HE.inhibit_gate"][1]
            est["HE.inhibit_mrr_ig"] = drops("rr_clean", "rr_inhibited_ig"), est["HE.inhibit_mrr"][1]
        rec = {c: over_seeds([resample(recovered(q.rr_inhibited.to_numpy(), q.rr_clean.to_numpy(), q[c].to_numpy()),
                                       len(q)) for q in p]) for c in ("rr_forced", "rr_mediated")}
        est["HE.forcing"] = rec["rr_forced"], rec["rr_mediated"]
        est["HE.mediation"] = rec["rr_mediated"], None
        if all(len(r.ig) for r in results):
            def share(column: str) -> v.Estimate | None:
                return over_seeds([statistics.mean_of(_prompt_shares(r, column)) for r in results])

            est["HE.ig_share"] = share("share_key"), share("share_random")
            est["HE.ig_share_all"] = share("share_all"), None
            err = max(float(r.ig.completeness.max()) for r in results)
            note["HE.ig_share"] = note["HE.ig_share_all"] = f"IG completeness error at most {err:.2g}"
    ids = ["HE.r", "HE.r_lagged", "HE.p", "HE.inhibit_gate", "HE.inhibit_mrr", "HE.inhibit_gate_ig",
           "HE.inhibit_mrr_ig", "HE.forcing", "HE.mediation", "HE.ig_share", "HE.ig_share_all"]
    return [claims.decide(cid, facts, *est.get(cid, (None, None)), note=note.get(cid, ""), model=label(names),
                          diff=paired_difference(*est[cid]) if cid in PAIRED_CONTROLS and cid in est else None)
            for cid in ids]


#: head-expert claims whose control is measured on the same prompts (random heads, the mediated routing)
PAIRED_CONTROLS = ("HE.inhibit_gate", "HE.inhibit_mrr", "HE.inhibit_gate_ig", "HE.inhibit_mrr_ig", "HE.forcing",
                   "HE.ig_share")


def within_layer_table(co: Coordination) -> pd.DataFrame:
    """Per MoE layer: the within-layer r of X (head gain) vs Y (expert gain) with its bootstrap interval."""
    xm, ym, layers = coordination.matrices(co.pairs, "x", "y")
    rows = []
    for j, layer in enumerate(layers):
        e = resample(lambda idx: coordination.within_layer_r(xm[idx][..., [j]], ym[idx][..., [j]])[..., 0], len(xm))
        rows.append({"layer": layer, "r": e.value, "low": e.low, "high": e.high, "n": len(xm)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- basic / refinement
def _roles_estimates(nr: NeuronRoles) -> dict[str, v.Estimate]:
    g = nr.gains
    wide = g.pivot_table(index="sample_id", columns="stage", values=["shared", "routed"], fill_value=0.0)
    shared_pos, routed_pos = wide["shared"].clip(lower=0), wide["routed"].clip(lower=0)

    def share(stage, idx):
        if stage not in shared_pos:
            return np.full(np.shape(idx)[:-1], np.nan)
        s, r = shared_pos[stage].to_numpy()[idx].sum(-1), routed_pos[stage].to_numpy()[idx].sum(-1)
        return ratio(s, s + r)

    totals = g.groupby("sample_id").agg(shared=("shared", "sum"), routed=("routed", "sum"), family=("family", "first"))
    fam, sh, ro = totals.family.to_numpy(), totals.shared.to_numpy(), totals.routed.to_numpy()
    n = len(totals)
    shuffled = [np.random.default_rng(statistics.SEED + p).permutation(fam) for p in range(FAMILY_SHUFFLES)]

    def refine(families):
        return lambda idx: eta_squared(ro[idx], families[idx]) - eta_squared(sh[idx], families[idx])

    def null(idx):
        return np.mean([refine(f)(idx) for f in shuffled], axis=0)

    return {"BR.shared_early": resample(lambda idx: share("early", idx) - share("late", idx), n),
            "BR.routed_refine": resample(refine(fam), n), "BR.routed_refine.control": resample(null, n)}


#: family labels shuffled across prompts this many times for the control of BR.routed_refine
FAMILY_SHUFFLES = 20


def late_neurons(nr: NeuronRoles) -> tuple[v.Estimate, v.Estimate]:
    """(late share - early share of each prompt's top neurons, mean over prompts with its bootstrap; the same for
    neurons spread evenly over the layers: late layers' fraction - early layers' fraction), on the paper's stage
    boundaries carried over as relative depth."""
    counts = nr.by_prompt.pivot(index="sample_id", columns="layer", values="count").to_numpy(dtype=float)
    n_layers = counts.shape[1]
    stage = np.array([paper.stage_of((l + 1) / n_layers) for l in range(n_layers)])
    share = counts / counts.sum(1, keepdims=True)
    diff = share[:, stage == "late"].sum(1) - share[:, stage == "early"].sum(1)
    even = float(np.mean(stage == "late") - np.mean(stage == "early"))
    return resample(lambda idx: diff[idx].mean(-1), len(diff)), v.Estimate(even)


def roles_rows(results: Sequence[NeuronRoles]) -> list[Row]:
    """Shared early / routed late, and routed experts as domain refiners against the same statistic with the task
    families shuffled across prompts (paired over the same resamples; seeds pooled)."""
    names = [r.facts["model"] for r in results]
    facts = merged_facts([r.facts for r in results])
    ests = [_roles_estimates(r) for r in results] if facts["shared_expert"] else None

    def pooled(key):
        return over_seeds([e[key] for e in ests]) if ests else None

    kit, ctl = pooled("BR.routed_refine"), pooled("BR.routed_refine.control")
    rows = [claims.decide("BR.shared_early", facts, pooled("BR.shared_early"), model=label(names)),
            claims.decide("BR.routed_refine", facts, kit, ctl, model=label(names), diff=paired_difference(kit, ctl))]
    counted = facts["moe"] and all(len(r.by_prompt) for r in results)
    late = [late_neurons(r) for r in results] if counted else None
    k, c = (over_seeds([e[0] for e in late]), late[0][1]) if late else (None, None)
    d = None if k is None or not k.finite else v.Estimate(k.value - c.value, k.low - c.value, k.high - c.value, k.n,
                                                            k.over)
    rows.append(claims.decide("NR.late_neurons", facts, k, c, model=label(names), diff=d))
    return rows


# ---------------------------------------------------------------------------------------------------- method
def telescoping_row(errors: pd.DataFrame, facts: Mapping[str, Any]) -> Row:
    """The telescoping identity: the largest error over the prompts (no interval: a maximum)."""
    return claims.decide("LPI.telescoping", facts, v.Estimate(float(errors.error.max()), n=len(errors)),
                         model=facts.get("model", ""))


def scores_rows(facts: Mapping[str, Any], sc: pd.DataFrame) -> list[Row]:
    """Table 1's HIT@10 and MRR of the paper model this model is or mirrors (none for any other model)."""
    paper_model = facts.get("checkpoint") or facts.get("mirrors")
    if paper_model not in paper.TABLE1.model.values:
        return []
    ranks = sc["rank"].to_numpy()
    return [claims.decide(f"T1.{paper_model}.hit@10", facts, over_seeds([resample(lambda i: (ranks[i] <= 10).mean(-1),
                                                                            len(ranks))]), model=facts["model"]),
            claims.decide(f"T1.{paper_model}.mrr", facts, over_seeds([resample(lambda i: (1 / ranks[i]).mean(-1),
                                                                        len(ranks))]), model=facts["model"])]
