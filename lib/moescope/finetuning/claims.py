"""Every DES-MoE claim (and the ESFT premise it rests on) as data: id, where the paper says it, the paper's value
(from :mod:`.paper`, spelled once), the statistic the kit computes, the decision rule and the control fixed before
any grid is read, and the preconditions. :mod:`.evidence` computes the statistics from the cached runs and decides
with :func:`moescope.verdicts.decide`.

Statistics are on the kit's 0-1 exact-match scale; differences between methods are paired by seed and carry a
95% t-interval over seeds (orders averaged within a seed). The four outcomes are those of :mod:`moescope.verdicts`.

Preconditions of two kinds:

- structural: routed experts, two seeds, and the **floor**: every method a comparison reads must have learned its
  domains, test - base test >= :data:`LEARNED` at N_max (mean over seeds). A method that learned nothing forgets
  nothing and trivially "wins" or "loses"; such a row is not testable, whatever its interval says. Claims that need
  runs the grid lacks (single-domain runs, recorded routing of evaluation tokens) or a model property (sparse expert
  gradients) name what is missing.
- gates on a baseline (``null_only``: a ceiling on its test score, a minimum of its forgetting), which turn only an
  inconclusive result into not testable.

Facts read by the preconditions: :data:`Facts` (computed by :func:`.evidence.facts`); every precondition's key is
checked against it when the registry is built.
"""
from __future__ import annotations

from typing import TypedDict

import pandas as pd

from .. import verdicts as v
from ..verdicts import Claim, Rule
from . import paper

BASELINES = ("fft", "lora", "esft_gate", "esft_token")
#: every method of the grid the claims read
METHODS = (*BASELINES, "desmoe", "desmoe_no_alr", "desmoe_no_dges", "esft_gate_alr", "frozen_router")
NAMES = {"fft": "full FT", "lora": "LoRA", "esft_gate": "ESFT-Gate", "esft_token": "ESFT-Token", "desmoe": "DES-MoE",
         "desmoe_no_alr": "DES-MoE w/o ALR", "desmoe_no_dges": "DES-MoE w/o DGES", "esft_gate_alr": "ESFT-Gate + ALR",
         "frozen_router": "frozen-router FT", "desmoe_caption": "DES-MoE, phase I trains experts",
         "desmoe_split_lr": "DES-MoE, backbone at FT's rate", "desmoe_short_warmup": "DES-MoE, t1 = 0.1",
         "desmoe_no_warmup": "DES-MoE, t1 = 0"}
#: the methods whose single-domain runs the single-vs-mixed claims read
SINGLE = ("fft", "esft_gate")
#: the floor: a method learned its domains iff test - base test >= this at N_max (5 exact-match points)
LEARNED = 0.05
#: a baseline at or above this test score leaves no room for DES-MoE to beat it
CEILING = 0.98
#: forgetting below this (2 general-set points) is too small for "forgets less" to be testable
MIN_FORGETTING = 0.02
#: "equal" / "flat" / "does not help" means within one general-set point
TOLERANCE = 0.01
#: "x% less forgetting" (reading 1, absolute) is tested as a reduction of at least this share
REDUCTION = 0.5


#: What the preconditions read, one definition (keys not listed fail the registry at import). Per method m:
#: ``m_test``, ``m_forgetting``, ``m_val`` (means over seeds at N_max) and ``m_learned`` (test - base test);
#: ``m_expert_learned``: m's test - base test at N_max on the expert-learnable domains only; ``expert_domains``: ''
#: when some N_max domain is expert-learnable (:func:`.findings.expert_domains`), else why none is;
#: ``single_m_missing``: '' when the grid holds m's single-domain runs, else which runs are missing;
#: ``single_m_learned``: the mean over m's single-domain runs of test - base test (each on its own domain).
Facts = TypedDict("Facts", {
    "name": str, "moe": bool, "routed_experts": int, "shared_expert": bool, "seeds": int, "n_span": int,
    "sequences": int, "base_general": float, "law_and_code": bool, "matched_reached": bool,
    "sparse_expert_gradients": str, "routing_recorded": str, "expert_domains": str,
    **{f"{m}_{what}": float for m in METHODS for what in ("test", "forgetting", "val", "learned", "expert_learned")},
    **{f"single_{m}_{what}": t for m in SINGLE for what, t in (("missing", str), ("learned", float))},
}, total=False)

SEEDS = v.minimum("seeds", 2, "seeds per method (needed for an interval)")
MOE = v.flag("moe", "routed experts")
SEQUENCES = v.minimum("sequences", 20, "scored sequences per domain")
SPAN = v.minimum("n_span", 4, "span of N (N_max - N_min)")


def learned(method: str) -> v.Precondition:
    """The floor: ``method``'s test - base test at N_max is at least :data:`LEARNED` (structural)."""
    return v.minimum(f"{method}_learned", LEARNED, f"{NAMES[method]}'s domain gain (test - base test at N_max)")


def present(key: str, what: str) -> v.Precondition:
    """facts[key] == '' (the runs or property are there); else facts[key] is the computed reason."""
    return v.Precondition(what, lambda f: None if f.get(key) == "" else (f.get(key) or f"{key} is unknown"),
                          keys=(key,))


def _claim(id: str, where: str, statement: str, paper_value: str, statistic: str, rule: Rule, control: str,
           methods: tuple[str, ...], *pre: v.Precondition, source: str = paper.DES_MOE) -> Claim:
    """A claim decided over seeds: routed experts, two seeds, the floor of every method in ``methods``, ``pre``."""
    return Claim(id, source, where, statement, paper_value, statistic, rule, control,
                 (MOE, SEEDS, *map(learned, methods), *pre))


def _premise(id: str, where: str, statement: str, paper_value: str, statistic: str, control: str) -> Claim:
    """A claim about the base model's routing, with intervals over the scored sequences."""
    return Claim(id, paper.ESFT, where, statement, paper_value, statistic, v.below_control(), control,
                 (MOE, v.minimum("routed_experts", 8, "routed experts per layer"), SEQUENCES))


# ---------------------------------------------------------------- the registry

_LOW, _HIGH = paper.ESFT_SHARE_RANGE
PREMISE = (
    _premise("esft_few_experts", "ESFT §4 / Fig. 3", "a task's tokens concentrate on a few routed experts per layer",
             f"token score p=0.2 reached with {_LOW:.0%}-{_HIGH:.0%} of 64 experts (per layer: "
             + ", ".join(f"{d} {n:g}" for d, n in paper.ESFT_EXPERTS_PER_LAYER.items()) + ")",
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
               ("desmoe", baseline),
               v.maximum(f"{baseline}_test", CEILING, f"{name}'s test score (room above it)").gate()),
        _claim(f"t2_general_vs_{baseline}", "Table 2", f"DES-MoE keeps more general ability than {name}",
               f"{paper.TABLE2_GENERAL['desmoe']} vs {paper.TABLE2_GENERAL[baseline]}",
               f"general exact match at N=6, DES-MoE - {name}", v.above(0.0), f"{name} (mixed, own chosen rate)",
               ("desmoe", baseline),
               v.minimum(f"{baseline}_forgetting", MIN_FORGETTING, f"{name}'s forgetting at N=6").gate()),
    )


#: the expert-only baselines, also compared on the domains that expert-only training can learn
EXPERT_ONLY = ("esft_gate", "esft_token")


def _on_expert_domains(baseline: str) -> Claim:
    """Table 1's domain comparison restricted to the expert-learnable domains (those ESFT-Gate trained on each
    alone learns, :func:`.findings.expert_domains`), so that an expert-only baseline is not judged on skills only
    attention can learn; both methods must have learned those domains (test - base test >= :data:`LEARNED`)."""
    name = NAMES[baseline]
    return _claim(f"t1_expert_domains_vs_{baseline}", "Table 1 (expert-learnable domains)",
                  f"DES-MoE learns the domains that experts alone can learn better than {name}",
                  f"{paper.TABLE1_DOWNSTREAM['desmoe']} vs {paper.TABLE1_DOWNSTREAM[baseline]} (all domains)",
                  f"test exact match at N=6 on the expert-learnable domains (ESFT-Gate trained on the domain alone "
                  f"gains >= {LEARNED:g} at the lower end of its 95% interval), DES-MoE - {name}", v.above(0.0),
                  f"{name} (mixed, own chosen rate)", ("desmoe",),
                  present("expert_domains", "a domain that expert-only training learns"),
                  *(v.minimum(f"{m}_expert_learned", LEARNED, f"{NAMES[m]}'s gain on the expert-learnable domains")
                    for m in ("desmoe", baseline)))


def _single(id: str, where: str, statement: str, paper_value: str, statistic: str, rule: Rule, control: str,
            methods: tuple[str, ...], single: str, floor: bool = True) -> Claim:
    """A claim that reads ``single``'s single-domain runs (one model per domain); with ``floor``, those runs must
    have learned their domains (test - base test at least :data:`LEARNED`), else the row is not testable."""
    needs = [present(f"single_{single}_missing", f"single-domain runs of {NAMES[single]}")]
    if floor:
        needs.append(v.minimum(f"single_{single}_learned", LEARNED,
                               f"{NAMES[single]}'s single-domain gain (test - base test, each on its own domain)"))
    return _claim(id, where, statement, paper_value, statistic, rule, control, methods, *needs)


_D, _S = paper.TABLE1_DOWNSTREAM, paper.SINGLE_DOWNSTREAM
TABLE = tuple(c for b in BASELINES for c in _vs(b)) + tuple(map(_on_expert_domains, EXPERT_ONLY)) + (
    _claim("fft_mixed_forgets", "Tables 1-2", "mixed-domain full fine-tuning forgets general ability",
           f"{paper.TABLE2_GENERAL['vanilla']} -> {paper.TABLE2_GENERAL['fft']}",
           "forgetting F = general(base) - general(FFT) at N=6", v.above(0.0), "the base model (F = 0)", ("fft",)),
    _claim("t2_desmoe_equals_base", "Table 2", "DES-MoE's general score equals the base model's",
           f"{paper.TABLE2_GENERAL['desmoe']} = {paper.TABLE2_GENERAL['vanilla']}",
           "general(DES-MoE) - general(base) at N=6", v.within(0.0, TOLERANCE), "the base model", ("desmoe",),
           v.minimum("base_general", 0.3, "the base model's general score").gate()),
    _claim("pareto_matched_vs_fft", "Tables 1-2 (matched learning)",
           "at the same domain score DES-MoE keeps more general ability than full FT",
           f"higher on both axes ({_D['desmoe']}/{paper.TABLE2_GENERAL['desmoe']} vs "
           f"{_D['fft']}/{paper.TABLE2_GENERAL['fft']})",
           "general score at the first checkpoint reaching the matched validation level, DES-MoE - FFT",
           v.above(0.0), "full FT at the same validation level", ("desmoe", "fft"),
           v.flag("matched_reached", "a validation level both methods reach in every seed")),
    _single("t1_desmoe_vs_single_esft_gate", "Table 1 / abstract",
            "mixed DES-MoE reaches single-domain ESFT-Gate's domain score",
            f"{_D['desmoe']} vs {_S['esft_gate']}", "test at N=6, DES-MoE (mixed) - mean over the domains of "
            "ESFT-Gate trained on that domain alone", v.above(0.0), "ESFT-Gate, one model per domain",
            ("desmoe", "esft_gate"), "esft_gate"),
    _single("t1_desmoe_vs_single_fft", "Table 1", "mixed DES-MoE reaches single-domain full FT's domain score",
            f"{_D['desmoe']} vs {_S['fft']}", "test at N=6, DES-MoE (mixed) - mean over the domains of full FT "
            "trained on that domain alone", v.above(0.0), "full FT, one model per domain", ("desmoe", "fft"), "fft"),
    _single("t1_mixed_fft_below_single", "Table 1", "mixing the domains costs full FT domain score",
            f"{_D['fft']} (mixed) vs {_S['fft']} (single)", "test at N=6, full FT mixed - mean over the domains of "
            "full FT trained on that domain alone", v.below(0.0), "full FT, one model per domain", ("fft",), "fft"),
)

_DROP = paper.FIG2_DROP
FORGETTING = (
    _claim("fig2_fft_drop", "Fig. 2", "full FT's general score falls as domains are added",
           f"{paper.FIG2_GENERAL['fft'][0]} -> {paper.FIG2_GENERAL['fft'][1]} (-{_DROP['fft']}) from N=2 to 6",
           "general(N=2) - general(N=6), FFT, domain orders averaged", v.above(0.0), "no change (0)", ("fft",), SPAN),
    _claim("fig2_lora_drop", "Fig. 2", "LoRA's general score falls as domains are added",
           f"-{_DROP['lora']} from N=2 to 6", "general(N=2) - general(N=6), LoRA, orders averaged", v.above(0.0),
           "no change (0)", ("lora",), SPAN),
    _claim("fig2_esft_drop", "Fig. 2", "ESFT's general score falls as domains are added",
           f"-{_DROP['esft']} from N=2 to 6", "general(N=2) - general(N=6), ESFT-Gate, orders averaged",
           v.above(0.0), "no change (0)", ("esft_gate",), SPAN),
    _claim("fig2_lora_less_than_fft", "Fig. 2", "LoRA's general score falls less than full FT's (moderately)",
           f"-{_DROP['lora']} vs -{_DROP['fft']} ({_DROP['lora'] - _DROP['fft']:+.1f})",
           "drop(N=2->6) LoRA - drop FFT, paired by seed", v.below(0.0), "full FT's drop", ("lora", "fft"), SPAN),
    _claim("fig2_esft_less_than_fft", "Fig. 2", "ESFT's general score falls less than full FT's (moderately)",
           f"-{_DROP['esft']} vs -{_DROP['fft']} ({_DROP['esft'] - _DROP['fft']:+.1f})",
           "drop(N=2->6) ESFT-Gate - drop FFT, paired by seed", v.below(0.0), "full FT's drop", ("esft_gate", "fft"),
           SPAN),
    _claim("fig2_fft_steepens", "Fig. 2 text", "full FT's decline steepens as domains are added",
           f"slope {paper.FIG2_FFT_SLOPES[0]:g}/domain (N 2->3), {paper.FIG2_FFT_SLOPES[1]:g}/domain beyond "
           f"(steeper by {paper.FIG2_FFT_SLOPES[0] - paper.FIG2_FFT_SLOPES[1]:.1f})",
           "per-domain drop of FFT's general score, (g(N_mid) - g(N_max)) / (N_max - N_mid) - (g(N_min) - g(N_mid)) "
           "/ (N_mid - N_min), per seed", v.above(0.0), "a constant slope (0)", ("fft",), SPAN),
    _claim("fig2_desmoe_flat", "Fig. 2", "DES-MoE's general score stays flat as domains are added",
           f"{paper.FIG2_GENERAL['desmoe'][0]} -> {paper.FIG2_GENERAL['desmoe'][1]} (-{_DROP['desmoe']})",
           "general(N=2) - general(N=6), DES-MoE, orders averaged", v.within(0.0, TOLERANCE), "no change (0)",
           ("desmoe",), SPAN),
    _claim("fig2_preserved_98", "Conclusion", "DES-MoE preserves 98% of its general ability from 2 to 6 domains",
           f"{paper.PRESERVED:.0%} (Fig. 2: {paper.FIG2_GENERAL['desmoe'][1]} / {paper.FIG2_GENERAL['desmoe'][0]})",
           "general(N=6) / general(N=2), DES-MoE, orders averaged, per seed", v.at_least(paper.PRESERVED),
           "no loss (1)", ("desmoe",), SPAN),
    _claim("fig2_reduction_absolute", "Fig. 2 / abstract", "DES-MoE forgets 89% less than full FT (reading 1: "
           "forgetting at N=6)", f"{paper.FORGETTING_REDUCTION_TEXT:.0%} (text); "
           f"{paper.FORGETTING_REDUCTION_FIG2:.0%} from Fig. 2", "1 - F_DES(N=6) / F_FFT(N=6) per seed",
           v.at_least(REDUCTION), "full FT's forgetting", ("desmoe", "fft"),
           v.minimum("fft_forgetting", MIN_FORGETTING, "full FT's forgetting at N=6").gate()),
    _claim("fig2_reduction_slope", "Fig. 2", "DES-MoE's general score falls less than full FT's from N=2 to 6 "
           "(reading 2 of '89% less forgetting': the slopes)",
           f"-{_DROP['desmoe']} vs -{_DROP['fft']} ({_DROP['desmoe'] - _DROP['fft']:+.1f})",
           "drop(N=2->6) DES-MoE - drop FFT, paired by seed (orders averaged within a seed)", v.below(0.0),
           "full FT's drop", ("desmoe", "fft"), SPAN),
)

_MIN = paper.FIG3_MINUTES
CONVERGENCE = (
    _claim("fig3_steps", "Fig. 3", "DES-MoE reaches full FT's level with less training (steps)",
           f"'68% faster': 1 - {_MIN['desmoe']}/{_MIN['fft']} = {paper.SPEEDUP:.1%} less wall-clock",
           "1 - steps_DES / steps_FFT to reach 95% of FFT's validation score (censored if never)", v.above(0.0),
           "full FT (0% speed-up)", ("desmoe", "fft"), v.minimum("fft_val", 0.1, "full FT's validation score")),
    _claim("fig3_wallclock", "Fig. 3", "DES-MoE reaches full FT's level in less wall-clock time",
           f"'68% faster': 1 - {_MIN['desmoe']}/{_MIN['fft']} = {paper.SPEEDUP:.1%}",
           "1 - seconds_DES / seconds_FFT to the same target (training time only)", v.above(0.0),
           "full FT (0% speed-up)", ("desmoe", "fft"), v.minimum("fft_val", 0.1, "full FT's validation score"),
           present("sparse_expert_gradients", "sparse expert gradients (frozen experts cost no backward compute)")),
    _single("fig3_mixed_vs_single_esft", "Fig. 3", "one mixed ESFT run is faster than six single-domain ESFT runs",
            f"{_MIN['esft_mixed']} vs {_MIN['esft_single_x6']} minutes", "training seconds, ESFT-Gate mixed (N=6) - "
            "sum over the domains of ESFT-Gate single-domain runs", v.below(0.0), "six single-domain ESFT-Gate runs",
            ("esft_gate",), "esft_gate", floor=False),
)


def _t3(method: str, other: str, score: str) -> str:
    """Table 3's 'a vs b (b - a)' for ``score`` (downstream or general), from :data:`.paper.TABLE3`."""
    a, b = (paper.TABLE3[m][("downstream", "general").index(score)] for m in (method, other))
    return f"{a} vs {b} ({b - a:+.1f})"


ABLATIONS = (
    _claim("t3_no_alr_general", "Table 3", "removing ALR costs general ability", _t3("desmoe", "desmoe_no_alr", "general"),
           "general at N=6, DES-MoE - w/o ALR", v.above(0.0), "DES-MoE without ALR", ("desmoe", "desmoe_no_alr")),
    _claim("t3_no_alr_domain", "Table 3", "removing ALR costs downstream score", _t3("desmoe", "desmoe_no_alr", "downstream"),
           "test at N=6, DES-MoE - w/o ALR", v.above(0.0), "DES-MoE without ALR", ("desmoe", "desmoe_no_alr")),
    _claim("t3_no_dges_general", "Table 3", "removing DGES costs general ability", _t3("desmoe", "desmoe_no_dges", "general"),
           "general at N=6, DES-MoE - w/o DGES", v.above(0.0), "DES-MoE without DGES", ("desmoe", "desmoe_no_dges")),
    _claim("t3_no_dges_domain", "Table 3", "removing DGES costs downstream score", _t3("desmoe", "desmoe_no_dges", "downstream"),
           "test at N=6, DES-MoE - w/o DGES", v.above(0.0), "DES-MoE without DGES", ("desmoe", "desmoe_no_dges")),
    _claim("t3_esft_alr", "Table 3", "adding ALR to (mixed) ESFT does not help general ability",
           _t3("esft_mixed", "esft_mixed_alr", "general"), "general at N=6, ESFT-Gate + ALR - ESFT-Gate",
           v.at_most(TOLERANCE), "ESFT-Gate (mixed)", ("esft_gate", "esft_gate_alr")),
    _claim("t3_esft_alr_domain", "Table 3", "adding ALR to (mixed) ESFT does not help downstream score",
           _t3("esft_mixed", "esft_mixed_alr", "downstream"), "test at N=6, ESFT-Gate + ALR - ESFT-Gate",
           v.at_most(TOLERANCE), "ESFT-Gate (mixed)", ("esft_gate", "esft_gate_alr")),
    _claim("t3_esft_alr_routing_errors", "Table 3 text", "ALR without DGES raises routing-assignment errors",
           f"+{paper.ROUTING_ERRORS_ALR:.0%} routing-assignment errors (the error is not defined)",
           "1 - share of (test token, MoE layer) whose experts ESFT-Gate's router (the frozen original) would choose "
           "too, at N=6: ESFT-Gate + ALR - ESFT-Gate, paired by seed",
           v.above(0.0), "ESFT-Gate's own routing", ("esft_gate", "esft_gate_alr"),
           present("routing_recorded", "recorded routing of the test tokens under both routers")),
    _claim("t3_routing_overlap", "Table 3 text", "with DGES the domains are routed to less overlapping experts "
           "(Law vs Code)", f"overlap {paper.OVERLAP_LAW_CODE['desmoe']} with DGES vs "
           f"{paper.OVERLAP_LAW_CODE['desmoe_no_dges']} without", "Jaccard of law's and code's expert sets in the "
           "routing of the test tokens (experts holding >= 0.6 x the top expert's share), mean over MoE layers, at "
           "N=6: DES-MoE - w/o DGES, paired by seed", v.below(0.0), "DES-MoE without DGES",
           ("desmoe", "desmoe_no_dges"), v.flag("law_and_code", "law and code among the trained domains"),
           present("routing_recorded", "recorded routing of the test tokens")),
    _claim("t3_overlap", "Table 3 text", "DGES separates the experts of different domains (Law vs Code)",
           f"overlap {paper.OVERLAP_LAW_CODE['desmoe']} with DGES vs {paper.OVERLAP_LAW_CODE['desmoe_no_dges']} without",
           "Jaccard(M_law, M_code) at T, DES-MoE - w/o DGES", v.below(0.0), "DES-MoE without DGES",
           ("desmoe", "desmoe_no_dges"), v.flag("law_and_code", "law and code among the trained domains")),
)

_EXT = f"{paper.DES_MOE}, extension"
SEQUENTIAL = (
    _claim("ext_sequential", "extension (not in the paper)", "DES-MoE forgets earlier domains less than full FT "
           "when domains arrive one after another", "not claimed (the paper trains domains jointly)",
           "earlier-domain forgetting, DES-MoE - FFT", v.below(0.0), "full FT, same sequence", (),
           source=_EXT),
)

ROUTING = tuple(
    _claim(f"ext_routing_beyond_{null}", "extension (not in the paper)",
           f"DES-MoE's routing of the test tokens carries more domain information than {what}",
           "not claimed (the paper reports no routing-domain statistic)",
           f"NMI(domain; top-1 expert) of DES-MoE's routing - the same for {what}, mean over MoE layers, at N=6, "
           "per seed", v.above(0.0), control, ("desmoe",),
           present("routing_recorded", "recorded routing of the test tokens"), source=_EXT)
    for null, what, control in (
        ("shuffled", "the same routing with domain labels shuffled across sequences",
         "shuffled domain labels (20 permutations, mean)"),
        ("hidden", "a k-means clustering (k = routed experts) of the routers' input hidden states",
         "hidden-state similarity: k-means of the routers' inputs"))
)

REGISTRY: dict[str, Claim] = {c.id: c for c in PREMISE + TABLE + FORGETTING + CONVERGENCE + ABLATIONS + ROUTING
                              + SEQUENTIAL}
v.check_facts(REGISTRY.values(), Facts)


def get(claim_id: str) -> Claim:
    """The registered claim ``claim_id``."""
    if claim_id not in REGISTRY:
        raise KeyError(f"unknown DES-MoE claim {claim_id!r}")
    return REGISTRY[claim_id]


def table() -> pd.DataFrame:
    """The registry as a DataFrame: id, where, statement, paper value, statistic, rule, control, preconditions."""
    return pd.DataFrame([{"claim": c.id, "where": c.where, "statement": c.statement, "paper_value": c.paper_value,
                          "statistic": c.statistic, "rule": c.rule.text, "control": c.control,
                          "preconditions": "; ".join(p.text for p in c.preconditions)} for c in REGISTRY.values()])
