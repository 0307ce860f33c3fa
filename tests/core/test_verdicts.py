"""Verdict rules, intervals and preconditions (moescope.verdicts)."""
import math

import numpy as np
import pytest

from moescope import verdicts as v

CLAIM = v.Claim(
    id="demo", paper="P", where="Table 9", statement="blocking lowers MRR", paper_value="0.43",
    statistic="MRR drop", rule=v.exceeds_control(), control="random experts blocked",
    preconditions=(v.minimum("layers", 8, "depth"), v.flag("shared_expert", "a shared expert")),
)
FACTS = {"layers": 16, "shared_expert": True}


def test_verdict_follows_the_rule_against_the_control():
    above = v.decide(CLAIM, FACTS, v.Estimate(0.4, 0.3, 0.5), v.Estimate(0.05, 0.0, 0.1))
    overlap = v.decide(CLAIM, FACTS, v.Estimate(0.4, 0.08, 0.5), v.Estimate(0.05, 0.0, 0.1))
    below = v.decide(CLAIM, FACTS, v.Estimate(0.04, 0.0, 0.05), v.Estimate(0.3, 0.2, 0.4))
    assert (above["verdict"], overlap["verdict"], below["verdict"]) == ("reproduced", "inconclusive", "not reproduced")
    assert above["rule"] == "kit - control > 0"
    # without a paired difference, the unpaired one: [kit.low - control.high, kit.high - control.low]
    assert (above["diff"], above["diff_low"], above["diff_high"]) == pytest.approx((0.35, 0.2, 0.5))
    assert "unpaired" in above["note"]


def test_a_paired_difference_decides_where_marginal_intervals_overlap():
    kit, control = v.Estimate(0.4, 0.08, 0.5), v.Estimate(0.05, 0.0, 0.1)
    paired = v.Estimate(0.35, 0.3, 0.4, 20, "prompts")
    row = v.decide(CLAIM, FACTS, kit, control, diff=paired)
    assert row["verdict"] == "reproduced" and (row["diff_low"], row["diff_high"]) == (0.3, 0.4)
    assert "paired over the same prompts" in row["note"]
    assert v.decide(CLAIM, FACTS, kit, control, diff=v.Estimate(-0.1, -0.2, -0.01))["verdict"] == "not reproduced"


BAND = v.Claim("size", "P", "Table 9", "a drop of 0.43", "0.43", "drop", v.within(0.43, 0.1))


@pytest.mark.parametrize("interval, outcome", [
    ((0.4, 0.35, 0.5), "reproduced"),           # inside the band
    ((0.81, 0.55, 1.10), "not reproduced"),     # wholly outside: a miss however wide it is
    ((0.1, 0.0, 0.2), "not reproduced"),        # wholly below
    ((0.5, 0.2, 0.8), "inconclusive"),          # overlaps the band but is wider than it
    ((0.3, 0.25, 0.36), "inconclusive"),        # straddles the band's lower edge
])
def test_four_outcomes_on_a_band(interval, outcome):
    assert v.decide(BAND, {}, v.Estimate(*interval))["verdict"] == outcome


def test_inconclusive_rows_say_what_would_decide_them():
    inside = v.decide(BAND, {}, v.Estimate(0.5, 0.2, 0.8))  # 0.03 from the band's upper edge, half-width 0.3
    assert "half-width below 0.03 (now 0.3) would make it reproduced" in inside["note"]
    outside = v.decide(BAND, {}, v.Estimate(0.3, 0.25, 0.36))  # 0.03 below the band
    assert "half-width below 0.03 (now 0.055) would make it not reproduced" in outside["note"]
    direction = v.decide(v.Claim("dir", "P", "T", "positive", "+", "x", v.above(0.0)), {}, v.Estimate(0.633, -0.056, 1.32))
    assert direction["verdict"] == "inconclusive" and "below 0.633" in direction["note"]


def test_thresholds_decide_by_side():
    at_most = v.Claim("t2", "P", "T2", "~0", "0", "recovered", v.at_most(0.1))
    assert v.decide(at_most, {}, v.Estimate(0.105, 0.049, 0.159))["verdict"] == "inconclusive"
    assert v.decide(at_most, {}, v.Estimate(0.05, 0.0, 0.09))["verdict"] == "reproduced"
    assert v.decide(at_most, {}, v.Estimate(0.3, 0.2, 0.4))["verdict"] == "not reproduced"
    strict = v.above(0.0)  # open end: an interval ending at 0 is not above it, one that ends below is wholly below
    assert strict.outcome(v.Estimate(0.0))[0] == "not reproduced" and strict.outcome(v.Estimate(0.1, 0.0, 0.2))[0] == "inconclusive"


GATED = v.Claim("gated", "P", "Table 5", "blocking lowers MRR", "0.43", "drop", v.exceeds_control(),
                "random experts", (v.minimum("layers", 8, "depth"), v.maximum("baseline_mrr", 0.95, "baseline MRR").gate()))


def test_a_ceiling_gate_hides_only_a_null_result():
    ceiling = {"layers": 16, "baseline_mrr": 1.0}
    win = v.decide(GATED, ceiling, v.Estimate(0.99, 0.98, 1.0), v.Estimate(0.0, -0.01, 0.01))
    miss = v.decide(GATED, ceiling, v.Estimate(0.0, -0.02, 0.01), v.Estimate(0.3, 0.2, 0.4))
    null = v.decide(GATED, ceiling, v.Estimate(0.05, -0.05, 0.15), v.Estimate(0.0, -0.01, 0.01))
    assert win["verdict"] == "reproduced" and "decided although baseline MRR is 1" in win["note"]
    assert miss["verdict"] == "not reproduced"
    assert null["verdict"] == "not testable: baseline MRR is 1, needs at most 0.95"
    # a structural precondition makes any result not testable
    assert v.decide(GATED, {"layers": 4, "baseline_mrr": 0.5}, v.Estimate(0.99, 0.98, 1.0),
                    v.Estimate(0.0))["verdict"].startswith("not testable: depth is 4")


def test_all_of_needs_every_part():
    rule = v.all_of(v.within(0.68, 0.17), v.exceeds_control())
    assert rule.outcome(v.Estimate(0.6, 0.55, 0.65), v.Estimate(0.0, -0.1, 0.1))[0] == "reproduced"
    assert rule.outcome(v.Estimate(0.2, 0.15, 0.25), v.Estimate(0.0, -0.1, 0.1))[0] == "not reproduced"
    assert rule.outcome(v.Estimate(0.6, 0.3, 0.9), v.Estimate(0.0, -0.1, 0.1))[0] == "inconclusive"


def test_unmet_preconditions_are_computed_and_all_listed():
    row = v.decide(CLAIM, {"layers": 3, "shared_expert": False}, v.Estimate(0.9, 0.8, 1.0), v.Estimate(0.0))
    assert row["verdict"] == "not testable: depth is 3, needs at least 8; the model lacks a shared expert"
    assert row["kit"] == 0.9  # the value is still shown


def test_undefined_statistic_is_not_testable():
    assert v.decide(CLAIM, FACTS, v.Estimate(math.nan), v.Estimate(0.0))["verdict"].startswith("not testable: ")
    assert v.decide(CLAIM, FACTS, None, v.Estimate(0.0))["verdict"].startswith("not testable: ")


def test_rules_on_intervals():
    est = v.Estimate(0.5, 0.4, 0.6)
    assert v.at_least(0.4).test(est, None) and not v.at_least(0.45).test(est, None)
    assert v.at_most(0.6).test(est, None) and not v.at_most(0.55).test(est, None)
    assert v.within(0.5, 0.1).test(est, None) and not v.within(0.7, 0.1).test(est, None)
    assert v.below_control().test(est, v.Estimate(0.8, 0.7, 0.9)) and not v.below_control(0.2).test(est, v.Estimate(0.8, 0.7, 0.9))
    assert not v.all_of(v.at_least(0.4), v.at_most(0.55)).test(est, None)
    with pytest.raises(ValueError, match="control"):
        v.exceeds_control().test(est, None)


def test_point_estimates_compare_as_degenerate_intervals():
    assert v.at_least(0.5).test(v.Estimate(0.5), None) and not v.at_least(0.51).test(v.Estimate(0.5), None)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    est_small, est_large = v.mean_of(small), v.mean_of(large, reps=300)
    assert est_small.low < small.mean() < est_small.high and est_small.n == 20 and est_small.over == "prompts"
    assert (est_large.high - est_large.low) < (est_small.high - est_small.low) / 4
    assert v.mean_of(small).low == est_small.low  # seeded: reproducible


def test_paired_bootstrap_resamples_prompts_jointly():
    before, after = np.ones(50), np.r_[np.zeros(25), np.ones(25)]
    est = v.bootstrap(lambda i: 1 - after[i].mean() / before[i].mean(), 50)
    assert est.value == pytest.approx(0.5) and 0.3 < est.low < 0.5 < est.high < 0.7


def test_over_seeds_t_interval():
    est = v.over_seeds([1.0, 2.0, 3.0])
    half = 4.302652729749464 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (est.value, est.low, est.high, est.over) == pytest.approx((2.0, 2 - half, 2 + half, "seeds"))
    assert math.isnan(v.over_seeds([1.0]).low)


def test_is_verdict_accepts_exactly_four_forms():
    assert v.is_verdict("reproduced") and v.is_verdict("not reproduced") and v.is_verdict("inconclusive")
    assert v.is_verdict("not testable: 3 layers")
    assert not v.is_verdict("differs because shallow") and not v.is_verdict("not testable: ")
    assert list(v.table([v.decide(CLAIM, FACTS, v.Estimate(1.0), v.Estimate(0.0))]).columns) == v.COLUMNS
    assert v.kind("not testable: 3 layers") == "not testable" and v.kind("inconclusive") == "inconclusive"


def test_roles_are_checked():
    with pytest.raises(ValueError, match="role"):
        v.Claim("x", "P", "T", "s", "1", "x", v.at_least(1), role="bonus")


def test_batched_bootstrap_equals_the_loop():
    x = np.random.default_rng(2).normal(size=40)
    loop = v.bootstrap(lambda i: float(x[i].mean()), 40, reps=200)
    batched = v.bootstrap(lambda i: x[i].mean(-1), 40, reps=200, batched=True)
    assert (loop.value, loop.low, loop.high) == pytest.approx((batched.value, batched.low, batched.high))


def test_preconditions_are_checked_against_the_papers_fact_type():
    from typing import TypedDict

    Facts = TypedDict("Facts", {"layers": int, "shared_expert": bool}, total=False)
    v.check_facts([CLAIM], Facts)
    typo = v.Claim("t", "P", "T", "s", "1", "x", v.at_least(1), preconditions=(v.minimum("layrs", 8, "depth"),))
    with pytest.raises(ValueError, match="t: layrs"):
        v.check_facts([typo], Facts)
    assert v.minimum("layers", 8, "depth").gate().keys == ("layers",)


def test_a_row_on_one_model_says_so():
    from moescope import statistics
    claim = v.Claim("x", "p", "w", "s", "1", "stat", v.above(0.0))
    row = v.decide(claim, {}, statistics.one_model(v.Estimate(0.5, 0.4, 0.6, 20, "prompts")))
    assert row["verdict"] == "reproduced" and row["note"] == ("one model: the interval is over prompts, not over "
                                                              "trained models")
    assert v.decide(claim, {}, v.Estimate(0.5, 0.4, 0.6, 3, "seeds x prompts"))["note"] == ""
