"""The DES-MoE claims (:mod:`.claims`) decided on a cached grid: the precondition facts from the grid and the model,
the estimates from :mod:`.findings`, and :func:`moescope.verdicts.decide`, one function per notebook.

Every interval is a 95% t-interval over seeds (:func:`moescope.verdicts.over_seeds`) or, for the premise, a
bootstrap over sequences (:mod:`moescope.statistics`); no statistic beyond those is needed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from torch import nn

from .. import arch
from .. import verdicts as v
from ..verdicts import Estimate
from . import findings
from .protocol import DESMOE_READINGS
from .claims import EXPERT_ONLY, LEARNED, METHODS, MIN_FORGETTING, NAMES, SINGLE, Facts, get
from .tables import Grid


def _model_facts(model: Mapping[str, Any]) -> Facts:
    """The model's name (for the report), whether it is an MoE, its routed experts and shared expert."""
    return Facts(name=model.get("name", ""), moe=bool(model.get("moe_layers")), routed_experts=model.get("experts"),
                 shared_expert=model.get("shared_expert"))


def single_domain_missing(grid: Grid, method: str) -> str:
    """'' when the grid holds ``method`` trained on each N_max domain alone for every seed; else which runs are
    missing and why no command makes them."""
    domains = grid.top_domains()
    seeds = sorted(int(s) for s in grid.at().seed.unique())
    single = grid.single(method)
    have = {(d, int(s)) for d, s in zip(single.domains, single.seed)}
    missing = [(d, s) for d in domains for s in seeds if (d, s) not in have]
    if not missing:
        return ""
    return (f"the grid holds {len(domains) * len(seeds) - len(missing)} of the {len(domains) * len(seeds)} "
            f"single-domain runs of {NAMES[method]} it needs ({method} at its chosen rate on each of "
            f"{', '.join(domains)} alone x seeds {', '.join(map(str, seeds))}); `python -m moescope desmoe-grid` "
            "makes them (stage 4, resumable)")


def routing_recorded(grid: Grid) -> str:
    """'' when every chosen run at N_max records the routing of its test tokens (:mod:`.routing_eval`); else how
    many do not."""
    top = grid.at()
    have = top["unhooked_agreement"].notna() if "unhooked_agreement" in top else pd.Series(False, index=top.index)
    if len(top) and bool(have.all()):
        return ""
    return (f"{int((~have).sum())} of the grid's {len(top)} runs at N_max record no routing of their test tokens (made "
            "before protocol version 2); `python -m moescope desmoe-grid` re-makes them")


def sparse_expert_gradients(network: nn.Module) -> str:
    """'' when the routed experts' gradients are per expert (a frozen expert costs no backward compute); else the
    reason: each MoE layer keeps all its experts in fused tensors [E, ...], and autograd computes the whole tensor's
    gradient, every expert's (dense expert gradients), so freezing experts saves no time."""
    fused = [(p.index, name, tuple(t.shape)) for p in arch.layers(network) if p.is_moe
             for name, t in p.experts.named_parameters(recurse=False) if t.shape[0] == arch.num_experts(network)]
    if not fused:
        return ""
    index, name, shape = fused[0]
    return (f"the routed experts are fused ({len(fused)} tensors such as layer {index}'s {name} {shape}): backward "
            "computes every expert's gradient (dense expert gradients), so frozen experts save no compute and "
            "wall-clock cannot show the paper's saving")


def facts(grid: Grid, model: Mapping[str, Any], network: nn.Module | None = None) -> Facts:
    """What the preconditions read, computed from the grid, the model description (``arch.describe``) and, for
    the gradient facts, the network itself. ``m_learned`` = mean over seeds of test - base test at N_max."""
    top = grid.at()
    ns = sorted(grid.chosen().n_domains.unique())
    out = _model_facts(model) | Facts(seeds=int(top.groupby("method").seed.nunique().min()),
                                      n_span=int(ns[-1] - ns[0]) if ns else 0,
                                      base_general=float(top.base_general.mean()))
    for method, g in top.groupby("method"):
        if method in METHODS:
            out |= {f"{method}_test": float(g.test.mean()), f"{method}_forgetting": float(g.forgetting.mean()),
                    f"{method}_val": float(g.val.mean()), f"{method}_learned": float((g.test - g.base_test).mean())}
    out |= {f"single_{m}_missing": single_domain_missing(grid, m) for m in SINGLE}
    out |= {f"single_{m}_learned": findings.single_gain(grid, m) for m in SINGLE}
    out["routing_recorded"] = routing_recorded(grid)
    if network is not None:
        out["sparse_expert_gradients"] = sparse_expert_gradients(network)
    out["law_and_code"] = {"law", "code"} <= set(grid.top_domains())
    return out


def _expert_facts(grid: Grid, on: Grid, experts: list[str]) -> Facts:
    """The facts of the rows on the expert-learnable domains ``experts`` (``on`` = ``grid.on_domains(experts)``):
    whether there are any, and each method's test - base test there at N_max (mean over seeds)."""
    out = Facts(expert_domains="" if experts else expert_domains_missing(grid))
    for method, g in on.at().groupby("method"):
        if method in METHODS:
            out[f"{method}_expert_learned"] = float((g.test - g.base_test).mean())
    return out


def expert_domains_missing(grid: Grid) -> str:
    """Why no N_max domain counts as expert-learnable: the single-domain ESFT-Gate gains, or that there are none."""
    gains = findings.domain_gains(grid).query("method == 'esft_gate' and setting == 'single'")
    if gains.empty:
        return "no single-domain runs of ESFT-Gate (`python -m moescope desmoe-grid` makes them, stage 4)"
    shown = ", ".join(f"{r.domain} {r.gain:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in gains.itertuples())
    return f"ESFT-Gate trained on one domain alone learns none clearly (test - base test: {shown}; needs >= {LEARNED:g})"


def reads_desmoe(claim_id: str) -> bool:
    """Whether the claim's statistic reads DES-MoE's runs (its preconditions include DES-MoE's floor)."""
    return any("desmoe_learned" in p.keys for p in get(claim_id).preconditions)


def under_readings(decide: Callable[..., list[dict]], grid: Grid, *args: Any) -> list[dict]:
    """``decide(grid, *args)``'s rows (the paper's reading), then for each other reading of
    :data:`.protocol.DESMOE_READINGS` that the grid holds, the rows of the claims that read DES-MoE decided again,
    by the same rules, on ``grid.as_desmoe(method)``, each row naming its reading."""
    rows = decide(grid, *args)
    for reading, method in DESMOE_READINGS.items():
        if reading != v.PAPER_READING and method in grid.rates:
            again = decide(grid.as_desmoe(method), *args)
            rows += [r | {"reading": reading} for r in again if reads_desmoe(r["claim"])]
    return rows


def _row(claim_id: str, f: Facts, kit: Estimate | None, control: Estimate | None = None, note: str = "") -> dict:
    return v.decide(get(claim_id), f, kit, control, note, model=f.get("name", ""))


def _score(grid: Grid, method: str, column: str) -> Estimate:
    g = grid.at().query("method == @method")
    return v.over_seeds(g[column].tolist()) if len(g) and column in g else Estimate(math.nan)


# ---------------------------------------------------------------- deciding, one function per notebook

def premise_rows(prem: findings.Premise, model: Mapping[str, Any]) -> list[dict]:
    """The ESFT premise on the base model, against its two nulls."""
    f = _model_facts(model) | Facts(sequences=min(len(t) for t in prem.token.values()))
    share, uniform = findings.experts_needed_share(prem)
    overlap, shuffled = findings.domain_overlap(prem)
    return [_row("esft_few_experts", f, share, uniform),  # the row's note: one model, interval over sequences
            _row("esft_distinct_experts", f, overlap, shuffled)]


def table_rows(grid: Grid, model: Mapping[str, Any], share: float = 0.9) -> list[dict]:
    """Tables 1-2 (DES-MoE vs each mixed baseline, also on the expert-learnable domains alone against the
    expert-only baselines, and vs the single-domain runs), FFT's forgetting, DES-MoE = base, and the matched view."""
    f = facts(grid, model)
    rows = []
    for b in ("fft", "lora", "esft_gate", "esft_token"):
        rows.append(_row(f"t1_domain_vs_{b}", f, findings.paired_difference(grid, "desmoe", b, "test"),
                         _score(grid, b, "test")))
        rows.append(_row(f"t2_general_vs_{b}", f, findings.paired_difference(grid, "desmoe", b, "general"),
                         _score(grid, b, "general")))
    experts = findings.expert_domains(grid, LEARNED)
    on = grid.on_domains(experts)
    on_facts = f | _expert_facts(grid, on, experts)
    for b in EXPERT_ONLY:
        rows.append(_row(f"t1_expert_domains_vs_{b}", on_facts, findings.paired_difference(on, "desmoe", b, "test"),
                         _score(on, b, "test"), note=f"expert-learnable domains: {', '.join(experts) or 'none'}"))
    rows.append(_row("fft_mixed_forgets", f, findings.forgetting_at(grid, "fft")))
    rows.append(_row("t2_desmoe_equals_base", f, findings.forgetting_at(grid, "desmoe").negated()))
    level = findings.matched_level(grid, ("desmoe", "fft"), share)
    diff = findings.matched_difference(grid, "desmoe", "fft", level)
    rows.append(_row("pareto_matched_vs_fft", f | Facts(matched_reached=diff.finite and level > 0), diff,
                     note=f"matched validation level {level:.3f}"))
    for cid, method, reference in (("t1_desmoe_vs_single_esft_gate", "desmoe", "esft_gate"),
                                   ("t1_desmoe_vs_single_fft", "desmoe", "fft"),
                                   ("t1_mixed_fft_below_single", "fft", "fft")):
        rows.append(_row(cid, f, findings.mixed_vs_single(grid, method, reference),
                         findings.single_level(grid, reference)))
    return rows


def forgetting_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """Fig. 2: each method's drop N_min -> N_max, the drops against full FT's (differences of slopes), full FT's
    steepening, DES-MoE's preserved share, and the absolute reading at N_max."""
    f = facts(grid, model)
    lo, hi = findings.span(grid)
    drop = lambda m: findings.drop_between(grid, m, lo, hi)  # noqa: E731
    return [_row("fig2_fft_drop", f, drop("fft")),
            _row("fig2_lora_drop", f, drop("lora")),
            _row("fig2_esft_drop", f, drop("esft_gate")),
            _row("fig2_lora_less_than_fft", f, findings.drop_difference(grid, "lora"), drop("fft")),
            _row("fig2_esft_less_than_fft", f, findings.drop_difference(grid, "esft_gate"), drop("fft")),
            _row("fig2_fft_steepens", f, findings.steepening(grid, "fft")),
            _row("fig2_desmoe_flat", f, drop("desmoe")),
            _row("fig2_preserved_98", f, findings.preserved(grid, "desmoe")),
            _row("fig2_reduction_absolute", f, findings.reduction_absolute(grid, least=MIN_FORGETTING / 2),
                 findings.forgetting_at(grid, "fft")),
            _row("fig2_reduction_slope", f, findings.drop_difference(grid, "desmoe"), drop("fft"))]


def convergence_rows(grid: Grid, model: Mapping[str, Any], network: nn.Module, target: float = 0.95) -> list[dict]:
    """Fig. 3: steps and wall-clock to FFT's level (``network``: the base model, for the expert-gradient fact),
    and mixed vs six single-domain ESFT runs."""
    f = facts(grid, model, network)
    conv = findings.convergence(grid, target)
    return [_row("fig3_steps", f, findings.speedup(conv, "steps")),
            _row("fig3_wallclock", f, findings.speedup(conv, "seconds"),
                 note="training seconds of the cached runs, all timed in one grid run on one machine"),
            _row("fig3_mixed_vs_single_esft", f,
                 findings.mixed_vs_single(grid, "esft_gate", "esft_gate", "train_seconds", how="sum"),
                 findings.single_level(grid, "esft_gate", "train_seconds", how="sum"),
                 note="training seconds of the cached runs, all timed in one grid run on one machine")]


def ablation_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """Table 3 (both halves of ESFT + ALR, its routing errors), the Law-Code expert overlap in the DGES masks and in
    the routing of the test tokens, and the routing's domain information against its two nulls (extension)."""
    f = facts(grid, model)
    diff = lambda m, col: findings.paired_difference(grid, "desmoe", m, col)  # noqa: E731
    with_dges, without = findings.expert_overlap(grid, "desmoe"), findings.expert_overlap(grid, "desmoe_no_dges")
    alr = lambda col: findings.paired_difference(grid, "esft_gate_alr", "esft_gate", col)  # noqa: E731
    pair = findings.pair_column(grid, "law", "code")
    return [_row("t3_no_alr_general", f, diff("desmoe_no_alr", "general"), _score(grid, "desmoe_no_alr", "general")),
            _row("t3_no_alr_domain", f, diff("desmoe_no_alr", "test"), _score(grid, "desmoe_no_alr", "test")),
            _row("t3_no_dges_general", f, diff("desmoe_no_dges", "general"), _score(grid, "desmoe_no_dges", "general")),
            _row("t3_no_dges_domain", f, diff("desmoe_no_dges", "test"), _score(grid, "desmoe_no_dges", "test")),
            _row("t3_esft_alr", f, alr("general"), _score(grid, "esft_gate", "general")),
            _row("t3_esft_alr_domain", f, alr("test"), _score(grid, "esft_gate", "test")),
            _row("t3_esft_alr_routing_errors", f, alr("routing_errors"), _score(grid, "esft_gate", "routing_errors"),
                 note=_assignment_note(grid)),
            _row("t3_overlap", f, findings.overlap_difference(grid), without,
                 note=f"overlap with DGES {with_dges.value:.2f}, without {without.value:.2f}"),
            _row("t3_routing_overlap", f, findings.paired_difference(grid, "desmoe", "desmoe_no_dges", pair),
                 _score(grid, "desmoe_no_dges", pair)),
            *[_row(f"ext_routing_beyond_{null}", f, findings.beyond_null(grid, "desmoe", "nmi", null),
                   _score(grid, "desmoe", f"{null}_nmi")) for null in ("shuffled", "hidden")]]


def _assignment_note(grid: Grid) -> str:
    """The other reading of '+37% routing-assignment errors': the relative change of the domain-assignment error
    (1 - cross-fitted assignment accuracy) from ESFT-Gate to ESFT-Gate + ALR."""
    top = grid.at()
    if "routing_accuracy" not in top:
        return ""
    err = {m: 1 - top.query("method == @m").routing_accuracy.mean() for m in ("esft_gate", "esft_gate_alr")}
    change = err["esft_gate_alr"] / err["esft_gate"] - 1 if err["esft_gate"] > 0 else math.nan
    return (f"domain-assignment error (1 - assignment accuracy) {err['esft_gate']:.3f} -> {err['esft_gate_alr']:.3f} "
            f"({change:+.0%})")


def sequential_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """The sequential extension: earlier-domain forgetting, DES-MoE - FFT, paired by seed."""
    table = findings.sequential_forgetting(grid)
    f = _model_facts(model) | Facts(seeds=int(table.groupby("method").seed.nunique().min()) if len(table) else 0)
    if table.empty:
        return [_row("ext_sequential", f, None)]
    wide = table.pivot(index="seed", columns="method", values="earlier_domain_forgetting")
    diff = (wide.get("desmoe") - wide.get("fft")).dropna() if {"desmoe", "fft"} <= set(wide.columns) else []
    return [_row("ext_sequential", f, v.over_seeds(list(diff)) if len(diff) else None)]
