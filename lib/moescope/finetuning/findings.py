"""The DES-MoE paper's analyses, one job per function, on a cached grid (:mod:`.tables`) or a base model.

Every function returns plain numbers or a tidy DataFrame; :mod:`.claims` turns them into verdicts. Intervals are
95% t-intervals over seeds (``verdicts.over_seeds``) unless stated; differences between methods are paired by
seed (the same seed gives the same data order and initial adapters).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import arch
from ..statistics import Estimate, one_model, percentiles
from ..verdicts import over_seeds
from . import esft, paper
from .base import Base
from .batches import encode
from .domains import DOMAINS, GENERAL_PARTS
from .evaluate import forgetting_reduction
from .protocol import DESMOE_READINGS
from .tables import ROUTING_METRICS, Grid

TOKEN_P, GATE_P = 0.2, 0.1


# ---------------------------------------------------------------- the ESFT premise (on the base model)

@dataclass(frozen=True)
class Premise:
    """Per-sequence ESFT token scores of each domain on the base model ({domain: [n_seq, L, E]})."""

    token: dict[str, np.ndarray]
    gate: dict[str, np.ndarray]
    top_k: int


def premise_scores(base: Base, names: Sequence[str] = DOMAINS, batch_size: int = 64) -> Premise:
    """Score each domain's training prompts with the base model's router (ESFT relevance, per sequence)."""
    model = base.load()
    token, gate = {}, {}
    for d in names:
        data = encode(base.tokenizer, base.corpus.domains[d].train)
        batches = [(data.input_ids[i:i + batch_size], data.attention_mask[i:i + batch_size])
                   for i in range(0, len(data), batch_size)]
        seq = esft.sequence_scores(model, batches)
        token[d], gate[d] = seq.token.numpy(), seq.gate.numpy()
    return Premise(token, gate, arch.top_k(model))


def _needed_share(scores: np.ndarray, p: float) -> float:
    """Mean over layers of (experts needed to reach p) / E for mean scores [L, E]."""
    needed = esft.experts_needed(torch.as_tensor(scores), p).float()
    return float(needed.mean()) / scores.shape[-1]


def _uniform_routing(token: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The null of no specialisation: each sequence's token-score mass spread over random experts.

    A sequence's token scores sum to 1 per layer; under uniform routing every expert gets 1/E in expectation. To keep
    the finite-sample noise of the real data, each (sequence, layer) row is replaced by a random permutation of its
    own values (same concentration within a sequence, no agreement across sequences)."""
    return rng.permuted(token, axis=-1)


def experts_needed_share(prem: Premise, p: float = TOKEN_P, reps: int = 200, seed: int = 0) -> tuple[Estimate, Estimate]:
    """(kit, uniform-routing null): share of routed experts the token score needs to reach ``p``, averaged over
    domains and layers, with bootstrap intervals over sequences (the null: over random re-routings)."""
    rng = np.random.default_rng(seed)
    domains = list(prem.token)

    def share(sample: dict[str, np.ndarray]) -> float:
        return float(np.mean([_needed_share(sample[d].mean(0), p) for d in domains]))

    value = share(prem.token)
    draws = [share({d: t[rng.integers(0, len(t), len(t))] for d, t in prem.token.items()}) for _ in range(reps)]
    null = [share({d: _uniform_routing(t, rng) for d, t in prem.token.items()}) for _ in range(reps)]
    n = sum(len(t) for t in prem.token.values())
    kit = one_model(Estimate(value, *percentiles(draws), n, "sequences"))  # the base model's routing
    control = Estimate(float(np.mean(null)), *percentiles(null), reps, "random re-routings")
    return kit, control


def _mean_overlap(token: dict[str, np.ndarray], p: float) -> float:
    masks = {d: esft.select_top_p(torch.as_tensor(t.mean(0)), p) for d, t in token.items()}
    names = list(masks)
    pairs = [esft.jaccard(masks[a], masks[b]) for i, a in enumerate(names) for b in names[i + 1:]]
    return float(np.mean(pairs))


def domain_overlap(prem: Premise, p: float = TOKEN_P, reps: int = 200, seed: int = 0) -> tuple[Estimate, Estimate]:
    """(kit, shuffled-domain null): mean pairwise Jaccard overlap of the domains' token-score selections.

    Kit interval: bootstrap over sequences within each domain. Null: the domain labels of all sequences shuffled
    (domain sizes kept), which keeps the routing but removes any link between a domain and its experts."""
    rng = np.random.default_rng(seed)
    names = list(prem.token)
    sizes = [len(prem.token[d]) for d in names]
    pooled = np.concatenate([prem.token[d] for d in names])
    value = _mean_overlap(prem.token, p)
    draws = [_mean_overlap({d: t[rng.integers(0, len(t), len(t))] for d, t in prem.token.items()}, p)
             for _ in range(reps)]
    null = []
    for _ in range(reps):
        order = rng.permutation(len(pooled))
        cuts = np.cumsum([0] + sizes)
        null.append(_mean_overlap({d: pooled[order[cuts[i]:cuts[i + 1]]] for i, d in enumerate(names)}, p))
    kit = one_model(Estimate(value, *percentiles(draws), len(pooled), "sequences"))  # the base model's routing
    control = Estimate(float(np.mean(null)), *percentiles(null), reps, "label shuffles")
    return kit, control


def premise_table(prem: Premise) -> pd.DataFrame:
    """Per domain: experts per layer needed (token p=0.2, gate p=0.1) and their share of the routed experts."""
    rows = []
    for d in prem.token:
        tok = esft.experts_needed(torch.as_tensor(prem.token[d].mean(0)), TOKEN_P).float().mean().item()
        gate = esft.experts_needed(torch.as_tensor(prem.gate[d].mean(0)), GATE_P).float().mean().item()
        n_experts = prem.token[d].shape[-1]
        rows.append({"domain": d, "token_p0.2": tok, "gate_p0.1": gate, "token_share": tok / n_experts,
                     "gate_share": gate / n_experts, "sequences": len(prem.token[d])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- Tables 1-2 analogue

def _estimate(values: Sequence[float]) -> Estimate:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return over_seeds(vals) if vals else Estimate(math.nan)


def method_table(grid: Grid, n: int | None = None) -> pd.DataFrame:
    """Per method at N domains (default the largest), chosen rate: mean and seed interval of the test domain score,
    the general score, retention and forgetting, plus the chosen rate and the mean chosen checkpoint."""
    frame = grid.at(n)
    rows = []
    for method, g in frame.groupby("method", sort=False):
        row = {"method": method, "lr": grid.rates[method], "seeds": len(g), "best_step": g.best_step.mean()}
        for col in ("test", "general", "retention", "forgetting"):
            est = _estimate(g[col].tolist())
            row |= {col: est.value, f"{col}_low": est.low, f"{col}_high": est.high}
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(grid: Grid, method: str, reference: str, column: str, n: int | None = None) -> Estimate:
    """method - reference on ``column`` at N domains, paired by seed, with a t-interval over seeds (nan when the
    grid lacks either method or the column)."""
    top = grid.at(n)
    if column not in top:
        return Estimate(math.nan)
    frame = top.set_index(["method", "seed"])[column]
    if method not in frame.index.get_level_values(0) or reference not in frame.index.get_level_values(0):
        return Estimate(math.nan)
    diff = (frame.loc[method] - frame.loc[reference]).dropna()
    return _estimate(diff.tolist())


def sweep_table(grid: Grid) -> pd.DataFrame:
    """Every learning rate tried per method (sweep runs): best validation score, and whether it was chosen."""
    sweep_n = int(grid.runs.n_domains.max())
    frame = grid.runs[(grid.runs.n_domains == sweep_n) & (grid.runs.order == grid.runs.order.min())]
    out = frame.groupby(["method", "lr"], sort=False)[["val", "test", "general"]].mean().reset_index()
    out["chosen"] = out.lr == out.method.map(grid.rates)
    rates = frame.groupby("method").lr.agg(["min", "max"])
    out["at_edge"] = out.chosen & ((out.lr == out.method.map(rates["min"])) | (out.lr == out.method.map(rates["max"])))
    return out


# ---------------------------------------------------------------- Fig. 2: forgetting vs number of domains

def forgetting_curve(grid: Grid) -> pd.DataFrame:
    """General score, forgetting and test domain score per method and N (mean over orders and seeds, with the
    seed interval of the general score)."""
    rows = []
    for (method, n), g in grid.chosen().groupby(["method", "n_domains"]):
        per_seed = g.groupby("seed")[["general", "forgetting", "test"]].mean()
        est = _estimate(per_seed.general.tolist())
        rows.append({"method": method, "n_domains": n, "general": est.value, "general_low": est.low,
                     "general_high": est.high, "forgetting": per_seed.forgetting.mean(), "test": per_seed.test.mean()})
    return pd.DataFrame(rows)


def general_parts(grid: Grid) -> pd.DataFrame:
    """The general score split into its parts (:data:`.domains.GENERAL_PARTS`: ``facts``, the general facts,
    ``text``, the copy task on the domain vocabulary, and ``text_general``, the copy task on the facts' objects)
    per method and N: the base model's part, the chosen checkpoint's (mean over orders, then seeds) and the part's
    forgetting, base - chosen."""
    rows = []
    base = grid.history[grid.history.step == 0]
    for (method, n), g in grid.chosen().groupby(["method", "n_domains"]):
        row = {"method": method, "n_domains": n}
        for part in GENERAL_PARTS:
            col = f"general_{part}"
            before = float(base[base.id.isin(g.id)][col].mean())
            after = float(g.groupby("seed")[col].mean().mean())
            row |= {f"{part}_base": before, part: after, f"{part}_forgetting": before - after}
        rows.append(row)
    return pd.DataFrame(rows)


def _per_seed(grid: Grid, method: str, n: int, column: str) -> pd.Series:
    frame = grid.chosen()
    g = frame[(frame.method == method) & (frame.n_domains == n)]
    return g.groupby("seed")[column].mean()


def per_seed_drop(grid: Grid, method: str, n_low: int, n_high: int) -> pd.Series:
    """general(N=n_low) - general(N=n_high) per seed (orders averaged)."""
    return (_per_seed(grid, method, n_low, "general") - _per_seed(grid, method, n_high, "general")).dropna()


def forgetting_at(grid: Grid, method: str, n: int | None = None) -> Estimate:
    """Forgetting F = general_base - general of ``method`` at N (default largest), over seeds."""
    n = n or int(grid.runs.n_domains.max())
    return _estimate(_per_seed(grid, method, n, "forgetting").tolist())


def drop_between(grid: Grid, method: str, n_low: int, n_high: int) -> Estimate:
    """general(N=n_low) - general(N=n_high) of ``method`` (orders averaged), over seeds."""
    return _estimate(per_seed_drop(grid, method, n_low, n_high).tolist())


def _single_per_seed(grid: Grid, method: str, column: str, how: str = "mean") -> pd.Series:
    """Per seed: the mean (or sum) over the N_max domains of ``method``'s single-domain runs' ``column``; seeds
    missing a domain are left out."""
    domains = set(grid.top_domains())
    single = grid.single(method)
    complete = {s for s, have in single.groupby("seed").domains.agg(set).items() if domains <= have}
    kept = single.loc[single.seed.isin(complete).to_numpy(dtype=bool)]
    return kept.groupby("seed")[column].agg(how)


def single_level(grid: Grid, method: str, column: str = "test", how: str = "mean") -> Estimate:
    """``method`` trained on each N_max domain alone: the mean (or sum) over domains of its ``column``, over seeds."""
    return _estimate(_single_per_seed(grid, method, column, how).tolist())


def single_gain(grid: Grid, method: str) -> float:
    """The mean over ``method``'s single-domain runs of test - base test (nan without such runs)."""
    single = grid.single(method)
    return float((single.test - single.base_test).mean()) if len(single) else math.nan


def domain_gains(grid: Grid) -> pd.DataFrame:
    """Per N_max domain, method and setting ('single': trained on that domain alone; 'mixed': the run on all N_max
    domains), the domain's test - base test at the chosen checkpoint, mean and 95% t-interval over seeds
    (``gain``, ``low``, ``high``, ``seeds``)."""
    base, top, rows = grid.base_scores(), grid.at(), []
    singles = pd.concat([grid.single(m) for m in grid.rates], ignore_index=True)
    for domain in grid.top_domains():
        col = f"test_{domain}"
        for setting, frame in (("single", singles[singles.domains == domain]), ("mixed", top)):
            if col not in frame:
                continue
            gain = frame[col] - base[col].reindex(frame.id).to_numpy()
            for method, g in gain.groupby(frame.method, sort=False):
                est = _estimate(g.tolist())
                rows.append({"domain": domain, "method": method, "setting": setting, "gain": est.value,
                             "low": est.low, "high": est.high, "seeds": int(g.notna().sum())})
    return pd.DataFrame(rows, columns=["domain", "method", "setting", "gain", "low", "high", "seeds"])


def expert_domains(grid: Grid, floor: float, method: str = "esft_gate") -> list[str]:
    """The N_max domains that expert-only training learns: those on which ``method`` trained alone (single-domain
    runs) gains at least ``floor`` (test - base test) at the lower end of its 95% interval over seeds."""
    gains = domain_gains(grid)
    own = gains[(gains.method == method) & (gains.setting == "single") & (gains.low >= floor)]
    return sorted(own.domain)


def mixed_vs_single(grid: Grid, method: str, reference: str, column: str = "test", how: str = "mean") -> Estimate:
    """Per seed: ``column`` of ``method``'s mixed run at N_max minus the mean (``how='sum'``: the sum) over the N_max
    domains of ``reference``'s single-domain runs (each on its own domain), paired by seed, over seeds."""
    top = grid.at()
    mixed = _per_seed(grid, method, int(top.n_domains.max()), column) if len(top) else pd.Series(dtype=float)
    single = _single_per_seed(grid, reference, column, how)
    return _estimate((mixed - single).dropna().tolist())


def drop_table(grid: Grid) -> pd.DataFrame:
    """Per method of the paper's Fig. 2 that the grid ran: the kit's general(N_min) - general(N_max) over seeds
    (``drop``, ``low``, ``high``; shares) beside the paper's drop (``paper``, points on its 0-100 scale)."""
    lo, hi = span(grid)
    rows, ran = [], set(grid.chosen().method)
    for key, method in paper.FIG2_KIT.items():
        if method in ran:
            e = drop_between(grid, method, lo, hi)
            rows.append({"method": method, "drop": e.value, "low": e.low, "high": e.high, "paper": paper.FIG2_DROP[key]})
    return pd.DataFrame(rows)


def reduction_absolute(grid: Grid, method: str = "desmoe", reference: str = "fft", least: float = 0.0) -> Estimate:
    """First reading of "x% less forgetting": 1 - F_method(N_max) / F_reference(N_max), per seed (guarded by
    :func:`.evaluate.forgetting_reduction`: undefined where the reference forgot at most ``least``)."""
    n = int(grid.runs.n_domains.max())
    f_m, f_r = _per_seed(grid, method, n, "forgetting"), _per_seed(grid, reference, n, "forgetting")
    values = [forgetting_reduction(f_m[s], f_r[s], least) for s in f_m.index.intersection(f_r.index)]
    return _guarded(values)


def drop_difference(grid: Grid, method: str, reference: str = "fft") -> Estimate:
    """The slope reading of "x% less forgetting" as a difference of slopes: drop_method(N_min -> N_max) -
    drop_reference(N_min -> N_max), general(N_min) - general(N_max) per seed (orders averaged), paired by seed, over
    seeds. Negative: ``method`` falls less. Defined on every seed (no ratio, so no guard on a small reference
    drop)."""
    lo, hi = span(grid)
    d_m, d_r = per_seed_drop(grid, method, lo, hi), per_seed_drop(grid, reference, lo, hi)
    return _estimate((d_m - d_r).dropna().tolist())


def steepening(grid: Grid, method: str = "fft") -> Estimate:
    """Per seed: (g(N_mid) - g(N_max)) / (N_max - N_mid) - (g(N_min) - g(N_mid)) / (N_mid - N_min), the per-domain
    drop of the general score g (orders averaged) after N_mid minus before it, N_mid the middle N of the grid; over
    seeds. Positive: the decline steepens. Undefined (nan) with fewer than three N."""
    ns = sorted(int(n) for n in grid.chosen().n_domains.unique())
    if len(ns) < 3:
        return Estimate(math.nan)
    lo, mid, hi = ns[0], ns[len(ns) // 2], ns[-1]
    late = per_seed_drop(grid, method, mid, hi) / (hi - mid)
    early = per_seed_drop(grid, method, lo, mid) / (mid - lo)
    return _estimate((late - early).dropna().tolist())


def preserved(grid: Grid, method: str = "desmoe") -> Estimate:
    """general(N_max) / general(N_min) of ``method`` per seed (orders averaged), over seeds."""
    lo, hi = span(grid)
    ratio = _per_seed(grid, method, hi, "general") / _per_seed(grid, method, lo, "general")
    return _estimate(ratio.dropna().tolist())


def span(grid: Grid) -> tuple[int, int]:
    """(N_min, N_max) of the chosen-rate runs."""
    ns = sorted(int(n) for n in grid.chosen().n_domains.unique())
    return ns[0], ns[-1]


def _guarded(values: list[float]) -> Estimate:
    """Over seeds; undefined (nan) if the guard made any seed's ratio undefined."""
    if not values or any(not math.isfinite(v) for v in values):
        return Estimate(math.nan, n=len(values), over="seeds")
    return over_seeds(values)


# ---------------------------------------------------------------- Fig. 3: convergence

def convergence(grid: Grid, target: float = 0.95, reference: str = "fft") -> pd.DataFrame:
    """Per chosen-rate run at N_max: the first step, and the training seconds, at which the validation domain score
    reaches ``target`` x the reference method's mean chosen-checkpoint validation score. Runs that never reach it
    are censored at their last step (and seconds) plus one evaluation interval."""
    n = int(grid.runs.n_domains.max())
    goal = target * grid.at(n).query("method == @reference").val.mean()
    hist = grid.history.merge(grid.at(n)[["id"]], on="id")
    rows = []
    for (method, seed), h in hist.groupby(["method", "seed"]):
        hit = h[h.val >= goal]
        interval = int(h.step.diff().dropna().max()) if len(h) > 1 else 0
        per_step = h.train_seconds.max() / max(h.step.max(), 1)
        reached = len(hit) > 0
        rows.append({"method": method, "seed": seed, "goal": goal, "reached": reached,
                     "steps": int(hit.step.min()) if reached else int(h.step.max()) + interval,
                     "seconds": float(hit.train_seconds.min()) if reached else float(h.train_seconds.max()) + interval * per_step})
    return pd.DataFrame(rows)


def speedup(conv: pd.DataFrame, column: str, method: str = "desmoe", reference: str = "fft") -> Estimate:
    """1 - cost_method / cost_reference per seed (``column`` = 'steps' or 'seconds'), over seeds."""
    frame = conv.set_index(["method", "seed"])[column]
    if method not in frame.index.get_level_values(0) or reference not in frame.index.get_level_values(0):
        return Estimate(math.nan)
    ratio = 1 - frame.loc[method] / frame.loc[reference]
    return _estimate(ratio.dropna().tolist())


# ---------------------------------------------------------------- Table 3 ablations and the expert-domain map

def overlap_by_seed(grid: Grid, method: str, a: str = "law", b: str = "code", snapshot: str = "T") -> pd.Series:
    """Per seed: Jaccard overlap of the DGES masks M[a] and M[b] (all MoE layers together) at ``snapshot`` in
    ``method``'s chosen-rate run at N_max. Without DGES the masks are still computed from the same routing
    statistics, only not applied."""
    out = {}
    for run_id, seed in grid.at().query("method == @method")[["id", "seed"]].itertuples(index=False):
        summary = grid.raw[run_id]["method"]
        names = summary.get("domains", [])
        if a in names and b in names:
            masks = torch.tensor(summary["snapshots"][snapshot]["masks"], dtype=torch.bool)
            out[seed] = esft.jaccard(masks[names.index(a)], masks[names.index(b)])
    return pd.Series(out, dtype=float)


def expert_overlap(grid: Grid, method: str, a: str = "law", b: str = "code") -> Estimate:
    """:func:`overlap_by_seed` over seeds."""
    return _estimate(overlap_by_seed(grid, method, a, b).tolist())


def overlap_difference(grid: Grid, method: str = "desmoe", reference: str = "desmoe_no_dges") -> Estimate:
    """Law-Code overlap of ``method`` minus ``reference``, paired by seed."""
    diff = (overlap_by_seed(grid, method) - overlap_by_seed(grid, reference)).dropna()
    return _estimate(diff.tolist())


def affinity_maps(grid: Grid, method: str = "desmoe", seed: int = 0) -> dict[str, np.ndarray]:
    """{snapshot: A [domains, layers, experts]} of one chosen-rate run at N_max (t1 = 0.2T, t2 = 0.7T, T)."""
    run_id = grid.at().query("method == @method and seed == @seed").id.iloc[0]
    summary = grid.raw[run_id]["method"]
    return {k: np.array(v["affinity"]) for k, v in summary["snapshots"].items()} | {"domains": summary["domains"]}


# ---------------------------------------------------------------- Pareto view: forgetting at matched learning

def pareto_points(grid: Grid) -> pd.DataFrame:
    """Every evaluated checkpoint of every run at N_max (all rates): test domain score against general score."""
    n = int(grid.runs.n_domains.max())
    return grid.history[grid.history.n_domains == n].copy()


def matched_level(grid: Grid, methods: Sequence[str], share: float = 0.9) -> float:
    """A learning level every run of ``methods`` reaches: ``share`` x the lowest chosen-checkpoint validation score
    over those methods and their seeds (chosen rates, N_max)."""
    frame = grid.at()
    return share * float(frame[frame.method.isin(list(methods))].val.min())


def general_at_level(grid: Grid, method: str, level: float) -> pd.Series:
    """Per seed: the general score at the first checkpoint (chosen-rate run at N_max) whose validation score
    reaches ``level`` (nan when none does)."""
    hist = grid.history.merge(grid.at().query("method == @method")[["id"]], on="id")
    out = {}
    for seed, h in hist.groupby("seed"):
        hit = h[h.val >= level].sort_values("step")
        out[seed] = float(hit.general.iloc[0]) if len(hit) else math.nan
    return pd.Series(out, dtype=float)


def matched_difference(grid: Grid, method: str, reference: str, level: float) -> Estimate:
    """general(method) - general(reference) at the matched learning level, paired by seed."""
    diff = (general_at_level(grid, method, level) - general_at_level(grid, reference, level))
    if diff.isna().any():
        return Estimate(math.nan)
    return _estimate(diff.tolist())


# ---------------------------------------------------------------- sequential extension

def sequential_forgetting(grid: Grid) -> pd.DataFrame:
    """Per method and seed: mean drop of the earlier domains' test scores from right after they were trained to
    the end of the sequence, and the general score at the end."""
    seq = grid.sequential
    if seq.empty:
        return pd.DataFrame(columns=["method", "seed", "earlier_domain_forgetting", "general_after"])
    last = seq.stage.max()
    rows = []
    for (method, seed), g in seq.groupby(["method", "seed"]):
        when = g[g.trained == g.domain].set_index("domain").acc
        end = g[(g.stage == last) & (g.domain != "general") & (g.domain != g.trained)].set_index("domain").acc
        rows.append({"method": method, "seed": seed, "earlier_domain_forgetting": float((when[end.index] - end).mean()),
                     "general_after": float(g[(g.stage == last) & (g.domain == "general")].acc.iloc[0])})
    return pd.DataFrame(rows)


def readings_table(grid: Grid) -> pd.DataFrame:
    """DES-MoE under each reading the grid holds, at N_max (means over seeds): reading, method, chosen rate, the
    backbone's rate, test, test - base test, general, forgetting, and the general score's parts."""
    rows, top = [], grid.at()
    for reading, method in DESMOE_READINGS.items():
        g = top[top.method == method]
        if len(g):
            rows.append({"reading": reading or "paper (eq. 11, t1 = 0.2)", "method": method, "lr": grid.rates[method],
                         "backbone_lr": g.backbone_lr.fillna(grid.rates[method]).iloc[0],
                         "test": g.test.mean(), "learned": (g.test - g.base_test).mean(), "general": g.general.mean(),
                         "forgetting": g.forgetting.mean(),
                         **{f"general_{part}": g[f"general_{part}"].mean() for part in GENERAL_PARTS},
                         "seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- routing of the test tokens (per checkpoint)

def routing_table(grid: Grid, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method at N_max (chosen checkpoints, mean over seeds) and routing metric (:data:`.routing_eval.METRICS`):
    the routing's value, its shuffled-label null (mean and 97.5% quantile) and its hidden-state null."""
    frame = grid.at()
    if "routing_nmi" not in frame:
        return pd.DataFrame(columns=["method", "metric", "routing", "shuffled", "shuffled_high", "hidden", "seeds"])
    rows = []
    for method, g in frame.groupby("method", sort=False):
        if methods is not None and method not in methods:
            continue
        for m in ROUTING_METRICS:
            rows.append({"method": method, "metric": m, "routing": g[f"routing_{m}"].mean(),
                         "shuffled": g[f"shuffled_{m}"].mean(), "shuffled_high": g[f"shuffled_{m}_high"].mean(),
                         "hidden": g[f"hidden_{m}"].mean() if f"hidden_{m}" in g else math.nan, "seeds": len(g)})
    return pd.DataFrame(rows)


def pair_column(grid: Grid, a: str, b: str) -> str:
    """The runs' column of the routing Jaccard between domains ``a`` and ``b``: ``jaccard_<a>|<b>`` with the two
    names sorted, as :func:`.routing_eval.routing_report` names its pairs (absent where no routing was recorded)."""
    return "jaccard_" + "|".join(sorted((a, b)))


def beyond_null(grid: Grid, method: str, metric: str = "nmi", null: str = "hidden") -> Estimate:
    """``method``'s routing metric minus its ``null`` ('hidden' or 'shuffled') on the same tokens, at N_max, per
    seed (each run's own null), with a t-interval over seeds."""
    g = grid.at().query("method == @method")
    if f"{null}_{metric}" not in g or not len(g):
        return Estimate(math.nan)
    return _estimate((g[f"routing_{metric}"] - g[f"{null}_{metric}"]).dropna().tolist())
