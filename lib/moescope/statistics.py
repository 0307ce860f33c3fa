"""Intervals for both papers, in one place: one confidence level, one percentile bootstrap, t intervals, paired
differences and a hierarchical (seeds, then prompts) bootstrap.

Every interval of the kit is an :class:`Estimate`: a value with its ``LEVEL`` interval [low, high] over ``n``
prompts, sequences or seeds (``over``). Bootstrap estimates also keep their resampled values (``draws``, not
serialised) so that estimates of several seeds can be combined by :func:`hierarchical` without recomputing them.

Contracts:

- :func:`bootstrap` ``(statistic, n)``: value = statistic(all n indices); interval = the ``TAILS`` percentiles of
  statistic over ``reps`` resamples of the indices with replacement (seeded). ``batched``: the statistic takes an
  index matrix [reps, n] and returns one value per row; the resamples are the same as unbatched. A batched
  statistic that does not return one value per row is an error (it would give every resample the same value).
- :func:`t_interval` ``(values)``: mean +/- t(1 - alpha/2, n - 1) * sd / sqrt(n).
- :func:`paired` ``(kit, control)``: the bootstrap of mean(kit - control) over items measured on both.
- :func:`hierarchical` ``(estimates)``: mean over seeds; interval from resampling seeds with replacement, then one
  prompt resample within each drawn seed (each seed's own bootstrap draws).
- :func:`stratified` ``(statistic, sizes)``: the bootstrap resampling items within each stratum.
- :func:`over_strata` ``(estimates)``: the mean over strata that are not replicates (e.g. depths), each stratum's
  estimate resampled on its own (its draws averaged with the others'), so the interval is the strata's own
  sampling error, not a spread between strata.
- :func:`one_model` ``(estimate)``: marks an estimate that rests on one trained model (a bootstrap over the prompts
  of one organism); :func:`one_model_note` says so in the row (:func:`moescope.verdicts.decide` adds it).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: the confidence level of every interval of the kit
LEVEL = 0.95
#: the percentiles of a two-sided LEVEL interval
TAILS = ((1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2)
#: bootstrap resamples and seed used unless a caller says otherwise
REPS, SEED = 1000, 0


@dataclass(frozen=True)
class Estimate:
    """A statistic with its interval [low, high] over ``n`` prompts or seeds (``over``); ``draws``: the bootstrap
    resamples it came from (empty when it is not a bootstrap)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    over: str = ""
    draws: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def bounds(self) -> tuple[float, float]:
        """(low, high), or (value, value) when no interval was computed."""
        if not self.has_interval:
            return self.value, self.value
        return self.low, self.high

    def half_width(self) -> float:
        """Half the interval's width (0 without an interval)."""
        low, high = self.bounds()
        return (high - low) / 2

    def negated(self) -> Estimate:
        """-self: value and interval negated (the interval's ends swap)."""
        return Estimate(-self.value, -self.high, -self.low, self.n, self.over, -self.draws)

    def relabel(self, over: str) -> Estimate:
        return Estimate(self.value, self.low, self.high, self.n, over, self.draws)


def percentiles(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The two-sided ``level`` percentile interval of the finite ``draws`` (NaN, NaN when there are none)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def from_draws(value: float, draws: np.ndarray, n: int, over: str, level: float = LEVEL) -> Estimate:
    """An estimate with the percentile interval of ``draws``."""
    draws = np.asarray(draws, dtype=float)
    return Estimate(float(value), *percentiles(draws, level), n, over, draws)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, reps: int = REPS, seed: int = SEED,
              level: float = LEVEL, batched: bool = False, over: str = "prompts") -> Estimate:
    """Percentile bootstrap over ``n`` items (see the module docstring). Paired statistics (a drop computed from
    before and after on the same prompts) resample prompts jointly. Resamples where it is undefined are dropped."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (reps, n))
    if batched:
        value = np.asarray(statistic(np.arange(n)[None]), dtype=float).reshape(-1)
        draws = np.asarray(statistic(idx), dtype=float)
        if value.shape != (1,) or draws.shape != (reps,):
            raise ValueError(f"a batched statistic must return one value per row of its index matrix; it returned "
                             f"shape {draws.shape} for {reps} rows (a scalar statistic needs batched=False)")
        value = value[0]
    else:
        value = float(statistic(np.arange(n)))
        draws = np.array([statistic(row) for row in idx], dtype=float)
    if not np.isfinite(draws).any():
        return Estimate(float(value), n=n, over=over)
    return from_draws(value, draws, n, over, level)  # undefined resamples stay (NaN) so draws align across calls


def resample(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> Estimate:
    """:func:`bootstrap` of a batched ``statistic`` (it takes indices [..., n] and reduces the last axis) with the
    kit's resamples and seed, so every statistic of a claim sees the same resamples and their draws pair."""
    return bootstrap(statistic, n, reps=REPS, seed=SEED, batched=True)


def mean_of(values: Sequence[float], reps: int = REPS, seed: int = SEED) -> Estimate:
    """The mean of per-item ``values`` with its bootstrap interval."""
    arr = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: arr[idx].mean(-1), len(arr), reps, seed, batched=True)


def paired(kit: Sequence[float], control: Sequence[float], reps: int = REPS, seed: int = SEED) -> Estimate:
    """mean(kit - control) over items measured under both (the same prompts), with its bootstrap interval."""
    a, b = np.asarray(kit, dtype=float), np.asarray(control, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same items in both: {a.shape} vs {b.shape}")
    return mean_of(a - b, reps, seed)


def t_interval(values: Sequence[float], level: float = LEVEL, over: str = "seeds") -> Estimate:
    """Mean of ``values`` with a Student-t interval (no interval for a single value)."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return Estimate(mean, n=len(arr), over=over)
    half = float(stats.t.ppf((1 + level) / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return Estimate(mean, mean - half, mean + half, len(arr), over)


def difference(kit: Estimate, control: Estimate, paired: bool = False) -> Estimate:
    """kit - control. ``paired``: both are bootstraps of the same resamples (the same prompts, the same seeds and
    the same bootstrap seed), so the draws subtract; otherwise the unpaired, conservative interval
    [kit.low - control.high, kit.high - control.low]."""
    value = kit.value - control.value
    if paired and len(kit.draws) and len(kit.draws) == len(control.draws):
        return from_draws(value, kit.draws - control.draws, kit.n, kit.over)
    (kl, kh), (cl, ch) = kit.bounds(), control.bounds()
    return Estimate(value, kl - ch, kh - cl, kit.n, f"{kit.over} (unpaired)".strip())


def hierarchical(estimates: Sequence[Estimate], reps: int = REPS, seed: int = SEED,
                 level: float = LEVEL) -> Estimate:
    """Several seeds' bootstrap estimates combined: the mean of their values, with the two-stage bootstrap interval
    (resample seeds with replacement, then for each drawn seed one of its own prompt resamples). Estimates without
    draws fall back to :func:`t_interval` of their values."""
    values = np.array([e.value for e in estimates], dtype=float)
    value = float(values.mean())
    k = len(estimates)
    if not all(map(math.isfinite, values)):
        return Estimate(math.nan, n=k, over="seeds")
    if not all(len(e.draws) for e in estimates):
        return t_interval(values)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, k, (reps, k))
    picks = rng.integers(0, 1 << 62, (reps, k))
    draws = np.empty((reps, k))
    for s, e in enumerate(estimates):
        take = seeds == s
        draws[take] = e.draws[picks[take] % len(e.draws)]
    return from_draws(value, draws.mean(-1), k, "seeds x prompts", level)


def stratified(statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray], sizes: Mapping[str, int],
               reps: int = REPS, seed: int = SEED, level: float = LEVEL) -> Estimate:
    """Percentile bootstrap resampling items within each stratum (``sizes``: items per stratum); ``statistic``
    takes {stratum: index array [..., n]} and reduces the last axis."""
    rng = np.random.default_rng(seed)
    value = float(np.asarray(statistic({t: np.arange(n) for t, n in sizes.items()})))
    draws = np.asarray(statistic({t: rng.integers(0, n, (reps, n)) for t, n in sizes.items()}), dtype=float)
    return from_draws(value, draws, int(sum(sizes.values())), "prompts", level)


def over_strata(estimates: Sequence[Estimate], over: str = "strata", level: float = LEVEL) -> Estimate:
    """The mean of ``estimates`` from strata that are not replicates of each other (e.g. the depths of a run): the
    value is the mean of their values; the interval is the percentile interval of the mean of their draws (each
    stratum's own resamples, which must be independent: give each stratum's bootstrap its own seed). Estimates
    without draws fall back to the mean of their bounds (the strata taken as perfectly correlated)."""
    values = np.array([e.value for e in estimates], dtype=float)
    n = int(sum(e.n for e in estimates))
    if not len(values) or not np.isfinite(values).all():
        return Estimate(math.nan, n=n, over=over)
    value = float(values.mean())
    sizes = {len(e.draws) for e in estimates}
    if len(sizes) == 1 and 0 not in sizes:
        return from_draws(value, np.mean([e.draws for e in estimates], axis=0), n, over, level)
    lows, highs = zip(*(e.bounds() for e in estimates))
    return Estimate(value, float(np.mean(lows)), float(np.mean(highs)), n, over)


#: how :func:`one_model` marks an estimate's ``over``
ONE_MODEL = ", one model"


def one_model(estimate: Estimate | None) -> Estimate | None:
    """``estimate`` marked as resting on one trained model (its interval is over the prompts or sequences of one
    organism; a claim about trained models would need several seeds). Idempotent; None stays None."""
    if estimate is None or on_one_model(estimate):
        return estimate
    return estimate.relabel(f"{estimate.over or 'prompts'}{ONE_MODEL}")


def on_one_model(estimate: Estimate | None) -> bool:
    """True for an estimate marked by :func:`one_model`."""
    return estimate is not None and estimate.over.endswith(ONE_MODEL)


def one_model_note(estimate: Estimate) -> str:
    """The row's note for an estimate on one model: 'one model: the interval is over prompts, not over trained
    models' (the unit as the estimate names it)."""
    unit = estimate.over.removesuffix(ONE_MODEL) or "prompts"
    return f"one model: the interval is over {unit}, not over trained models"


def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, NaN where |b| is (numerically) 0."""
    ok = np.abs(b) > 1e-12
    return np.where(ok, a / np.where(ok, b, 1.0), np.nan)


def over_seeds(estimates: Sequence[Estimate | None]) -> Estimate | None:
    """One seed: its estimate, marked as resting on one model (:func:`one_model`, when it has an interval).
    Several: the mean over seeds with the :func:`hierarchical` interval (seeds, then each seed's prompt resamples;
    a t interval over the seeds' values for estimates that are not bootstraps; NaN if any is undefined). Two
    combinations of the same seeds resample the same seeds, so their draws pair. None if any seed has none."""
    if len(estimates) == 1:
        e = estimates[0]
        return one_model(e) if e is not None and e.has_interval else e
    if any(e is None for e in estimates):
        return None
    return hierarchical(estimates)  # type: ignore[arg-type]


def paired_difference(kit: Estimate | None, control: Estimate | None) -> Estimate | None:
    """kit - control with the paired interval (both bootstraps over the same resamples: prompts and seeds); None
    when either is missing or undefined."""
    if kit is None or control is None or not (kit.finite and control.finite):
        return None
    return difference(kit, control, paired=True)


def eta_squared(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Share of the variance of ``values`` explained by ``groups`` along the last axis:
    sum_g n_g (mean_g - mean)^2 / sum (x - mean)^2 (NaN when the values are constant)."""
    mean = values.mean(-1, keepdims=True)
    between = np.zeros(values.shape[:-1])
    for g in np.unique(groups):
        member = groups == g
        n = member.sum(-1)
        mean_g = ratio((values * member).sum(-1), n)
        between = between + np.where(n > 0, n * (np.nan_to_num(mean_g) - mean[..., 0]) ** 2, 0.0)
    return ratio(between, ((values - mean) ** 2).sum(-1))
