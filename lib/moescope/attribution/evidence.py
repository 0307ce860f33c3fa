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
from . import ablation, claims, coordination, paper, replicas, summaries
from .blocking import Blocking
from .coordination import Coordination
from .depth import DepthProfile, gain_matrix
from .efficiency import Efficiency, group_readings
from .neurons import NeuronRoles

REPS = statistics.REPS
PERMUTATIONS = 2000
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- helpers
def boot(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> v.Estimate:
    """Percentile bootstrap over ``n`` prompts (seeded: the same resamples for every statistic of a claim).

    Statistics are batched: they take prompt indices [..., n] and reduce the last axis (all resamples at once).
    """
    return statistics.bootstrap(statistic, n, reps=REPS, seed=statistics.SEED, batched=True)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, NaN where |b| is (numerically) 0."""
    ok = np.abs(b) > 1e-12
    return np.where(ok, a / np.where(ok, b, 1.0), np.nan)


def mean_of(values: np.ndarray) -> v.Estimate:
    """The mean of per-prompt ``values`` with its bootstrap interval."""
    return statistics.mean_of(values, REPS, statistics.SEED)


def combine(estimates: Sequence[v.Estimate | None]) -> v.Estimate | None:
    """One seed: its estimate, marked as resting on one model (:func:`moescope.statistics.one_model`, when it has an
    interval). Several: the mean over seeds with the hierarchical bootstrap interval (seeds, then
    each seed's prompt resamples; a t interval over the seeds' values for estimates that are not bootstraps; NaN
    if any is undefined). Two combinations of the same seeds resample the same seeds, so their draws pair."""
    if len(estimates) == 1:
        return statistics.one_model(estimates[0]) if estimates[0] is not None and estimates[0].has_interval \
            else estimates[0]
    if any(e is None for e in estimates):
        return None
    return statistics.hierarchical(estimates, REPS, statistics.SEED)


def paired(kit: v.Estimate | None, control: v.Estimate | None) -> v.Estimate | None:
    """kit - control with the paired interval (both bootstraps over the same prompts and seeds)."""
    if kit is None or control is None or not (kit.finite and control.finite):
        return None
    return statistics.difference(kit, control, paired=True)


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
    return lambda idx: 1 - _div(after[idx].mean(-1), before[idx].mean(-1))


def absolute_drop(before: np.ndarray, after: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> mean(before[idx]) - mean(after[idx]): the MRR lost, in MRR units (bounded by the baseline MRR, so
    its interval cannot run past what is possible at a low baseline, unlike a ratio to it)."""
    return lambda idx: before[idx].mean(-1) - after[idx].mean(-1)


def recovered(low: np.ndarray, high: np.ndarray, mid: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> (mean mid - mean low) / (mean high - mean low): how much of the way from low to high mid gets."""
    return lambda idx: _div(mid[idx].mean(-1) - low[idx].mean(-1), high[idx].mean(-1) - low[idx].mean(-1))


def _per_seed(results: Sequence[Any], estimate: Callable[[Any], v.Estimate | None]) -> v.Estimate | None:
    return combine([estimate(r) for r in results])


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
                ests.append(boot(stat(s["rank"].to_numpy(), s.ffn_gain.to_numpy(), eff.facts[m]["layers"]), len(s)))
            rows.append(claims.decide(f"T1.{paper_model}.{col}", merged_facts([eff.facts[m] for m in names]),
                                      combine(ests), model=label(names)))
    return rows + advantage_rows(eff)


def _group_note(eff: Efficiency) -> str:
    groups = "; ".join(f"{g.label}: {', '.join(g.moe)} vs {', '.join(g.dense)}" for g in eff.groups) or "none"
    out = replicas.unmatched(eff.table, eff.groups)
    rest = ", ".join(f"{r.model} ({r.layers} layers)" for r in out.itertuples())
    return f"depth-matched groups: {groups}" + (f"; not matched: {rest}" if rest else "")


def _group_estimate(eff: Efficiency, group, reading: str, n: int, seed: int) -> v.Estimate:
    """One depth-matched group's reading, bootstrap over its prompts (the MoE and dense models resampled on the same
    prompts); ``seed``: the bootstrap's seed."""
    return statistics.bootstrap(lambda idx: np.asarray(group_readings(eff, group, idx).get(reading, np.nan)), n,
                                reps=REPS, seed=seed, batched=True)


def advantage_rows(eff: Efficiency) -> list[Row]:
    """The MoE-over-dense efficiency advantage, each reading, on the depth-matched groups only: per depth (its seeds,
    hierarchical bootstrap: seeds, then prompts) and, when the run has several depths, pooled over them. Depths are
    strata, not replicates: the pooled row is the mean of the per-depth estimates with each depth resampled on its
    own (:func:`moescope.statistics.over_strata`), so its interval does not count the spread between depths as
    sampling error. Every row is the same claim under the same rule (the report tallies it once, over its rows);
    with one depth the pooled row is that depth's row."""
    n = int(eff.samples.groupby("model").size().min()) if len(eff.samples) else 0
    readings = {"T1.advantage.direction": "mean MoE / mean dense"} | {k: r for k, (r, *_) in claims.ADVANTAGE.items()}
    rows = []
    for cid, reading in readings.items():
        groups = [g for g in eff.groups if g.pair is not None or "paired" not in reading]
        depths = sorted({g.depth for g in groups})
        by_depth = []
        for i, depth in enumerate(depths):
            at = [g for g in groups if g.depth == depth]
            ests = [_group_estimate(eff, g, reading, n, statistics.SEED) for g in at]
            est = (statistics.one_model(ests[0]) if len(ests) == 1 else
                   statistics.hierarchical(ests, REPS, statistics.SEED + i))  # own seed: depths resampled apart
            by_depth.append((depth, at, est))
        if len(by_depth) > 1:
            for depth, at, est in by_depth:
                rows.append(_advantage_row(cid, [g for g in eff.groups if g.depth == depth],
                                           est.relabel(f"{est.over} ({depth}-layer pairs)"),
                                           f"{depth} layers: {label([g.moe[0] for g in at])} vs "
                                           f"{label([g.dense[0] for g in at])}", eff))
        if not by_depth:
            kit = None
        elif len(by_depth) == 1:
            kit = by_depth[0][2]
        else:
            kit = statistics.over_strata([e for *_, e in by_depth], f"depths ({', '.join(map(str, depths))} layers) "
                                         "x seeds x prompts")
        rows.append(_advantage_row(cid, eff.groups, kit, ("pooled over depths: " if len(by_depth) > 1 else "")
                                   + ", ".join(eff.table.model), eff))
    return rows


def _advantage_row(cid: str, groups: Sequence, kit: v.Estimate | None, model: str, eff: Efficiency) -> Row:
    """One advantage row over the depth-matched ``groups`` of its scope (one depth, or all); ``model`` names it."""
    facts = {"model": "all", "matched_groups": len(groups), "paired_groups": sum(g.pair is not None for g in groups)}
    return claims.decide(cid, facts, kit, v.Estimate(0.0), _group_note(eff), model=model)


# ---------------------------------------------------------------------------------------------------- depth
def _stage_share(g: np.ndarray, mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """idx -> sum over prompts idx and the stage's layers of g / sum over prompts idx and all layers."""
    return lambda idx: _div(g[idx][..., mask].sum((-1, -2)), g[idx].sum((-1, -2)))


def _depth_estimates(dp: DepthProfile, model: str) -> dict[str, v.Estimate]:
    g = gain_matrix(dp.layers, model)
    layers = dp.layers[(dp.layers.model == model) & (dp.layers.sample_id == dp.layers.sample_id.min())]
    stage = layers.sort_values("layer").paper_stage.to_numpy()
    n, L = g.shape
    out = {s: boot(_stage_share(g, stage == s), n) for s in summaries.STAGES}
    early, late = _stage_share(g, stage == "early"), _stage_share(g, stage == "late")
    out["late_amplification"] = boot(lambda idx: late(idx) - early(idx), n)
    out["peak"] = boot(lambda idx: ((g[idx].argmax(-1) + 1) / L).mean(-1), n)
    return out


def _partner(dp: DepthProfile, model: str) -> str | None:
    """The registry's partner of ``model`` if it is in the profile, else a dense model of the same depth."""
    registered = replicas.partner(model)
    if registered in dp.facts:
        return registered
    same = [m for m, f in dp.facts.items() if not f["moe"] and f["layers"] == dp.facts[model]["layers"]]
    return same[0] if same and dp.facts[model]["moe"] else None


def depth_rows(dp: DepthProfile) -> list[Row]:
    """Stage shares, late amplification (MoE models) and peak position (every model), seeds pooled, with the
    depth-matched dense partner's value beside them."""
    rows = []
    for names in _spec_groups(list(dp.facts)):
        per_seed = [_depth_estimates(dp, m) for m in names]
        partners = [_partner(dp, m) for m in names]
        controls = [_depth_estimates(dp, p) if p else None for p in partners]
        facts = merged_facts([dp.facts[m] for m in names])
        keys = ["peak"] + (["early", "middle", "late", "late_amplification"] if facts["moe"] else [])
        for key in keys:
            cid = "depth.peak" if key == "peak" else ("depth.late_amplification" if key == "late_amplification"
                                                      else f"depth.stage.{key}")
            control = combine([c[key] for c in controls]) if all(controls) else None
            note = f"control: {', '.join(p for p in partners if p)}" if all(partners) else "no depth-matched partner"
            rows.append(claims.decide(cid, facts, combine([e[key] for e in per_seed]), control, note, label(names)))
    return rows


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
                return boot(recovered(floor, top, mid), len(mid)) if len(mid) else None
            kit = _per_seed(results, estimate)
            control = _per_seed(results, lambda r: mean_of(_config_rr(r, ablation.NEITHER)))
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
    return boot(drop(base, att), len(base)), boot(ctl, len(base))


def _fraction(b: Blocking, task: str, k: int) -> float:
    r = b.ranks[(b.ranks.task == task) & (b.ranks.selection == "attributed") & (b.ranks.k == k)]
    return float(r.fraction.max()) if len(r) else math.nan


def _tasks(results: Sequence[Blocking]) -> list[str]:
    return [t for t in paper.TABLE5.task.unique() if all(t in r.facts.get("task_mrr", {}) for r in results)]


def table5_rows(by_model: Mapping[str, Sequence[Blocking]]) -> list[Row]:
    """Every Table 5 row of a run: each model's (:func:`table5_model_rows`), then the cross-model contrast."""
    return [row for rs in by_model.values() for row in table5_model_rows(rs)] + table5_contrast_rows(by_model)


def table5_model_rows(results: Sequence[Blocking]) -> list[Row]:
    """Table 5 on one model (seeds pooled): the architecture-matched paper model's drops at top-1/5/10 and at the
    paper's share of pairs, attributed vs random under each method, core-sensitive vs tolerant, OLMoE's '76%'."""
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
        kit, ctl = combine([p[0] for p in pairs]), combine([p[1] for p in pairs])
        return kit, ctl, paired(kit, ctl)

    def size(task, k, note):
        """A size row's (kit, random control, note): the relative drop the paper reports is decided; beside it, the
        absolute MRR drop and its paired difference to random (bounded where a ratio to a low baseline is not)."""
        kit, ctl, _ = drops(task, "reroute", k)
        a, _, d = drops(task, "reroute", k, absolute=True)
        return kit, ctl, "; ".join(x for x in (note, _absolute_note(a, d)) if x)

    def ran(k):
        return "" if not moe or (k in set(results[0].ranks.k)) else f"top-{k} was not blocked in this run"

    for task in _tasks(results):
        for k in (1, 5, 10):
            kit, ctl, note = size(task, k, ran(k))
            rows.append(claims.decide(claims.table5_id(pm, task, k), facts_for(task, k), kit, ctl, note, label(names)))
        share_k = min(r.paper_ks.get(pm, 0) for r in results) if moe else 0
        kit, ctl, note = size(task, share_k, f"k = {share_k} of {f0['pairs']} pairs") if share_k else \
            (None, None, f"k = {share_k} of {f0['pairs']} pairs")
        rows.append(claims.decide(claims.table5_id(pm, task, "share"), facts_for(task, share_k) | {"share_k": share_k},
                                  kit, ctl, note, label(names)))
        for method in ("reroute", "mask", "zero"):
            kit, ctl, diff = drops(task, method, 10, absolute=True)
            rows.append(claims.decide(f"T5.attributed_vs_random.{method}.{task}", facts_for(task, 10), kit, ctl,
                                      ran(10), label(names), diff))
        kit, ctl, diff = drops(task, "reroute", 10, absolute=True, against="frequency")
        rows.append(claims.decide(f"T5.attributed_vs_frequency.{task}", facts_for(task, 10), kit, ctl, ran(10),
                                  label(names), diff))
    rows.append(_core_vs_tolerant(results, names, moe))
    for cid in ("T5.olmoe76.drop_of", "T5.olmoe76.falls_to"):
        task = "country_capital"
        note = "on country_capital, the task the abstract's number belongs to"
        kit, ctl, note = size(task, 10, note) if task in _tasks(results) else (None, None, note)
        f = facts_for(task, 10) if task in _tasks(results) else merged_facts([r.facts for r in results])
        rows.append(claims.decide(cid, f, kit, ctl, note, label(names)))
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


def stratified(statistic: Callable[[dict[str, np.ndarray]], float], sizes: Mapping[str, int]) -> v.Estimate:
    """Percentile bootstrap resampling prompts within each task (``sizes``: prompts per task)."""
    return statistics.stratified(statistic, sizes, REPS, statistics.SEED)


def _core_vs_tolerant(results: Sequence[Blocking], names: list[str], moe: bool) -> Row:
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
                         f"{', '.join(tolerant)}", model=label(names))


def table5_contrast_rows(by_model: Mapping[str, Sequence[Blocking]]) -> list[Row]:
    """'A deep MoE with a shared expert is robust, a shallow one without degrades': the shallowest unshared MoE
    against the deepest shared one in the run (mean drop@10 over the tasks, seeds pooled)."""
    moe = {m: rs for m, rs in by_model.items() if rs[0].facts["moe"]}
    shared = [m for m, rs in moe.items() if rs[0].facts["shared_expert"]]
    unshared = [m for m, rs in moe.items() if not rs[0].facts["shared_expert"]]
    deep = max(shared, key=lambda m: moe[m][0].facts["layers"], default=None)
    shallow = min(unshared, key=lambda m: moe[m][0].facts["layers"], default=None)
    contrast = bool(deep and shallow and moe[deep][0].facts["layers"] > moe[shallow][0].facts["layers"])
    ran = all(10 in set(r.ranks.k) for rs in moe.values() for r in rs)
    facts: dict[str, Any] = {"model": "all", "contrast": contrast}
    kit = None
    if contrast and ran:
        a, b = moe[shallow], moe[deep]
        present = [t for t in _tasks(list(a) + list(b))]
        facts |= {"baseline_mrr": float(np.mean([r.facts["baseline_mrr"] for r in list(a) + list(b)])),
                  "fraction": float(np.mean([_fraction(r, t, 10) for r in list(a) + list(b) for t in present]))}
        ests = []
        for ra, rb in zip(a, b):
            fa, fb = _family_drop(ra, present), _family_drop(rb, present)
            sizes = {t: len(_rr(ra, t, "original")[0]) for t in present}
            ests.append(stratified(lambda idx: fa(idx) - fb(idx), sizes))
        kit = combine(ests)
    note = f"shallow unshared: {shallow}; deep shared: {deep}" if contrast else "needs both kinds of MoE in the run"
    return [claims.decide("T5.shared_depth_robust", facts, kit, note=note, model=", ".join(by_model))]


# ---------------------------------------------------------------------------------------------------- heads <-> experts
def _r_estimates(co: Coordination, y: str) -> tuple[v.Estimate, v.Estimate, float]:
    """(mean within-layer r with its bootstrap interval, the shuffled null, permutation p-value)."""
    xm, ym, _ = coordination.matrices(co.pairs, "x", y)
    if xm.shape[1] == 0:
        return v.Estimate(math.nan), v.Estimate(math.nan), math.nan
    kit = boot(lambda idx: coordination.mean_r(xm[idx], ym[idx]), len(xm))
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
    return boot(lambda idx: np.mean([ratio_drop(b, a)(idx) for b, a in arrays], axis=0), len(co.prompts))


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
            est[cid] = combine([p[0] for p in parts]), combine([p[1] for p in parts])
            if y == "y":
                est["HE.p"] = v.Estimate(max(p[2] for p in parts)), est[cid][1]
                note["HE.p"] = "largest p over the seeds" if len(parts) > 1 else ""
        p = [r.prompts for r in results]
        est["HE.inhibit_gate"] = (combine([boot(ratio_drop(q.gate_clean.to_numpy(), q.gate_inhibited.to_numpy()), len(q))
                                           for q in p]), combine([_random_drop(r, False) for r in results]))
        est["HE.inhibit_mrr"] = (combine([boot(ratio_drop(q.rr_clean.to_numpy(), q.rr_inhibited.to_numpy()), len(q))
                                          for q in p]), combine([_random_drop(r, True) for r in results]))
        rec = {c: combine([boot(recovered(q.rr_inhibited.to_numpy(), q.rr_clean.to_numpy(), q[c].to_numpy()), len(q))
                           for q in p]) for c in ("rr_forced", "rr_mediated")}
        est["HE.forcing"] = rec["rr_forced"], rec["rr_mediated"]
        est["HE.mediation"] = rec["rr_mediated"], None
        if all(len(r.ig) for r in results):
            est["HE.ig_share"] = (combine([mean_of(_prompt_shares(r, "share_key")) for r in results]),
                                  combine([mean_of(_prompt_shares(r, "share_random")) for r in results]))
            est["HE.ig_share_all"] = combine([mean_of(_prompt_shares(r, "share_all")) for r in results]), None
            err = max(float(r.ig.completeness.max()) for r in results)
            note["HE.ig_share"] = note["HE.ig_share_all"] = f"IG completeness error at most {err:.2g}"
    ids = ["HE.r", "HE.r_lagged", "HE.p", "HE.inhibit_gate", "HE.inhibit_mrr", "HE.forcing", "HE.mediation",
           "HE.ig_share", "HE.ig_share_all"]
    return [claims.decide(cid, facts, *est.get(cid, (None, None)), note=note.get(cid, ""), model=label(names),
                          diff=paired(*est[cid]) if cid in PAIRED_CONTROLS and cid in est else None) for cid in ids]


#: head-expert claims whose control is measured on the same prompts (random heads, the mediated routing)
PAIRED_CONTROLS = ("HE.inhibit_gate", "HE.inhibit_mrr", "HE.forcing", "HE.ig_share")


def within_layer_table(co: Coordination) -> pd.DataFrame:
    """Per MoE layer: the within-layer r of X (head gain) vs Y (expert gain) with its bootstrap interval."""
    xm, ym, layers = coordination.matrices(co.pairs, "x", "y")
    rows = []
    for j, layer in enumerate(layers):
        e = boot(lambda idx: coordination.within_layer_r(xm[idx][..., [j]], ym[idx][..., [j]])[..., 0], len(xm))
        rows.append({"layer": layer, "r": e.value, "low": e.low, "high": e.high, "n": len(xm)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- basic / refinement
def eta_squared(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Share of the variance of ``values`` explained by ``groups`` along the last axis:
    sum_g n_g (mean_g - mean)^2 / sum (x - mean)^2 (NaN when the values are constant)."""
    mean = values.mean(-1, keepdims=True)
    between = np.zeros(values.shape[:-1])
    for g in np.unique(groups):
        member = groups == g
        n = member.sum(-1)
        mean_g = _div((values * member).sum(-1), n)
        between = between + np.where(n > 0, n * (np.nan_to_num(mean_g) - mean[..., 0]) ** 2, 0.0)
    return _div(between, ((values - mean) ** 2).sum(-1))


def _roles_estimates(nr: NeuronRoles) -> dict[str, v.Estimate]:
    g = nr.gains
    wide = g.pivot_table(index="sample_id", columns="stage", values=["shared", "routed"], fill_value=0.0)
    shared_pos, routed_pos = wide["shared"].clip(lower=0), wide["routed"].clip(lower=0)

    def share(stage, idx):
        if stage not in shared_pos:
            return np.full(np.shape(idx)[:-1], np.nan)
        s, r = shared_pos[stage].to_numpy()[idx].sum(-1), routed_pos[stage].to_numpy()[idx].sum(-1)
        return _div(s, s + r)

    totals = g.groupby("sample_id").agg(shared=("shared", "sum"), routed=("routed", "sum"), family=("family", "first"))
    fam, sh, ro = totals.family.to_numpy(), totals.shared.to_numpy(), totals.routed.to_numpy()
    n = len(totals)
    return {"BR.shared_early": boot(lambda idx: share("early", idx) - share("late", idx), n),
            "BR.routed_refine": boot(lambda idx: eta_squared(ro[idx], fam[idx]) - eta_squared(sh[idx], fam[idx]), n)}


def roles_rows(results: Sequence[NeuronRoles]) -> list[Row]:
    """Shared early / routed late, and routed experts as domain refiners (seeds pooled)."""
    names = [r.facts["model"] for r in results]
    facts = merged_facts([r.facts for r in results])
    ests = [_roles_estimates(r) for r in results] if facts["shared_expert"] else None
    return [claims.decide(cid, facts, combine([e[cid] for e in ests]) if ests else None, model=label(names))
            for cid in ("BR.shared_early", "BR.routed_refine")]


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
    return [claims.decide(f"T1.{paper_model}.hit@10", facts, combine([boot(lambda i: (ranks[i] <= 10).mean(-1),
                                                                            len(ranks))]), model=facts["model"]),
            claims.decide(f"T1.{paper_model}.mrr", facts, combine([boot(lambda i: (1 / ranks[i]).mean(-1),
                                                                        len(ranks))]), model=facts["model"])]
