"""Every DES-MoE claim (and the ESFT premise it rests on) as a :class:`moescope.verdicts.Claim`, and the functions
that decide them on a cached grid. Rules and preconditions are fixed here, before any grid is read.

Statistics are on the kit's 0-1 exact-match scale; differences between methods are paired by seed and carry a
95% t-interval over seeds. Verdicts follow the four outcomes of :mod:`moescope.verdicts` (the same functions as
the attribution paper): the whole interval on the paper's side is reproduced, wholly on the other side not
reproduced, straddling inconclusive. Gates on a baseline (a ceiling on the baseline's test score, a minimum of
its forgetting) are ``null_only``: they turn only an inconclusive result into not testable.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

import pandas as pd

from .. import verdicts as v
from ..verdicts import Claim, Estimate, Rule
from . import findings, paper
from .tables import Grid

BASELINES = ("fft", "lora", "esft_gate", "esft_token")
NAMES = {"fft": "full FT", "lora": "LoRA", "esft_gate": "ESFT-Gate", "esft_token": "ESFT-Token", "desmoe": "DES-MoE"}
#: a baseline at or above this test score leaves no room for DES-MoE to beat it
CEILING = 0.98
#: forgetting below this (2 general-set points) is too small for "forgets less" to be testable
MIN_FORGETTING = 0.02
#: "equal" / "flat" means within one general-set point
TOLERANCE = 0.01
#: "x% less forgetting" is tested as a reduction of at least this share
REDUCTION = 0.5


#: What the preconditions read, one definition (keys not listed fail the registry at import); computed by
#: :func:`facts` (per-method scores for every method of the grid).
Facts = TypedDict("Facts", {
    "name": str, "moe": bool, "routed_experts": int, "shared_expert": bool, "seeds": int, "n_span": int,
    "sequences": int, "base_general": float, "fft_forgetting_min": float, "fft_drop": float, "law_and_code": bool,
    "matched_reached": bool,
    **{f"{m}_{what}": float for m in (*BASELINES, "desmoe") for what in ("test", "forgetting", "val")},
}, total=False)

SEEDS = v.minimum("seeds", 2, "seeds per method (needed for an interval)")
MOE = v.flag("moe", "routed experts")


SEQUENCES = v.minimum("sequences", 20, "scored sequences per domain")


def _claim(id: str, where: str, statement: str, paper_value: str, statistic: str, rule: Rule, control: str,
           *pre: v.Precondition, source: str = paper.DES_MOE) -> Claim:
    """A claim decided over seeds: it needs routed experts and at least two seeds, plus ``pre``."""
    return Claim(id, source, where, statement, paper_value, statistic, rule, control, (MOE, SEEDS) + pre)


def _premise(id: str, where: str, statement: str, paper_value: str, statistic: str, control: str) -> Claim:
    """A claim about the base model's routing, with intervals over the scored sequences."""
    return Claim(id, paper.ESFT, where, statement, paper_value, statistic, v.below_control(), control,
                 (MOE, v.minimum("routed_experts", 8, "routed experts per layer"), SEQUENCES))


# ---------------------------------------------------------------- the registry

PREMISE = (
    _premise("esft_few_experts", "ESFT §4 / Fig. 3", "a task's tokens concentrate on a few routed experts per layer",
             "token score p=0.2 reached with 5-15% of 64 experts (e.g. law 5.9, translation 3.2 per layer)",
             "share of routed experts needed to reach token score p=0.2, base model (mean over domains, layers)",
             "uniform routing: each sequence's token scores permuted across experts"),
    _premise("esft_distinct_experts", "ESFT Fig. 3", "different tasks select different experts",
             "low overlap between the tasks' expert sets (no single number)",
             "mean pairwise Jaccard overlap of the domains' token-score selections (p=0.2), base model",
             "shuffled domain labels (same sequences, no domain-expert link)"),
)


def _vs(baseline: str) -> tuple[Claim, Claim]:
    name = NAMES[baseline]
    return (
        _claim(f"t1_domain_vs_{baseline}", "Table 1", f"DES-MoE learns the mixed domains better than {name}",
               f"{paper.TABLE1_DOWNSTREAM['desmoe']} vs {paper.TABLE1_DOWNSTREAM[baseline]}",
               f"test exact match at N=6, DES-MoE - {name}", v.above(0.0), f"{name} (mixed, own chosen rate)",
               v.maximum(f"{baseline}_test", CEILING, f"{name}'s test score (room above it)").gate()),
        _claim(f"t2_general_vs_{baseline}", "Table 2", f"DES-MoE keeps more general ability than {name}",
               f"{paper.TABLE2_GENERAL['desmoe']} vs {paper.TABLE2_GENERAL[baseline]}",
               f"general exact match at N=6, DES-MoE - {name}", v.above(0.0), f"{name} (mixed, own chosen rate)",
               v.minimum(f"{baseline}_forgetting", MIN_FORGETTING, f"{name}'s forgetting at N=6").gate()),
    )


TABLE = tuple(c for b in BASELINES for c in _vs(b)) + (
    _claim("fft_mixed_forgets", "Tables 1-2", "mixed-domain full fine-tuning forgets general ability",
           f"{paper.TABLE2_GENERAL['vanilla']} -> {paper.TABLE2_GENERAL['fft']}",
           "forgetting F = general(base) - general(FFT) at N=6", v.above(0.0), "the base model (F = 0)"),
    _claim("t2_desmoe_equals_base", "Table 2", "DES-MoE's general score equals the base model's",
           f"{paper.TABLE2_GENERAL['desmoe']} = {paper.TABLE2_GENERAL['vanilla']}",
           "general(DES-MoE) - general(base) at N=6", v.within(0.0, TOLERANCE), "the base model",
           v.minimum("base_general", 0.3, "the base model's general score").gate()),
    _claim("pareto_matched_vs_fft", "Tables 1-2 (matched learning)",
           "at the same domain score DES-MoE keeps more general ability than full FT",
           "higher on both axes (51.6/62.4 vs 46.6/55.5)",
           "general score at the first checkpoint reaching the matched validation level, DES-MoE - FFT",
           v.above(0.0), "full FT at the same validation level",
           v.flag("matched_reached", "a validation level both methods reach in every seed")),
)

FORGETTING = (
    _claim("fig2_fft_drop", "Fig. 2", "full FT's general score falls as domains are added",
           f"{paper.FIG2_GENERAL['fft'][0]} -> {paper.FIG2_GENERAL['fft'][1]} (-{paper.FIG2_DROP['fft']}) from N=2 to 6",
           "general(N=2) - general(N=6), FFT, domain orders averaged", v.above(0.0), "no change (0)",
           v.minimum("n_span", 4, "span of N (N_max - N_min)")),
    _claim("fig2_desmoe_flat", "Fig. 2", "DES-MoE's general score stays flat as domains are added",
           f"{paper.FIG2_GENERAL['desmoe'][0]} -> {paper.FIG2_GENERAL['desmoe'][1]} (-{paper.FIG2_DROP['desmoe']})",
           "general(N=2) - general(N=6), DES-MoE, orders averaged", v.within(0.0, TOLERANCE), "no change (0)",
           v.minimum("n_span", 4, "span of N (N_max - N_min)")),
    _claim("fig2_reduction_absolute", "Fig. 2 / abstract", "DES-MoE forgets 89% less than full FT (reading 1: "
           "forgetting at N=6)", f"{paper.FORGETTING_REDUCTION_TEXT:.0%} (text); "
           f"{paper.FORGETTING_REDUCTION_FIG2:.0%} from Fig. 2", "1 - F_DES(N=6) / F_FFT(N=6) per seed",
           v.at_least(0.5), "full FT's forgetting",
           v.minimum("fft_forgetting", MIN_FORGETTING, "full FT's forgetting at N=6").gate()),
    _claim("fig2_reduction_slope", "Fig. 2", "DES-MoE forgets 89% less than full FT (reading 2: the 2->6 drop)",
           f"{paper.FORGETTING_REDUCTION_FIG2:.0%} = 1 - 0.1/6.2",
           f"{REDUCTION:g} x drop_FFT(2->6) - drop_DES(2->6) per seed (>= 0 iff 1 - drop_DES / drop_FFT >= "
           f"{REDUCTION:g} where FFT drops)", v.at_least(0.0), "full FT's drop",
           v.minimum("fft_drop", MIN_FORGETTING / 2, "full FT's drop from N=2 to 6").gate(),
           v.minimum("n_span", 4, "span of N (N_max - N_min)")),
)

CONVERGENCE = (
    _claim("fig3_steps", "Fig. 3", "DES-MoE reaches full FT's level with less training (steps)",
           f"'68% faster': 1 - 54.0/171.8 = {paper.SPEEDUP:.1%} less wall-clock",
           "1 - steps_DES / steps_FFT to reach 95% of FFT's validation score (censored if never)", v.above(0.0),
           "full FT (0% speed-up)", v.minimum("fft_val", 0.1, "full FT's validation score")),
    _claim("fig3_wallclock", "Fig. 3", "DES-MoE reaches full FT's level in less wall-clock time",
           f"'68% faster': 1 - 54.0/171.8 = {paper.SPEEDUP:.1%}",
           "1 - seconds_DES / seconds_FFT to the same target (training time only)", v.above(0.0),
           "full FT (0% speed-up)", v.minimum("fft_val", 0.1, "full FT's validation score")),
)

def _t3(method: str, other: str, score: str) -> str:
    """Table 3's 'a vs b (b - a)' for ``score`` (downstream or general), from :data:`.paper.TABLE3`."""
    a, b = (paper.TABLE3[m][("downstream", "general").index(score)] for m in (method, other))
    return f"{a} vs {b} ({b - a:+.1f})"


ABLATIONS = (
    _claim("t3_no_alr_general", "Table 3", "removing ALR costs general ability", _t3("desmoe", "desmoe_no_alr", "general"),
           "general at N=6, DES-MoE - w/o ALR", v.above(0.0), "DES-MoE without ALR"),
    _claim("t3_no_alr_domain", "Table 3", "removing ALR costs downstream score", _t3("desmoe", "desmoe_no_alr", "downstream"),
           "test at N=6, DES-MoE - w/o ALR", v.above(0.0), "DES-MoE without ALR"),
    _claim("t3_no_dges_general", "Table 3", "removing DGES costs general ability", _t3("desmoe", "desmoe_no_dges", "general"),
           "general at N=6, DES-MoE - w/o DGES", v.above(0.0), "DES-MoE without DGES"),
    _claim("t3_no_dges_domain", "Table 3", "removing DGES costs downstream score", _t3("desmoe", "desmoe_no_dges", "downstream"),
           "test at N=6, DES-MoE - w/o DGES", v.above(0.0), "DES-MoE without DGES"),
    _claim("t3_esft_alr", "Table 3", "adding ALR to (mixed) ESFT does not help general ability",
           _t3("esft_mixed", "esft_mixed_alr", "general"), "general at N=6, ESFT-Gate + ALR - ESFT-Gate", v.at_most(TOLERANCE),
           "ESFT-Gate (mixed)"),
    _claim("t3_overlap", "Table 3 text", "DGES separates the experts of different domains (Law vs Code)",
           f"overlap {paper.OVERLAP_LAW_CODE['desmoe']} with DGES vs {paper.OVERLAP_LAW_CODE['desmoe_no_dges']} without",
           "Jaccard(M_law, M_code) at T, DES-MoE - w/o DGES", v.below(0.0), "DES-MoE without DGES",
           v.flag("law_and_code", "law and code among the trained domains")),
)

SEQUENTIAL = (
    _claim("ext_sequential", "extension (not in the paper)", "DES-MoE forgets earlier domains less than full FT "
           "when domains arrive one after another", "not claimed (the paper trains domains jointly)",
           "earlier-domain forgetting, DES-MoE - FFT", v.below(0.0), "full FT, same sequence",
           source=f"{paper.DES_MOE}, extension"),
)

REGISTRY: tuple[Claim, ...] = PREMISE + TABLE + FORGETTING + CONVERGENCE + ABLATIONS + SEQUENTIAL
v.check_facts(REGISTRY, Facts)


# ---------------------------------------------------------------- facts (preconditions) from the model and data

def _model_facts(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model's name (for the report) and whether it is an MoE."""
    return {"name": model.get("name", ""), "moe": bool(model.get("moe_layers"))}


def facts(grid: Grid, model: Mapping[str, Any]) -> dict[str, Any]:
    """What the preconditions read, computed from the grid and the model description (``arch.describe``)."""
    top = grid.at()
    ns = sorted(grid.chosen().n_domains.unique())
    out: dict[str, Any] = {**_model_facts(model), "routed_experts": model.get("experts"),
                           "shared_expert": model.get("shared_expert"),
                           "seeds": int(top.groupby("method").seed.nunique().min()),
                           "n_span": int(ns[-1] - ns[0]) if ns else 0,
                           "base_general": float(top.base_general.mean())}
    for method, g in top.groupby("method"):
        out[f"{method}_test"] = float(g.test.mean())
        out[f"{method}_forgetting"] = float(g.forgetting.mean())
        out[f"{method}_val"] = float(g.val.mean())
    if "fft" in set(top.method):
        out["fft_forgetting_min"] = float(top[top.method == "fft"].forgetting.min())
    if len(ns) > 1 and "fft" in set(top.method):
        out["fft_drop"] = float(findings.per_seed_drop(grid, "fft", int(ns[0]), int(ns[-1])).mean())
    domains = set(top.domains.iloc[0].split("+")) if len(top) else set()
    out["law_and_code"] = {"law", "code"} <= domains
    return out


def _row(claim_id: str, f: Mapping[str, Any], kit: Estimate | None, control: Estimate | None = None,
         note: str = "") -> dict:
    claim = next(c for c in REGISTRY if c.id == claim_id)
    return v.decide(claim, f, kit, control, note, model=f.get("name", ""))


def _score(grid: Grid, method: str, column: str) -> Estimate:
    g = grid.at().query("method == @method")
    return v.over_seeds(g[column].tolist()) if len(g) else Estimate(math.nan)


# ---------------------------------------------------------------- deciding, one function per notebook

def premise_rows(prem: findings.Premise, model: Mapping[str, Any]) -> list[dict]:
    """The ESFT premise on the base model, against its two nulls."""
    f = {**_model_facts(model), "routed_experts": model.get("experts"),
         "sequences": min(len(t) for t in prem.token.values())}
    share, uniform = findings.experts_needed_share(prem)
    overlap, shuffled = findings.domain_overlap(prem)
    return [_row("esft_few_experts", f, share, uniform),  # the row's note: one model, interval over sequences
            _row("esft_distinct_experts", f, overlap, shuffled)]


def table_rows(grid: Grid, model: Mapping[str, Any], share: float = 0.9) -> list[dict]:
    """Tables 1-2 (DES-MoE vs each mixed baseline), FFT's forgetting, DES-MoE = base, and the matched view."""
    f = facts(grid, model)
    rows = []
    for b in BASELINES:
        rows.append(_row(f"t1_domain_vs_{b}", f, findings.paired_difference(grid, "desmoe", b, "test"),
                         _score(grid, b, "test")))
        rows.append(_row(f"t2_general_vs_{b}", f, findings.paired_difference(grid, "desmoe", b, "general"),
                         _score(grid, b, "general")))
    rows.append(_row("fft_mixed_forgets", f, findings.forgetting_at(grid, "fft")))
    minus_f = findings.forgetting_at(grid, "desmoe")
    rows.append(_row("t2_desmoe_equals_base", f, Estimate(-minus_f.value, -minus_f.high, -minus_f.low, minus_f.n,
                                                         minus_f.over)))
    level = findings.matched_level(grid, ("desmoe", "fft"), share)
    diff = findings.matched_difference(grid, "desmoe", "fft", level)
    rows.append(_row("pareto_matched_vs_fft", f | {"matched_reached": diff.finite and level > 0}, diff,
                     note=f"matched validation level {level:.3f}"))
    return rows


def forgetting_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """Fig. 2 under both readings (absolute at N_max, and the N_min -> N_max drop)."""
    f = facts(grid, model)
    ns = sorted(grid.chosen().n_domains.unique())
    lo, hi = int(ns[0]), int(ns[-1])
    return [_row("fig2_fft_drop", f, findings.drop_between(grid, "fft", lo, hi)),
            _row("fig2_desmoe_flat", f, findings.drop_between(grid, "desmoe", lo, hi)),
            _row("fig2_reduction_absolute", f, findings.reduction_absolute(grid, least=MIN_FORGETTING / 2),
                 findings.forgetting_at(grid, "fft")),
            _row("fig2_reduction_slope", f, findings.reduction_margin(grid, REDUCTION),
                 findings.drop_between(grid, "fft", lo, hi),
                 note=f"reduction 1 - drop_DES / drop_FFT: {findings.reduction_slope(grid).value:.3g}")]


def convergence_rows(grid: Grid, model: Mapping[str, Any], target: float = 0.95) -> list[dict]:
    """Fig. 3: steps and wall-clock to FFT's level."""
    f = facts(grid, model)
    conv = findings.convergence(grid, target)
    note = "training seconds measured on a shared, loaded CPU; fused expert tensors compute full gradients"
    return [_row("fig3_steps", f, findings.speedup(conv, "steps")),
            _row("fig3_wallclock", f, findings.speedup(conv, "seconds"), note=note)]


def ablation_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """Table 3 and the Law-Code expert overlap."""
    f = facts(grid, model)
    diff = lambda m, col: findings.paired_difference(grid, "desmoe", m, col)  # noqa: E731
    with_dges, without = findings.expert_overlap(grid, "desmoe"), findings.expert_overlap(grid, "desmoe_no_dges")
    overlap = findings.overlap_difference(grid)
    return [_row("t3_no_alr_general", f, diff("desmoe_no_alr", "general"), _score(grid, "desmoe_no_alr", "general")),
            _row("t3_no_alr_domain", f, diff("desmoe_no_alr", "test"), _score(grid, "desmoe_no_alr", "test")),
            _row("t3_no_dges_general", f, diff("desmoe_no_dges", "general"), _score(grid, "desmoe_no_dges", "general")),
            _row("t3_no_dges_domain", f, diff("desmoe_no_dges", "test"), _score(grid, "desmoe_no_dges", "test")),
            _row("t3_esft_alr", f, findings.paired_difference(grid, "esft_gate_alr", "esft_gate", "general"),
                 _score(grid, "esft_gate", "general")),
            _row("t3_overlap", f, overlap, without,
                 note=f"overlap with DGES {with_dges.value:.2f}, without {without.value:.2f}")]


def sequential_rows(grid: Grid, model: Mapping[str, Any]) -> list[dict]:
    """The sequential extension: earlier-domain forgetting, DES-MoE - FFT, paired by seed."""
    table = findings.sequential_forgetting(grid)
    f = {**_model_facts(model), "seeds": int(table.groupby("method").seed.nunique().min()) if len(table) else 0}
    if table.empty:
        return [_row("ext_sequential", f, None)]
    wide = table.pivot(index="seed", columns="method", values="earlier_domain_forgetting")
    diff = (wide.get("desmoe") - wide.get("fft")).dropna() if {"desmoe", "fft"} <= set(wide.columns) else []
    kit = v.over_seeds(list(diff)) if len(diff) else None
    return [_row("ext_sequential", f, kit)]


def summary(rows: list[dict]) -> pd.DataFrame:
    """The rows as :func:`moescope.verdicts.show` prints them (the same table as the attribution notebooks)."""
    return v.show(rows)
