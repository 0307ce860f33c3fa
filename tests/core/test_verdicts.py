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
    assert above["verdict"] == "reproduced" and overlap["verdict"] == "not reproduced"
    assert above["rule"] == "kit interval above the control's (margin 0)"


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
    assert v.within(0.7, 0.1).test(est, None) and not v.within(0.75, 0.1).test(est, None)
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


def test_is_verdict_accepts_exactly_three_forms():
    assert v.is_verdict("reproduced") and v.is_verdict("not reproduced") and v.is_verdict("not testable: 3 layers")
    assert not v.is_verdict("differs because shallow") and not v.is_verdict("not testable: ")
    assert list(v.table([v.decide(CLAIM, FACTS, v.Estimate(1.0), v.Estimate(0.0))]).columns) == v.COLUMNS


def test_batched_bootstrap_equals_the_loop():
    x = np.random.default_rng(2).normal(size=40)
    loop = v.bootstrap(lambda i: float(x[i].mean()), 40, reps=200)
    batched = v.bootstrap(lambda i: x[i].mean(-1), 40, reps=200, batched=True)
    assert (loop.value, loop.low, loop.high) == pytest.approx((batched.value, batched.low, batched.high))
