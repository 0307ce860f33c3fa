"""Verdicts on a paper's claims, decided by rules fixed before anything runs.

A :class:`Claim` is data: where the paper says it, the paper's value, the statistic the kit computes, the decision
rule, the control it is compared against, and the preconditions a model and data set must meet for the claim to be
testable at all. :func:`decide` turns a claim plus the kit's :class:`Estimate` (a value with an interval) into one
row whose verdict is exactly one of

    reproduced | not reproduced | not testable: <the unmet precondition, computed from the model and data>

No free text decides a verdict; a row's ``note`` may explain it. Intervals are percentile bootstraps over prompts
(:func:`bootstrap`) or t-intervals over seeds (:func:`over_seeds`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable"
LEVEL = 0.95
COLUMNS = ["paper", "where", "claim", "model", "statement", "paper_value", "statistic", "kit", "kit_low", "kit_high",
           "n", "over", "control", "control_value", "control_low", "control_high", "rule", "verdict", "note"]


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% interval [low, high] over ``n`` prompts or seeds (``over``)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    over: str = ""

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)

    def bounds(self) -> tuple[float, float]:
        """(low, high), or (value, value) when no interval was computed."""
        if math.isnan(self.low) or math.isnan(self.high):
            return self.value, self.value
        return self.low, self.high


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, reps: int = 1000, seed: int = 0,
              level: float = LEVEL, batched: bool = False) -> Estimate:
    """Percentile bootstrap over ``n`` items: value = statistic(all indices), interval from ``reps`` resamples.

    ``statistic`` receives an index array (with repeats) and must return a float; paired statistics (a drop computed
    from before and after on the same prompts) resample prompts jointly. Resamples where it is undefined are dropped.
    ``batched``: the statistic takes an index matrix [rows, n] and returns one value per row (all resamples in one
    call, the same resamples as unbatched).
    """
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    if batched:
        value = float(np.asarray(statistic(np.arange(n)[None]), dtype=float).reshape(-1)[0])
        draws = np.asarray(statistic(rng.integers(0, n, (reps, n))), dtype=float)
    else:
        value = float(statistic(np.arange(n)))
        draws = np.array([statistic(rng.integers(0, n, n)) for _ in range(reps)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return Estimate(value, n=n, over="prompts")
    tail = (1 - level) / 2
    return Estimate(value, float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)), n, "prompts")


def mean_of(values: Sequence[float], reps: int = 1000, seed: int = 0) -> Estimate:
    """The mean of per-prompt ``values`` with its bootstrap interval."""
    arr = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(arr[idx].mean()), len(arr), reps, seed)


def over_seeds(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean over seeds with a Student-t interval (no interval for a single seed)."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return Estimate(mean, n=len(arr), over="seeds")
    half = float(stats.t.ppf((1 + level) / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return Estimate(mean, mean - half, mean + half, len(arr), "seeds")


@dataclass(frozen=True)
class Rule:
    """A decision rule: the claim is reproduced iff ``test(kit, control)``; ``text`` states it for the report."""

    text: str
    test: Callable[[Estimate, Estimate | None], bool]


def _need(control: Estimate | None) -> Estimate:
    if control is None:
        raise ValueError("this rule compares against a control, but none was given")
    return control


def exceeds_control(margin: float = 0.0) -> Rule:
    """Reproduced iff the kit's interval lies above the control's: kit.low > control.high + margin."""
    return Rule(f"kit interval above the control's (margin {margin:g})",
                lambda kit, c: kit.bounds()[0] > _need(c).bounds()[1] + margin)


def below_control(margin: float = 0.0) -> Rule:
    """Reproduced iff the kit's interval lies below the control's: kit.high < control.low - margin."""
    return Rule(f"kit interval below the control's (margin {margin:g})",
                lambda kit, c: kit.bounds()[1] < _need(c).bounds()[0] - margin)


def at_least(threshold: float) -> Rule:
    """Reproduced iff the whole interval is at least ``threshold``."""
    return Rule(f"kit interval >= {threshold:g}", lambda kit, c: kit.bounds()[0] >= threshold)


def above(threshold: float) -> Rule:
    """Reproduced iff the whole interval lies strictly above ``threshold`` (a direction claim)."""
    return Rule(f"kit interval > {threshold:g}", lambda kit, c: kit.bounds()[0] > threshold)


def at_most(threshold: float) -> Rule:
    """Reproduced iff the whole interval is at most ``threshold``."""
    return Rule(f"kit interval <= {threshold:g}", lambda kit, c: kit.bounds()[1] <= threshold)


def within(target: float, tolerance: float) -> Rule:
    """Reproduced iff the kit's interval overlaps [target - tolerance, target + tolerance]."""
    return Rule(f"kit interval overlaps {target:g} +/- {tolerance:g}",
                lambda kit, c: kit.bounds()[0] <= target + tolerance and kit.bounds()[1] >= target - tolerance)


def all_of(*rules: Rule) -> Rule:
    """Reproduced iff every rule holds."""
    return Rule(" and ".join(r.text for r in rules), lambda kit, c: all(r.test(kit, c) for r in rules))


@dataclass(frozen=True)
class Precondition:
    """What a model and data must satisfy for a claim to be testable.

    ``check(facts)`` returns None when met, else the reason computed from ``facts`` (e.g. "the model has 3 layers,
    needs at least 8").
    """

    text: str
    check: Callable[[Mapping[str, Any]], str | None]


def minimum(key: str, least: float, what: str) -> Precondition:
    """facts[key] >= least."""
    return Precondition(f"{what} >= {least:g}",
                        lambda f: None if f.get(key) is not None and f[key] >= least
                        else f"{what} is {_show(f.get(key))}, needs at least {least:g}")


def maximum(key: str, most: float, what: str) -> Precondition:
    """facts[key] <= most."""
    return Precondition(f"{what} <= {most:g}",
                        lambda f: None if f.get(key) is not None and f[key] <= most
                        else f"{what} is {_show(f.get(key))}, needs at most {most:g}")


def flag(key: str, what: str) -> Precondition:
    """facts[key] is true."""
    return Precondition(what, lambda f: None if f.get(key) else f"the model lacks {what}")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "unknown" if value is None else str(value)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as data (see the module docstring)."""

    id: str
    paper: str
    where: str
    statement: str
    paper_value: str
    statistic: str
    rule: Rule
    control: str = ""
    preconditions: tuple[Precondition, ...] = ()

    def unmet(self, facts: Mapping[str, Any]) -> list[str]:
        """The reasons this claim is not testable on ``facts`` (empty when testable)."""
        return [reason for p in self.preconditions if (reason := p.check(facts)) is not None]


def decide(claim: Claim, facts: Mapping[str, Any], kit: Estimate | None, control: Estimate | None = None,
           note: str = "", model: str = "") -> dict[str, Any]:
    """One report row for ``claim`` on ``model``: preconditions first, then the rule on the kit's estimate and the
    control."""
    unmet = claim.unmet(facts)
    if unmet:
        verdict = f"{NOT_TESTABLE}: {'; '.join(unmet)}"
    elif kit is None or not kit.finite:
        verdict = f"{NOT_TESTABLE}: the statistic is undefined on this model and data"
    else:
        verdict = REPRODUCED if claim.rule.test(kit, control) else NOT_REPRODUCED
    k, c = kit or Estimate(math.nan), control or Estimate(math.nan)
    return {"paper": claim.paper, "where": claim.where, "claim": claim.id, "model": model, "statement": claim.statement,
            "paper_value": claim.paper_value, "statistic": claim.statistic, "kit": k.value, "kit_low": k.low,
            "kit_high": k.high, "n": k.n, "over": k.over, "control": claim.control, "control_value": c.value,
            "control_low": c.low, "control_high": c.high, "rule": claim.rule.text, "verdict": verdict, "note": note}


def table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows from :func:`decide` as a DataFrame with the report's columns."""
    return pd.DataFrame(list(rows), columns=COLUMNS)


def show(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> pd.DataFrame:
    """Rows as a compact table to print: claim, model, paper value, kit [interval], control [interval], verdict."""
    def fmt(value: float, low: float, high: float) -> str:
        if value is None or not math.isfinite(value):
            return ""
        text = f"{value:.{digits}g}"
        return text + (f" [{low:.{digits}g}, {high:.{digits}g}]" if low is not None and math.isfinite(low) and
                       high is not None and math.isfinite(high) else "")

    t = table(rows)
    return pd.DataFrame({"claim": t.claim, "model": t.model, "paper": t.paper_value,
                         "kit": [fmt(*x) for x in zip(t.kit, t.kit_low, t.kit_high)],
                         "control": [fmt(*x) for x in zip(t.control_value, t.control_low, t.control_high)],
                         "verdict": t.verdict})


def is_verdict(text: str) -> bool:
    """True for exactly the three verdict forms."""
    return text in (REPRODUCED, NOT_REPRODUCED) or (text.startswith(f"{NOT_TESTABLE}: ") and len(text) > 14)
