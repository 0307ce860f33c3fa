"""Every claim of the attribution paper as data: the paper's value (from :mod:`.paper`), the statistic the kit
computes, the decision rule fixed before running, the control, and the preconditions a model and its prompts must
meet for the claim to be testable. :mod:`.evidence` computes the statistics and decides.

Rules that compare a size with the paper's use one tolerance for every claim (:func:`close`): the band paper
+/- max(0.05, 25% of |paper|); the four outcomes of :mod:`moescope.verdicts` follow from where the kit's 95%
interval lies against it (inside, disjoint, straddling). Direction claims test the side of 0; causal claims also
test the effect minus the same intervention on random units, paired over the same prompts.

Table 5 drops: a size claim is decided on the relative drop 1 - MRR_blocked / MRR, the paper's quantity, with the
absolute MRR drop beside it in the note; the attributed-vs-random controls are decided on absolute MRR differences
(MRR - MRR_blocked, kit - control = MRR_random - MRR_attributed on the same prompts), which cannot run past what is
possible at a low baseline (:data:`RELATIVE`, :data:`ABSOLUTE`).

Baseline gates (the baseline MRR's ceiling, its floor relative to the relation's prior, the floor gap of Table 2,
the inhibition drop that forcing must undo) are ``null_only``: they turn only an inconclusive result into not testable, never a decided one.

Facts read by the preconditions: :class:`Facts` (computed by :mod:`.tasks` and :mod:`.evidence` from the model and
data); every precondition's key is checked against it when the registry is built.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

import pandas as pd

from .. import verdicts as v
from . import paper

PAPER = "attribution (ACL 2025)"
TOLERANCE, FLOOR = 0.25, 0.05
MIN_LAYERS, MAX_BASELINE, MAX_BLOCKED, MIN_PROMPTS = 8, 0.95, 0.05, 20
MIN_GAP, MIN_DROP = 0.1, 0.05
#: how far above its prior (objects ranked by frequency) a relation's baseline MRR must be to count as known
MIN_BEYOND_PRIOR = 0.05


class Facts(TypedDict, total=False):
    """What the preconditions read, one definition (keys not listed here fail the registry at import)."""

    model: str                #: the model's name
    layers: int               #: decoder layers
    moe: bool                 #: routed experts
    shared_expert: bool       #: a shared expert
    softmax_router: bool      #: a softmax router (integrated gradients are implemented for those)
    pairs: int                #: (layer, expert) pairs
    checkpoint: str | None    #: the paper model this checkpoint is, if any
    n_prompts: int            #: prompts scored
    baseline_mrr: float       #: MRR before any intervention
    prior_mrr: float          #: MRR of the relations' object-frequency prior on the same prompts
    beyond_prior: float       #: baseline_mrr - prior_mrr
    families: int             #: task families among the prompts
    matched_groups: int       #: depth-matched MoE/dense groups
    paired_groups: int        #: one-to-one depth-matched MoE/dense pairs
    denominator_low: float    #: lowest 95% lower bound of a dense model's gain per layer (the readings' divisor)
    total_gain_low: float     #: lowest 95% lower bound over seeds of the summed FFN gain (the stage shares' divisor)
    ablation_gap: float       #: MRR lost when the shared and routed experts are both removed
    inhibition_drop: float    #: MRR drop when the key heads are inhibited
    fraction: float           #: share of (layer, expert) pairs blocked
    share_k: int              #: k carried over from the paper's top-10 share
    contrast: bool            #: a deeper MoE with a shared expert and a shallower one without in the same run
    equal_depth: bool         #: an MoE with a shared expert and one without of the same depth in the same run


def band(target: float) -> float:
    """Half-width of the tolerance band around a paper value: max(FLOOR, TOLERANCE * |target|)."""
    return max(FLOOR, TOLERANCE * abs(target))


def close(target: float) -> v.Rule:
    """The statistic lies in target +/- :func:`band` (target)."""
    return v.within(target, band(target))


# ---------------------------------------------------------------------------------------------------- preconditions
MOE = v.flag("moe", "routed experts")
SHARED = v.flag("shared_expert", "a shared expert")
SOFTMAX = v.flag("softmax_router", "a softmax router (integrated gradients are implemented for those)")
DEEP = v.minimum("layers", MIN_LAYERS, "depth (layers)")
OFF_CEILING = v.maximum("baseline_mrr", MAX_BASELINE, "baseline MRR").gate()
KNOWN = v.minimum("beyond_prior", MIN_BEYOND_PRIOR, "baseline MRR above the relation's object-frequency prior").gate()
PROMPTS = v.minimum("n_prompts", MIN_PROMPTS, "number of prompts")
FAMILIES = v.minimum("families", 2, "number of task families")
MATCHED = v.minimum("matched_groups", 1, "number of depth-matched MoE/dense groups")
PAIRED = v.minimum("paired_groups", 1, "number of one-to-one depth-matched MoE/dense pairs")
#: a ratio to a dense model's gain is defined only when that gain is clearly positive
DIVISOR = v.Precondition("the dense models' gain per layer clearly above 0 (95% lower bound > 0)",
                         lambda f: None if not f.get("denominator_low", math.nan) <= 0 else
                         f"the dense models' gain per layer has a 95% lower bound of {f.get('denominator_low'):.3g}: "
                         "a ratio to it is undefined on these prompts", keys=("denominator_low",))
FLOOR_GAP = v.minimum("ablation_gap", MIN_GAP, "MRR lost when the shared and routed experts are both removed").gate()
INHIBITS = v.minimum("inhibition_drop", MIN_DROP, "MRR drop when the key heads are inhibited").gate()
FEW_BLOCKED = v.maximum("fraction", MAX_BLOCKED, "share of (layer, expert) pairs blocked")
SHARE_K = v.minimum("share_k", 1, "number of pairs in the paper's top-10 share of this model's pairs")
CONTRAST = v.flag("contrast", "a contrast in the run: a deeper MoE with a shared expert and a shallower one without")
EQUAL_DEPTH = v.flag("equal_depth", "an MoE with a shared expert and one without, of the same depth, in the run")
POSITIVE_TOTAL = v.Precondition("the summed FFN gain clearly above 0 (95% lower bound > 0)",
                                lambda f: None if not f.get("total_gain_low", math.nan) <= 0 else
                                f"the summed FFN gain has a 95% lower bound of {f.get('total_gain_low'):.3g}: a share "
                                "of it is undefined on these prompts", keys=("total_gain_low",))
NO_SHARED = v.Precondition("an MoE without a shared expert (OLMoE's architecture)",
                           lambda f: "the model has a shared expert, unlike OLMoE" if f.get("shared_expert") else None,
                           keys=("shared_expert",))


def checkpoint(name: str) -> v.Precondition:
    """The model is the paper's own checkpoint (absolute gains and scores depend on vocabulary and training)."""
    hf_id = paper.MODELS[name][0]
    return v.Precondition(f"the paper's checkpoint {hf_id}", lambda f: None if f.get("checkpoint") == name else
                          f"{f.get('model')} is not the paper's checkpoint {hf_id} (absolute values are "
                          "comparable only on the same checkpoint)", keys=("checkpoint", "model"))


def _claim(id: str, where: str, statement: str, paper_value: str, statistic: str, rule: v.Rule, control: str = "",
           preconditions: tuple[v.Precondition, ...] = (), role: str = "claim") -> v.Claim:
    """A claim of this paper (``role``: claim, control or self-check)."""
    return v.Claim(id, PAPER, where, statement, paper_value, statistic, rule, control, preconditions, role)


# ---------------------------------------------------------------------------------------------------- Table 1
def _table1_claims() -> list[v.Claim]:
    out = []
    for r in paper.TABLE1.to_dict("records"):
        eff = r["per_layer_efficiency"]
        for col, label, rule in (("hit@10", "HIT@10", v.within(r["hit@10"], 0.1)),
                                 ("mrr", "MRR", v.within(r["mrr"], 0.1)),
                                 ("per_layer_efficiency", "per-layer efficiency", close(eff))):
            statistic = "mean_i sum_l FFNGain_{i,l} / L" if col == "per_layer_efficiency" else f"{label} of the prompts"
            out.append(_claim(f"T1.{r['model']}.{col}", "Table 1", f"{r['model']}: {label} = {r[col]:g}", f"{r[col]:g}",
                              statistic, rule, "", (checkpoint(r["model"]),)))
    return out


READINGS = paper.paper_efficiency_readings()
ADVANTAGE = {
    "T1.advantage.acl31": ("mean MoE / best dense", paper.CLAIMS["efficiency_advantage_acl"],
                           "MoE models are 31% more efficient per layer (ACL abstract; = mean MoE / best dense on Table 1)"),
    "T1.advantage.arxiv37": ("mean MoE / paired dense", paper.CLAIMS["efficiency_advantage_arxiv_v1"],
                             "MoE models are 37% more efficient per layer (arXiv v1; mean MoE / Qwen1.5-7B = 36% on Table 1)"),
    "T1.advantage.mean_mean": ("mean MoE / mean dense", round(READINGS["mean MoE / mean dense"], 3),
                               "the advantage read as mean MoE / mean dense (44% on Table 1)"),
    "T1.advantage.qwen51": ("paired MoE / paired dense", paper.CLAIMS["qwen_moe_vs_qwen_dense"],
                            "Qwen1.5-MoE is 51% more efficient per layer than Qwen1.5-7B (0.307 vs 0.203)"),
}


ATTENTION_READINGS = paper.paper_efficiency_readings("attn")
#: Table 1's attention column read as the efficiency is read: the control that could say the per-layer advantage
#: is not the experts' (an advantage that attention shows as well follows from depth and training, not from MoE)
ATTENTION = {
    "T1.attention.mean_mean": ("mean MoE / mean dense", round(ATTENTION_READINGS["mean MoE / mean dense"], 3),
                               "Table 1's attention gain per layer, read as the efficiency is: mean MoE / mean dense "
                               f"({ATTENTION_READINGS['mean MoE / mean dense']:+.0%} on Table 1, as large as the FFN's "
                               f"{READINGS['mean MoE / mean dense']:+.0%})"),
}


#: how the advantage rows pool their groups: one claim, a row per depth and a pooled row, all under its rule
BY_DEPTH = ("; a row per depth (the mean over its seeds, hierarchical bootstrap) and, with several depths, a pooled "
            "row (the mean over the depths, each resampled on its own: depths are strata, not replicates)")


def _advantage_claims() -> list[v.Claim]:
    out = [_claim("T1.advantage.direction", "Table 1 / abstract",
                  "MoE models are more efficient per layer than dense models (of the same depth)",
                  "+31% (ACL), +37% (arXiv v1)", f"eff(MoE) / eff(dense) - 1 within each depth-matched group{BY_DEPTH}",
                  v.above(0.0), "a dense model of the same depth (advantage 0)", (MATCHED, DIVISOR))]
    for cid, (reading, value, statement) in ADVANTAGE.items():
        out.append(_claim(cid, "Table 1 / abstract", statement, f"{value:+.0%}",
                          f"{reading} - 1 within each depth-matched group{BY_DEPTH}", close(value),
                          "a dense model of the same depth (advantage 0)",
                          (MATCHED, PAIRED, DIVISOR) if "paired" in reading else (MATCHED, DIVISOR)))
    for cid, (reading, value, statement) in ATTENTION.items():
        out.append(_claim(cid, "Table 1 (attention column)", statement, f"{value:+.0%}",
                          f"{reading} - 1 of mean_i sum_l AttnGain_{{i,l}} / L within each depth-matched group{BY_DEPTH}",
                          close(value), "a dense model of the same depth (advantage 0)", (MATCHED, DIVISOR)))
    return out


# ---------------------------------------------------------------------------------------------------- depth
def _depth_claims() -> list[v.Claim]:
    out = [_claim(f"depth.stage.{s}", "Sec. 4 (Qwen1.5-MoE stages)",
                  f"the {s} stage (layers {b} of 24) holds {paper.STAGE_SHARES[s]:.1%} of the FFN gain",
                  f"{paper.STAGE_SHARES[s]:.3f}", "sum_i sum_{l in stage} FFNGain_{i,l} / sum_i sum_l FFNGain_{i,l} "
                  "(boundaries 13/24, 19/24 of the depth)", close(paper.STAGE_SHARES[s]),
                  "the same share on the depth-matched dense model (shown, not used by the rule)",
                  (MOE, DEEP, POSITIVE_TOTAL))
           for s, b in (("early", "1-13"), ("middle", "14-19"), ("late", "20-24"))]
    late_minus_early = paper.STAGE_SHARES["late"] - paper.STAGE_SHARES["early"]
    out.append(_claim("depth.late_amplification", "Sec. 4 / abstract",
                      "mid-activation, late amplification: the late stage holds more FFN gain than the early stage",
                      f"{late_minus_early:+.3f}", "late share - early share", v.above(0.0),
                      "the same on the depth-matched dense model (shown, not used by the rule)",
                      (MOE, DEEP, POSITIVE_TOTAL)))
    out.append(_claim("depth.screening", "abstract / Sec. 4 (stages)",
                      "early layers screen experts, late layers refine collaboratively: the router commits to few "
                      "experts early (high top-k mass) and spreads over many late", "qualitative",
                      "mean router top-k mass (sum of the k largest expert probabilities, last token) over the early "
                      "stage's MoE layers - over the late stage's", v.above(0.0),
                      "routing spread evenly (k/E at every depth: difference 0)", (MOE, DEEP)))
    peaks = paper.TABLE1.peak_position
    out.append(_claim("depth.peak", "Table 1 (peak gain position)",
                      "the FFN gain peaks late, at about 85% of the depth (77.6-90.2% across the six models)",
                      f"{peaks.min():.3f}-{peaks.max():.3f}", "mean_i (argmax_l FFNGain_{i,l} + 1) / L",
                      v.within(0.84, 0.08), "the depth-matched partner's peak (shown, not used by the rule)", (DEEP,)))
    return out


# ---------------------------------------------------------------------------------------------------- Table 2
RECOVERED = "(MRR_config - MRR_neither) / (MRR_default - MRR_neither)"
TABLE2_CLAIMS = {  # config -> (claim id, rule, statement)
    "top-1 routed only": ("T2.routed_only.top1", v.at_most(0.1), "without the shared expert, top-1 routed experts score ~0"),
    "top-2 routed only": ("T2.routed_only.top2", v.at_most(0.1), "without the shared expert, top-2 routed experts score ~0"),
    "shared only": ("T2.shared_only", v.at_most(0.1), "the shared expert alone scores ~0"),
    "shared + top-1": ("T2.shared_top1", v.at_least(0.8), "the shared expert plus the top-1 routed expert nearly "
                                                          "recovers the default"),
    "shared + top-2": ("T2.shared_top2", v.at_least(0.8), "the shared expert plus the top-2 routed experts "
                                                          "recovers the default"),
}


def table2_paper_recovered(config: str) -> float:
    """RECOVERED on Table 2 itself (the paper reports no 'neither' row: its floor is taken as 0)."""
    t = paper.TABLE2.set_index("config").mrr
    return float(t[config] / t["shared + top-4 (default)"])


def _table2_claims() -> list[v.Claim]:
    mrr = paper.TABLE2.set_index("config").mrr
    return [_claim(cid, "Table 2", statement, f"MRR {mrr[cfg]:.2f} of {mrr['shared + top-4 (default)']:.2f} "
                   f"(recovered {table2_paper_recovered(cfg):.2f})", RECOVERED, rule,
                   "'neither' (shared and routed experts removed: the floor) and the default", (MOE, SHARED, FLOOR_GAP))
            for cfg, (cid, rule, statement) in TABLE2_CLAIMS.items()]


# ---------------------------------------------------------------------------------------------------- Table 5
RANDOM_K = ("the same number of experts per layer drawn at random among those nearest in routing frequency, blocked "
            "the same way on the same test prompts (mean of the draws)")
FREQUENCY_K = "the top-k (layer, expert) pairs by routing frequency on the selection prompts, blocked the same way"
RANDOM_K_ABSOLUTE = RANDOM_K.replace("(mean of the draws)", "(MRR - MRR blocked, mean of the draws)")
#: the size claims are decided on the relative drop, the quantity the paper reports ("lowers MRR by 76%")
RELATIVE = ("; decided on this relative drop, the paper's quantity; the absolute MRR drop and its paired difference to "
            "random are in the note (a ratio to a low baseline can run past -1, an MRR difference cannot)")
#: the controls are decided on the absolute MRR difference: "lowers MRR more than random" on the same prompts has the
#: sign of MRR(random) - MRR(attributed), which is bounded by [-1, 1] and by the baseline, while the difference of two
#: ratios to a low, resampled baseline is not (a drop of 1.45 is impossible but its interval reached it)
ABSOLUTE = ("; kit - control = MRR(random) - MRR(attributed) on the same prompts, which has the sign of the difference "
            "of the relative drops but is bounded by the baseline MRR")
CORE_TASKS, TOLERANT_TASKS = ("country_capital", "country_language"), ("fruit_inside_color", "object_superclass")


def table5_id(model: str, task: str, k: int | str) -> str:
    return f"T5.{model}.{task}.{k if isinstance(k, str) else f'top{k}'}"


def _table5_claims() -> list[v.Claim]:
    out = []
    for r in paper.TABLE5.to_dict("records"):
        model, task = r["model"], r["task"]
        for k in (1, 5, 10):
            drop = 1 - r[f"block{k}"] / r["orig"]
            out.append(_claim(table5_id(model, task, k), "Table 5",
                              f"{model}, {task}: blocking the top-{k} attributed experts lowers MRR by {drop:.1%}",
                              f"{drop:.3f} (MRR {r['orig']:.2f} -> {r[f'block{k}']:.2f})",
                              f"1 - MRR(top-{k} re-routed) / MRR (same prompts){RELATIVE}", close(round(drop, 3)),
                              RANDOM_K,
                              (MOE, OFF_CEILING, KNOWN, FEW_BLOCKED)))
        share, drop10 = paper.blocked_fraction(model), r["drop@10"]
        out.append(_claim(table5_id(model, task, "share"), "Table 5 (as a share of pairs)",
                          f"{model}, {task}: blocking the paper's top-10 share of pairs ({share:.2%}) lowers MRR "
                          f"by {drop10:.1%}", f"{drop10:.3f}",
                          f"1 - MRR(top round(share x pairs) re-routed) / MRR{RELATIVE}",
                          close(round(drop10, 3)), RANDOM_K, (MOE, OFF_CEILING, KNOWN, SHARE_K)))
    for method in ("reroute", "mask", "zero"):
        for task in paper.TABLE5.task.unique():
            out.append(_claim(f"T5.attributed_vs_random.{method}.{task}", "Table 5 (control)",
                              f"{task}: blocking the top-10 attributed experts ({method}) lowers MRR more than "
                              "blocking 10 random experts", "attributed experts matter (implicit in Table 5)",
                              f"MRR - MRR(top-10 {method}), absolute (same prompts){ABSOLUTE}", v.exceeds_control(),
                              RANDOM_K_ABSOLUTE, (MOE, OFF_CEILING, KNOWN),
                              role="control"))
    for task in paper.TABLE5.task.unique():
        out.append(_claim(f"T5.attributed_vs_frequency.{task}", "Table 5 (baseline)",
                          f"{task}: the LPI ranking's top-10 experts lower MRR more than the 10 most often routed "
                          "experts (a ranking that needs no attribution)", "implicit (attribution finds what matters)",
                          f"MRR - MRR(top-10 re-routed), absolute (same prompts){ABSOLUTE}", v.exceeds_control(),
                          FREQUENCY_K + " (MRR - MRR blocked)", (MOE, OFF_CEILING, KNOWN), role="control"))
    out.append(_claim("T5.core_vs_tolerant", "Sec. 5 / abstract",
                      "core-sensitive tasks (geography) lose more MRR than distributed-tolerant tasks (object "
                      "attributes) when their top experts are blocked",
                      "Qwen1.5-MoE +0.11; OLMoE -0.05 (mean drop@10, geography - objects)",
                      "mean drop@10 over country_capital, country_language - mean over fruit_inside_color, "
                      "object_superclass", v.above(0.0), "", (MOE, OFF_CEILING, KNOWN, FEW_BLOCKED)))
    qwen, olmoe = (paper.TABLE5[paper.TABLE5.model == m]["drop@10"].mean() for m in ("Qwen1.5-MoE", "OLMoE"))
    out.append(_claim("T5.shared_depth_robust", "Sec. 5 / abstract",
                      "a deep MoE with a shared expert is robust to blocking, a shallow one without degrades broadly",
                      f"{olmoe - qwen:+.3f} (mean drop@10, OLMoE - Qwen1.5-MoE)",
                      "mean drop@10 over the five tasks, shallower unshared - deeper shared MoE", v.above(0.0), "",
                      (CONTRAST, OFF_CEILING, FEW_BLOCKED)))
    out.append(_claim("T5.shared_equal_depth", "Sec. 5 (shared expert, at equal depth)",
                      "the shared expert makes an MoE robust to blocking: at equal depth, the MoE without one loses "
                      "more MRR than the MoE with one", "implied (the paper's contrast confounds it with depth: "
                      f"{olmoe - qwen:+.3f} between a 16- and a 24-layer model)",
                      "mean drop@10 over the five tasks, unshared - shared MoE of the same depth", v.above(0.0), "",
                      (EQUAL_DEPTH, OFF_CEILING, FEW_BLOCKED)))
    for cid, (reading, value) in zip(("T5.olmoe76.drop_of", "T5.olmoe76.falls_to"), paper.OLMOE_76_READINGS.items()):
        out.append(_claim(cid, "abstract (OLMoE '76%')", f"OLMoE country_capital: {reading}", f"{value:.2f}",
                          f"1 - MRR(top-10 re-routed) / MRR on country_capital{RELATIVE}", close(value), RANDOM_K,
                          (MOE, NO_SHARED, OFF_CEILING, KNOWN, FEW_BLOCKED)))
    return out


# ---------------------------------------------------------------------------------------------------- heads <-> experts
C = paper.CLAIMS
SHUFFLED = "the same with prompts shuffled within each layer (no head-expert link)"
RANDOM_HEADS = "the same number of random heads inhibited (mean of the draws)"


def _coordination_claims() -> list[v.Claim]:
    r, where = C["head_expert_r"], "Sec. 6 / abstract"
    return [
        _claim("HE.r", where, "head and expert attribution correlate (r = 0.68)", f"{r:.2f}",
               "Pearson r across prompts within each MoE layer of sum_h max(HeadGain,0) vs sum_j ExpertGain, mean "
               "over layers", v.all_of(close(r), v.exceeds_control()), SHUFFLED, (MOE, PROMPTS)),
        _claim("HE.r_lagged", where, "the correlation is temporal: heads at layer l vs experts at the next MoE layer",
               f"{r:.2f}", "as HE.r with the expert gain of the next MoE layer",
               v.all_of(close(r), v.exceeds_control()), SHUFFLED, (MOE, PROMPTS)),
        _claim("HE.p", where, "the correlation is significant (p < 0.001)", f"< {C['head_expert_p_max']:g}",
               "permutation p-value of HE.r (2000 within-layer shuffles of the prompts)",
               v.at_most(C["head_expert_p_max"]), SHUFFLED, (MOE, PROMPTS)),
        _claim("HE.inhibit_gate", where, "inhibiting the key heads lowers the top-k gate probability by 54%",
               f"{C['inhibit_gate_drop']:.2f}", "1 - mean top-k gate (inhibited) / mean top-k gate (clean), at the "
               "clean top-k experts", v.all_of(close(C["inhibit_gate_drop"]), v.exceeds_control()), RANDOM_HEADS, (MOE,)),
        _claim("HE.inhibit_mrr", where, "inhibiting the key heads lowers MRR by 29%", f"{C['inhibit_mrr_drop']:.2f}",
               "1 - MRR(inhibited) / MRR", v.all_of(close(C["inhibit_mrr_drop"]), v.exceeds_control()), RANDOM_HEADS,
               (MOE, OFF_CEILING)),
        _claim("HE.inhibit_gate_ig", where, "heads guide routing: inhibiting the heads the router's integrated "
               "gradients name lowers the top-k gate probability by 54%", f"{C['inhibit_gate_drop']:.2f}",
               "as HE.inhibit_gate, the key heads chosen by router IG mass on the selection templates (sum over "
               "prompts and MoE layers of |IG| of the top-1 expert's centred logit)",
               v.all_of(close(C["inhibit_gate_drop"]), v.exceeds_control()), RANDOM_HEADS, (MOE, SOFTMAX)),
        _claim("HE.inhibit_mrr_ig", where, "inhibiting the heads the router's integrated gradients name lowers MRR "
               "by 29%", f"{C['inhibit_mrr_drop']:.2f}", "as HE.inhibit_mrr, the key heads chosen by router IG",
               v.all_of(close(C["inhibit_mrr_drop"]), v.exceeds_control()), RANDOM_HEADS, (MOE, SOFTMAX, OFF_CEILING)),
        _claim("HE.forcing", where, "forcing the correct experts recovers 85% of the MRR", f"{C['force_recovery']:.2f}",
               "(MRR_forced - MRR_inhibited) / (MRR - MRR_inhibited)", close(C["force_recovery"]),
               "restoring the whole clean routing (mediation; shown, not used by the rule)", (MOE, INHIBITS)),
        _claim("HE.mediation", where, "the heads act through routing: restoring the clean routing undoes most of "
               "the inhibition's MRR drop", "implied (forcing recovers 85%)",
               "(MRR_inhibited+clean routing - MRR_inhibited) / (MRR - MRR_inhibited)", v.at_least(0.5),
               "", (MOE, INHIBITS)),
        _claim("HE.ig_share", where, "28% of the expert-activation attribution traces to specific heads",
               f"{C['ig_head_share']:.2f}", "IG of the clean top-1 expert's centred router logit: key heads' share "
               "of sum|IG| + |f(0)|, mean over prompts and MoE layers",
               v.all_of(close(C["ig_head_share"]), v.exceeds_control()), RANDOM_HEADS, (MOE, SOFTMAX)),
        _claim("HE.ig_share_all", where, "28% of the expert-activation attribution traces to heads (all heads)",
               f"{C['ig_head_share']:.2f}", "as HE.ig_share over all heads", close(C["ig_head_share"]), "",
               (MOE, SOFTMAX)),
    ]


# ---------------------------------------------------------------------------------------------------- basic / refinement
def _roles_claims() -> list[v.Claim]:
    where = "Sec. 4-5 (basic-refinement)"
    return [
        _claim("BR.shared_early", where, "shared experts work early, routed experts late (deep MoEs)",
               "qualitative", "shared share of the positive expert gain, early third - late third", v.above(0.0), "",
               (SHARED, DEEP)),
        _claim("BR.routed_refine", where, "routed experts are domain refiners, the shared expert a general basic "
               "processor: the routed gain depends more on the task family", "qualitative",
               "eta^2 (share of variance explained by task family) of the per-prompt routed gain - that of the "
               "shared gain; kit - control on the same resamples", v.exceeds_control(),
               "the same difference with the task families shuffled across prompts (mean of 20 shuffles: no family "
               "structure)", (SHARED, FAMILIES, PROMPTS)),
    ]


def _neuron_claims() -> list[v.Claim]:
    return [_claim("NR.late_neurons", "Sec. 4 (top-1,500 neuron counts by layer)",
                   "the top expert neurons concentrate late (mid-activation, late amplification at the neuron level)",
                   "qualitative (the paper's counting plots of the top 1,500 expert neurons per layer)",
                   "per prompt, the share of its top neurons in the late stage - in the early stage (the paper's "
                   "stage boundaries as relative depth), mean over prompts; kit - control",
                   v.exceeds_control(), "the same for neurons spread evenly over the layers (late layers' fraction - "
                   "early layers' fraction)", (MOE, DEEP))]


def _method_claims() -> list[v.Claim]:
    return [_claim("LPI.telescoping", "Sec. 3 (method)",
                   "layer gains decompose the log-probability: sum_l (AttnGain_l + FFNGain_l) = log p(w|h_L) - "
                   "log p(w|h_0) with the final norm's scale frozen", "exact identity",
                   "max over prompts of |sum of layer gains - (log p(w|h_L) - log p(w|h_0))|", v.at_most(1e-3),
                   role="self-check")]


REGISTRY: dict[str, v.Claim] = {c.id: c for c in (*_table1_claims(), *_advantage_claims(), *_depth_claims(),
                                                  *_table2_claims(), *_table5_claims(), *_coordination_claims(),
                                                  *_roles_claims(), *_neuron_claims(), *_method_claims())}
v.check_facts(REGISTRY.values(), Facts)


def get(claim_id: str) -> v.Claim:
    """The registered claim ``claim_id`` (KeyError names the known ids' prefixes)."""
    if claim_id not in REGISTRY:
        raise KeyError(f"unknown claim {claim_id!r}; known prefixes: {sorted({c.split('.')[0] for c in REGISTRY})}")
    return REGISTRY[claim_id]


def table() -> pd.DataFrame:
    """The registry as a DataFrame: id, where, statement, paper value, statistic, rule, control, preconditions."""
    return pd.DataFrame([{"claim": c.id, "where": c.where, "statement": c.statement, "paper_value": c.paper_value,
                          "statistic": c.statistic, "rule": c.rule.text, "control": c.control,
                          "preconditions": "; ".join(p.text for p in c.preconditions)} for c in REGISTRY.values()])


def decide(claim_id: str, facts: Mapping[str, Any], kit: v.Estimate | None, control: v.Estimate | None = None,
           note: str = "", model: str = "", diff: v.Estimate | None = None, reading: str = v.PAPER_READING
           ) -> dict[str, Any]:
    """:func:`moescope.verdicts.decide` for a registered claim (``diff``: kit - control paired over the same
    prompts and seeds; ``reading``: the lens variant, "" for the paper's)."""
    return v.decide(get(claim_id), facts, kit, control, note, model, diff, reading)
