"""Verdicts on a paper's claims, decided by rules fixed before anything runs, the same for both papers.

A :class:`Claim` is data: where the paper says it, the paper's value, the statistic the kit computes, the decision
rule, the control it is compared against, and the preconditions a model and data set must meet for the claim to be
testable at all. :func:`decide` turns a claim plus the kit's :class:`Estimate` (a value with its 95% interval) into
one row whose verdict is exactly one of four outcomes:

    reproduced       the interval lies inside the paper's band, or wholly on the claimed side of the threshold
    not reproduced   the interval is disjoint from the band, or wholly on the wrong side of the threshold
    inconclusive     the interval straddles an edge; the row's note says what would decide it (the interval
                     half-width needed)
    not testable: <the unmet precondition, computed from the model and data>

A rule is a region the statistic must lie in (:class:`Rule`: ``low``/``high``, open or closed); a rule against a
control tests the difference kit - control, paired over the same prompts and seeds where the caller measured both
on them (``diff``), else the conservative unpaired difference of the two intervals. No width requirement exists
apart from the rule: a wide interval that overlaps the band is inconclusive, one that misses it is not reproduced.

Preconditions are of two kinds. Structural ones (depth, a shared expert, the paper's checkpoint) make a claim not
testable whatever the result. Gates on a baseline (``null_only``: a ceiling, a floor, a minimum effect of the
baseline method) may turn only an inconclusive result into not testable: a ceiling can hide an effect, it cannot
fake one, so a detected effect or a clear miss stands (the note names the gate it was decided despite).

No free text decides a verdict. Intervals come from :mod:`moescope.statistics`; an estimate that rests on one
trained model (:func:`moescope.statistics.one_model`) gets the note "one model: the interval is over prompts, not
over trained models" in its row, for both papers alike.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import statistics
from .statistics import LEVEL, Estimate

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = "reproduced", "not reproduced", "inconclusive", "not testable"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
#: what a claim row is: one of the papers' claims, a control family (attributed vs random units), or a check of the
#: method itself (an identity, a planted ground truth), tallied apart
ROLES = ("claim", "control", "self-check")
#: a row's reading of its claim: "" for the paper's own (LPI through the frozen final-norm scale, every layer), else
#: the variant it was computed under (another lens, layer 0 set apart); tallies count the paper's reading only
PAPER_READING = ""
COLUMNS = ["paper", "where", "claim", "model", "reading", "statement", "paper_value", "statistic", "kit", "kit_low", "kit_high",
           "n", "over", "control", "control_value", "control_low", "control_high", "diff", "diff_low", "diff_high",
           "rule", "verdict", "note", "role"]


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, reps: int = 1000, seed: int = 0,
              level: float = LEVEL, batched: bool = False) -> Estimate:
    """:func:`moescope.statistics.bootstrap` (kept here for callers of the verdict layer)."""
    return statistics.bootstrap(statistic, n, reps, seed, level, batched)


def mean_of(values: Sequence[float], reps: int = 1000, seed: int = 0) -> Estimate:
    """:func:`moescope.statistics.mean_of`."""
    return statistics.mean_of(values, reps, seed)


def over_seeds(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean over seeds with a Student-t interval (:func:`moescope.statistics.t_interval`)."""
    return statistics.t_interval(values, level)


def _g(x: float) -> str:
    return f"{x:.3g}"


@dataclass(frozen=True)
class Rule:
    """A decision rule: the statistic must lie in the region from ``low`` to ``high`` (``open_low``/``open_high``:
    strict ends). ``versus_control``: the statistic is kit - control. ``parts``: every part must hold (then the
    region fields are unused). ``text`` states the rule for the report."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    versus_control: bool = False
    parts: tuple[Rule, ...] = ()

    @property
    def uses_control(self) -> bool:
        return self.versus_control or any(p.uses_control for p in self.parts)

    def outcome(self, kit: Estimate, control: Estimate | None = None,
                diff: Estimate | None = None) -> tuple[str, str]:
        """(reproduced | not reproduced | inconclusive, what would decide an inconclusive result)."""
        if self.parts:
            results = [p.outcome(kit, control, diff) for p in self.parts]
            kinds = [r[0] for r in results]
            if NOT_REPRODUCED in kinds:
                return NOT_REPRODUCED, ""
            if all(k == REPRODUCED for k in kinds):
                return REPRODUCED, ""
            return INCONCLUSIVE, "; ".join(w for k, w in results if k == INCONCLUSIVE and w)
        est = kit
        if self.versus_control:
            est = diff if diff is not None else statistics.difference(kit, _need(control))
        return _place(est, self)

    def test(self, kit: Estimate, control: Estimate | None = None) -> bool:
        """True iff the rule's outcome is reproduced (the difference to a control taken unpaired)."""
        return self.outcome(kit, control)[0] == REPRODUCED


def _place(est: Estimate, r: Rule) -> tuple[str, str]:
    """Where the interval of ``est`` lies relative to the region of ``r``."""
    lo, hi = est.bounds()
    a, b = r.low, r.high
    above_a = lo > a if r.open_low else lo >= a
    below_b = hi < b if r.open_high else hi <= b
    if above_a and below_b:
        return REPRODUCED, ""
    if (hi <= a if r.open_low else hi < a) or (lo >= b if r.open_high else lo > b):
        return NOT_REPRODUCED, ""
    x = est.value
    inside = (x > a if r.open_low else x >= a) and (x < b if r.open_high else x <= b)
    room = min(x - a, b - x) if inside else (a - x if x < a else x - b)
    what = "kit - control" if r.versus_control else "the interval"
    if not math.isfinite(room) or room <= 0:
        return INCONCLUSIVE, f"{what} is centred on the rule's edge: no interval width decides it"
    verdict = REPRODUCED if inside else NOT_REPRODUCED
    return INCONCLUSIVE, (f"{what} straddles the rule's edge; a {LEVEL:.0%} half-width below {_g(room)} (now "
                          f"{_g(est.half_width())}) would make it {verdict}")


def _need(control: Estimate | None) -> Estimate:
    if control is None:
        raise ValueError("this rule compares against a control, but none was given")
    return control


def exceeds_control(margin: float = 0.0) -> Rule:
    """kit - control > margin (paired difference where given, else kit.low - control.high > margin)."""
    return Rule(f"kit - control > {margin:g}", low=margin, open_low=True, versus_control=True)


def below_control(margin: float = 0.0) -> Rule:
    """kit - control < -margin."""
    return Rule(f"kit - control < {-margin:g}", high=-margin, open_high=True, versus_control=True)


def at_least(threshold: float) -> Rule:
    """The statistic is at least ``threshold``."""
    return Rule(f"kit >= {threshold:g}", low=threshold)


def above(threshold: float) -> Rule:
    """The statistic lies strictly above ``threshold`` (a direction claim)."""
    return Rule(f"kit > {threshold:g}", low=threshold, open_low=True)


def below(threshold: float) -> Rule:
    """The statistic lies strictly below ``threshold`` (a direction claim)."""
    return Rule(f"kit < {threshold:g}", high=threshold, open_high=True)


def at_most(threshold: float) -> Rule:
    """The statistic is at most ``threshold``."""
    return Rule(f"kit <= {threshold:g}", high=threshold)


def within(target: float, tolerance: float) -> Rule:
    """The statistic lies in the band [target - tolerance, target + tolerance]."""
    return Rule(f"kit in {target:g} +/- {tolerance:g}", low=target - tolerance, high=target + tolerance)


def all_of(*rules: Rule) -> Rule:
    """Reproduced iff every rule is; not reproduced iff one is not; else inconclusive."""
    return Rule(" and ".join(r.text for r in rules), parts=tuple(rules))


@dataclass(frozen=True)
class Precondition:
    """What a model and data must satisfy for a claim to be testable.

    ``check(facts)`` returns None when met, else the reason computed from ``facts`` (e.g. "the model has 3 layers,
    needs at least 8"). ``null_only``: a gate on a baseline (ceiling, floor, the baseline's own effect), which may
    turn only an inconclusive result into not testable (see the module docstring).
    """

    text: str
    check: Callable[[Mapping[str, Any]], str | None]
    null_only: bool = False
    keys: tuple[str, ...] = ()  #: the facts it reads (checked against the paper's fact type: :func:`check_facts`)

    def gate(self) -> Precondition:
        """This precondition as a baseline gate (``null_only``)."""
        return Precondition(self.text, self.check, True, self.keys)


def minimum(key: str, least: float, what: str) -> Precondition:
    """facts[key] >= least."""
    return Precondition(f"{what} >= {least:g}",
                        lambda f: None if f.get(key) is not None and f[key] >= least
                        else f"{what} is {_show(f.get(key))}, needs at least {least:g}", keys=(key,))


def maximum(key: str, most: float, what: str) -> Precondition:
    """facts[key] <= most."""
    return Precondition(f"{what} <= {most:g}",
                        lambda f: None if f.get(key) is not None and f[key] <= most
                        else f"{what} is {_show(f.get(key))}, needs at most {most:g}", keys=(key,))


def flag(key: str, what: str) -> Precondition:
    """facts[key] is true."""
    return Precondition(what, lambda f: None if f.get(key) else f"the model lacks {what}", keys=(key,))


def check_facts(claims: Iterable[Claim], facts_type: type) -> None:
    """Raise ValueError if a precondition of ``claims`` reads a fact that ``facts_type`` (a TypedDict: the one
    definition of a paper's facts) does not declare, so a misspelt key fails at import, not as '... is unknown'."""
    known = set(facts_type.__annotations__)
    bad = sorted({f"{c.id}: {k}" for c in claims for p in c.preconditions for k in p.keys if k not in known})
    if bad:
        raise ValueError(f"preconditions read facts that {facts_type.__name__} does not declare: {', '.join(bad)}")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "unknown" if value is None else str(value)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as data (see the module docstring); ``role``: one of :data:`ROLES`."""

    id: str
    paper: str
    where: str
    statement: str
    paper_value: str
    statistic: str
    rule: Rule
    control: str = ""
    preconditions: tuple[Precondition, ...] = ()
    role: str = "claim"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"claim {self.id}: role {self.role!r} is not one of {ROLES}")

    def unmet(self, facts: Mapping[str, Any], gates: bool = True) -> list[str]:
        """The reasons this claim is not testable on ``facts`` (empty when testable); ``gates``: include the
        baseline gates (else only the structural preconditions)."""
        return [reason for p in self.preconditions if (gates or not p.null_only)
                and (reason := p.check(facts)) is not None]

    def unmet_gates(self, facts: Mapping[str, Any]) -> list[str]:
        """The unmet baseline gates (``null_only`` preconditions)."""
        return [reason for p in self.preconditions if p.null_only and (reason := p.check(facts)) is not None]


def decide(claim: Claim, facts: Mapping[str, Any], kit: Estimate | None, control: Estimate | None = None,
           note: str = "", model: str = "", diff: Estimate | None = None, reading: str = PAPER_READING) -> dict[str, Any]:
    """One report row for ``claim`` on ``model``: structural preconditions first, then the rule on the kit's
    estimate (or on kit - control: ``diff`` when the caller paired them over the same prompts and seeds, else the
    unpaired difference), then the baseline gates, which turn only an inconclusive result into not testable.
    ``reading``: the variant the estimate was computed under (:data:`PAPER_READING` for the paper's own)."""
    notes = [note] if note else []
    unmet = claim.unmet(facts, gates=False)
    if claim.rule.uses_control and control is not None and diff is None and kit is not None and kit.finite \
            and control.finite:
        diff = statistics.difference(kit, control)
    if unmet:
        verdict = f"{NOT_TESTABLE}: {'; '.join(unmet)}"
    elif kit is None or not kit.finite:
        verdict = f"{NOT_TESTABLE}: the statistic is undefined on this model and data"
    elif claim.rule.uses_control and (diff is None or not diff.finite):
        verdict = f"{NOT_TESTABLE}: the control is undefined on this model and data"
    else:
        verdict, decides = claim.rule.outcome(kit, control, diff)
        gates = claim.unmet_gates(facts)
        if verdict == INCONCLUSIVE and gates:
            verdict = f"{NOT_TESTABLE}: {'; '.join(gates)}"
        elif verdict == INCONCLUSIVE:
            notes.append(f"inconclusive: {decides}")
        elif gates:
            notes.append(f"decided although {'; '.join(gates)} (a gate hides only a null result)")
        if claim.rule.uses_control and diff is not None:
            notes.append("kit - control " + ("paired over the same " + diff.over if "unpaired" not in diff.over
                                             else "unpaired (the two intervals' extremes)"))
    if kit is not None and kit.finite and statistics.on_one_model(kit):
        notes.append(statistics.one_model_note(kit))
    k, c, d = kit or Estimate(math.nan), control or Estimate(math.nan), diff or Estimate(math.nan)
    return {"paper": claim.paper, "where": claim.where, "claim": claim.id, "model": model, "reading": reading,
            "statement": claim.statement,
            "paper_value": claim.paper_value, "statistic": claim.statistic, "kit": k.value, "kit_low": k.low,
            "kit_high": k.high, "n": k.n, "over": k.over, "control": claim.control, "control_value": c.value,
            "control_low": c.low, "control_high": c.high, "diff": d.value, "diff_low": d.low, "diff_high": d.high,
            "rule": claim.rule.text, "verdict": verdict, "note": "; ".join(notes), "role": claim.role}


def table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows from :func:`decide` as a DataFrame with the report's columns."""
    return pd.DataFrame(list(rows), columns=COLUMNS)


def show(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> pd.DataFrame:
    """Rows as a compact table to display: claim, model, reading (when any row has a variant), paper value, kit
    [interval], control [interval], kit - control [interval] (when any row has a control), verdict. It is a :class:`moescope.tables.Table`: as a
    notebook cell's last expression it shows as HTML with wrapping cells and the verdict in bold on its outcome's
    colour, and as the stable text ``to_string(index=False)``."""
    from .tables import Table  # tables reads verdicts' outcomes: imported here, not at the top, to avoid a cycle

    def fmt(value: float, low: float, high: float) -> str:
        if value is None or not math.isfinite(value):
            return ""
        text = f"{value:.{digits}g}"
        return text + (f" [{low:.{digits}g}, {high:.{digits}g}]" if low is not None and math.isfinite(low) and
                       high is not None and math.isfinite(high) else "")

    t = table(rows)
    out = pd.DataFrame({"claim": t.claim, "model": t.model, "reading": t.reading.fillna(""), "paper": t.paper_value,
                        "kit": [fmt(*x) for x in zip(t.kit, t.kit_low, t.kit_high)],
                        "control": [fmt(*x) for x in zip(t.control_value, t.control_low, t.control_high)],
                        "kit - control": [fmt(*x) for x in zip(t["diff"], t.diff_low, t.diff_high)],
                        "verdict": t.verdict})
    out = out if (out["kit - control"] != "").any() else out.drop(columns="kit - control")
    return Table(out if (out.reading != PAPER_READING).any() else out.drop(columns="reading"))


def kind(verdict: str) -> str:
    """The outcome of a verdict: one of :data:`OUTCOMES` (the reason of a not testable one dropped)."""
    return NOT_TESTABLE if str(verdict).startswith(NOT_TESTABLE) else str(verdict)


def is_verdict(text: str) -> bool:
    """True for exactly the four verdict forms."""
    return text in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE) or (text.startswith(f"{NOT_TESTABLE}: ") and len(text) > 14)


#: how tables of readings name the paper's own reading
PAPER_LABEL = "paper"


def reading_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's reading as tables of readings show it: the variant's name, :data:`PAPER_LABEL` for the paper's
    own (a missing reading column or value is the paper's)."""
    reading = rows.get("reading", pd.Series(PAPER_READING, index=rows.index)).fillna(PAPER_READING)
    return reading.replace(PAPER_READING, PAPER_LABEL)


def survival(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Per claim and model decided under at least one variant reading: its outcome under the paper's reading
    (column ``paper``) and under each variant (a not-testable row's reason stays in the row itself), and whether
    it is reproduced under all of them (``survives``): which claims hold beyond the paper's own reading. Claims no
    variant decided are left out."""
    t = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    empty = pd.DataFrame(columns=["claim", "model", PAPER_LABEL, "survives"])
    if t.empty:
        return empty
    t["reading"] = reading_labels(t)
    t["verdict"] = t.verdict.map(kind)
    varied = t.loc[t.reading != PAPER_LABEL, ["claim", "model"]].drop_duplicates()
    if varied.empty:
        return empty
    t = t.merge(varied, on=["claim", "model"])
    wide = t.pivot_table(index=["claim", "model"], columns="reading", values="verdict", aggfunc="first", sort=False)
    wide = wide[[PAPER_LABEL, *[c for c in wide.columns if c != PAPER_LABEL]]] if PAPER_LABEL in wide else wide
    wide["survives"] = (wide == REPRODUCED).all(axis=1)
    return wide.reset_index()
