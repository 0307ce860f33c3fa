"""One statistics module for both papers (moescope.statistics)."""
import math

import numpy as np
import pytest

from moescope import statistics as st


def test_one_level_for_every_interval():
    assert st.TAILS == pytest.approx((0.025, 0.975))
    assert st.percentiles(np.arange(1001.0)) == pytest.approx((25.0, 975.0))


@pytest.mark.parametrize("seed", range(5))
def test_every_mean_interval_contains_its_point(seed):
    """The T1.Qwen1.5-MoE.mrr bug (0.722 [0.7212, 0.7212]): a scalar statistic in the batched bootstrap gave every
    resample the same value. For a mean, the point estimate always lies inside the percentile interval."""
    x = np.random.default_rng(seed).exponential(size=25)
    for est in (st.mean_of(x), st.bootstrap(lambda i: x[i].mean(), len(x)),
                st.bootstrap(lambda i: x[i].mean(-1), len(x), batched=True)):
        assert est.low < est.value < est.high and est.high - est.low > 0.05


def test_a_scalar_statistic_in_the_batched_bootstrap_is_an_error():
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="one value per row"):
        st.bootstrap(lambda i: float(x[i].mean()), len(x), batched=True)


def test_batched_and_unbatched_draw_the_same_resamples():
    x = np.random.default_rng(3).normal(size=30)
    loop = st.bootstrap(lambda i: float(x[i].mean()), 30, reps=200)
    batched = st.bootstrap(lambda i: x[i].mean(-1), 30, reps=200, batched=True)
    assert np.allclose(loop.draws, batched.draws) and (loop.low, loop.high) == pytest.approx((batched.low, batched.high))


def test_t_interval():
    est = st.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (est.value, est.low, est.high) == pytest.approx((2.0, 2 - half, 2 + half)) and est.over == "seeds"
    assert math.isnan(st.t_interval([1.0]).low)


def test_paired_difference_is_tighter_than_the_marginal_intervals():
    rng = np.random.default_rng(4)
    prompt = rng.normal(0, 1, 60)  # a prompt effect shared by kit and control
    kit, control = prompt + 0.3 + rng.normal(0, 0.05, 60), prompt + rng.normal(0, 0.05, 60)
    a, b = st.mean_of(kit), st.mean_of(control)
    paired, unpaired = st.difference(a, b, paired=True), st.difference(a, b)
    assert paired.low > 0.2 and paired.high < 0.4          # the paired test sees the effect
    assert unpaired.low < 0 < unpaired.high                # the marginal intervals overlap
    assert paired.value == pytest.approx(st.paired(kit, control).value)
    assert (paired.low, paired.high) == pytest.approx((st.paired(kit, control).low, st.paired(kit, control).high))


def test_hierarchical_bootstrap_resamples_seeds_then_prompts():
    rng = np.random.default_rng(5)
    seeds = [st.mean_of(rng.normal(mu, 1.0, 40)) for mu in (0.0, 0.5, 1.0)]
    h = st.hierarchical(seeds)
    assert h.value == pytest.approx(np.mean([e.value for e in seeds])) and h.n == 3 and h.over == "seeds x prompts"
    assert h.low < h.value < h.high
    # wider than any one seed's interval (the seeds differ), narrower than a 2-df t interval on three values
    assert h.high - h.low > max(e.high - e.low for e in seeds)
    t = st.t_interval([e.value for e in seeds])
    assert h.high - h.low < t.high - t.low
    # two combinations of the same seeds pair: kit - kit is exactly 0
    d = st.difference(h, st.hierarchical(seeds), paired=True)
    assert (d.low, d.high) == (0.0, 0.0)
    # estimates that are not bootstraps fall back to the t interval
    assert st.hierarchical([st.Estimate(1.0), st.Estimate(2.0), st.Estimate(3.0)]).low == pytest.approx(st.t_interval([1, 2, 3]).low)


def test_stratified_resamples_within_strata():
    a, b = np.ones(10), np.zeros(30)
    est = st.stratified(lambda idx: a[idx["a"]].mean(-1) - b[idx["b"]].mean(-1), {"a": 10, "b": 30})
    assert (est.value, est.low, est.high, est.n) == (1.0, 1.0, 1.0, 40)


def test_over_strata_averages_each_strata_own_resamples():
    rng = np.random.default_rng(1)
    a = st.mean_of(rng.normal(1.0, 0.1, 50))
    b = st.bootstrap(lambda idx: np.asarray(rng.normal(3.0, 0.1, 50))[idx].mean(-1), 50, seed=1, batched=True)
    pooled = st.over_strata([a, b], "depths")
    assert pooled.value == pytest.approx(2.0, abs=0.05) and pooled.over == "depths" and pooled.n == 100
    assert pooled.low < pooled.value < pooled.high and pooled.high - pooled.low < 0.5  # not the 1-vs-3 spread
    assert (pooled.low, pooled.high) == pytest.approx(st.percentiles((a.draws + b.draws) / 2))
    plain = st.over_strata([st.Estimate(1.0, 0.5, 1.5), st.Estimate(3.0, 2.0, 4.0)])
    assert (plain.value, plain.low, plain.high) == (2.0, 1.25, 2.75)
    assert math.isnan(st.over_strata([a, st.Estimate(math.nan)]).value)


def test_one_model_is_marked_once_and_noted():
    e = st.Estimate(0.5, 0.4, 0.6, 30, "sequences")
    one = st.one_model(e)
    assert one.over == "sequences, one model" and st.one_model(one) == one and st.on_one_model(one)
    assert not st.on_one_model(e) and st.one_model(None) is None
    assert st.one_model_note(one) == "one model: the interval is over sequences, not over trained models"
