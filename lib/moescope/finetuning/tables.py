"""A finished grid (a folder of run JSONs, see :mod:`.protocol`) read back as tidy DataFrames.

``runs``: one row per joint run at its validation-chosen checkpoint (``best_step``): validation, test and general
scores there, the base model's scores (the step-0 evaluation), forgetting F = general_base - general, retention
= general / general_base, and the routing of the test tokens there (:func:`routing_columns`). ``history``: one
row per run and evaluation. ``sequential``: one row per stage and domain of the sequential runs. ``raw``: the JSON
of each run (method summaries: masks, affinities).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .domains import GENERAL_PARTS
from .protocol import best_checkpoint
from .routing_eval import METRICS as ROUTING_METRICS

GENERAL_KEYS = ("all", *GENERAL_PARTS)


@dataclass
class Grid:
    """The cached results of one grid."""

    runs: pd.DataFrame
    history: pd.DataFrame
    sequential: pd.DataFrame
    raw: dict[str, dict] = field(repr=False)
    rates: dict[str, float]

    def chosen(self) -> pd.DataFrame:
        """The mixed-domain runs (N >= 2) at each method's chosen learning rate (the protocol's results)."""
        return self.runs[(self.runs.lr == self.runs.method.map(self.rates)) & (self.runs.n_domains > 1)]

    def single(self, method: str) -> pd.DataFrame:
        """``method``'s single-domain runs (N = 1) at its chosen learning rate, one row per domain and seed."""
        r = self.runs
        return r[(r.method == method) & (r.n_domains == 1) & (r.lr == self.rates.get(method))]

    def top_domains(self) -> list[str]:
        """The domains of the runs at N_max, sorted ([] for an empty grid)."""
        top = self.at()
        return sorted(top.domains.iloc[0].split("+")) if len(top) else []

    def only(self, methods) -> "Grid":
        """This grid restricted to the runs of ``methods`` (e.g. :data:`.claims.METHODS`, to leave DES-MoE's other
        readings out of a figure)."""
        keep = lambda f: f[f.method.isin(list(methods))] if len(f) else f  # noqa: E731
        return Grid(keep(self.runs), keep(self.history), keep(self.sequential), self.raw,
                    {m: r for m, r in self.rates.items() if m in methods})

    def as_desmoe(self, method: str) -> "Grid":
        """This grid with ``method``'s runs in DES-MoE's place (named 'desmoe', at ``method``'s chosen rate; the
        paper-reading DES-MoE runs left out), so that every DES-MoE statistic reads that reading of the method.
        The sequential runs are not renamed."""
        if method not in self.rates:
            raise KeyError(f"the grid holds no runs of {method!r}")
        rename = lambda f: f[f.method != "desmoe"].replace({"method": {method: "desmoe"}})  # noqa: E731
        return Grid(rename(self.runs), rename(self.history), self.sequential, self.raw,
                    self.rates | {"desmoe": self.rates[method]})

    def base_scores(self) -> pd.DataFrame:
        """Every run's step-0 evaluation (the base model on that run's data), indexed by run id."""
        return self.history[self.history.step == 0].set_index("id")

    def on_domains(self, domains: Sequence[str]) -> "Grid":
        """This grid with each run's ``test`` and ``base_test`` the mean over ``domains`` of its per-domain test
        scores (at the chosen checkpoint, and at step 0); nan where a run lacks one of them or ``domains`` is
        empty. Checkpoints stay chosen on every domain's validation score."""
        cols = [f"test_{d}" for d in domains]
        base = self.base_scores()
        if not cols or not set(cols) <= set(self.runs.columns) & set(base.columns):
            return Grid(self.runs.assign(test=math.nan, base_test=math.nan), self.history, self.sequential,
                        self.raw, self.rates)
        runs = self.runs.assign(test=self.runs[cols].mean(axis=1, skipna=False),
                                base_test=base[cols].mean(axis=1, skipna=False).reindex(self.runs.id).to_numpy())
        return Grid(runs, self.history, self.sequential, self.raw, self.rates)

    def at(self, n: int | None = None) -> pd.DataFrame:
        """Chosen-rate runs with ``n`` domains (default: the largest N)."""
        frame = self.chosen()
        return frame[frame.n_domains == (n or int(frame.n_domains.max()))]


def routing_columns(report: dict | None) -> dict:
    """A checkpoint's routing evaluation (:func:`.routing_eval.routing_report`) as flat columns: ``routing_<m>``,
    its shuffled-label null ``shuffled_<m>`` (mean) and ``shuffled_<m>_high`` (97.5%), the hidden-state null
    ``hidden_<m>``, ``jaccard_<a>|<b>`` per domain pair (names sorted), ``unhooked_agreement`` and
    ``routing_errors`` = 1 - unhooked_agreement; none for a run without it."""
    if not report:
        return {}
    out = {f"routing_{m}": report[m] for m in ROUTING_METRICS}
    for m in ROUTING_METRICS:
        out |= {f"shuffled_{m}": report["shuffled"][m]["mean"], f"shuffled_{m}_high": report["shuffled"][m]["high"]}
        if "hidden" in report:
            out[f"hidden_{m}"] = report["hidden"][m]
    out |= {f"jaccard_{pair}": value for pair, value in report["jaccard_pairs"].items()}
    agree = report["unhooked_agreement"]
    return out | {"unhooked_agreement": agree, "routing_errors": 1.0 - agree}


def _spec_columns(spec: dict) -> dict:
    return {"method": spec["method"], "lr": spec["lr"], "n_domains": len(spec["domains"]), "order": spec["order"],
            "seed": spec["seed"], "domains": "+".join(spec["domains"]), "steps": spec["steps"],
            "backbone_lr": spec.get("backbone_lr")}


def _history_rows(run: dict) -> list[dict]:
    rows = []
    for h in run["history"]:
        row = {"id": run["id"], **_spec_columns(run["spec"]), "step": h["step"], "train_seconds": h["train_seconds"],
               "val": h["val"]["avg"], "test": h["test"]["avg"], "general": h["general"]["all"]}
        row |= {f"general_{k}": h["general"].get(k) for k in GENERAL_KEYS[1:]}
        row |= {f"test_{d}": v for d, v in h["test"].items() if d != "avg"}
        rows.append(row)
    return rows


def _run_row(run: dict) -> dict:
    history = run["history"]
    pick = best_checkpoint([h["val"]["avg"] for h in history])
    best, base = history[pick], history[0]
    row = {"id": run["id"], **_spec_columns(run["spec"]), "best_step": best["step"], "val": best["val"]["avg"],
           "test": best["test"]["avg"], "general": best["general"]["all"], "base_general": base["general"]["all"],
           "base_test": base["test"]["avg"], "train_seconds": run["train_seconds"],
           "median_step_seconds": run["median_step_seconds"], "trained_params": run["trained_params"]}
    row |= {f"general_{k}": best["general"].get(k) for k in GENERAL_KEYS[1:]}
    row |= {f"test_{d}": v for d, v in best["test"].items() if d != "avg"}
    row |= routing_columns(best.get("routing"))
    row["forgetting"] = row["base_general"] - row["general"]
    row["retention"] = row["general"] / row["base_general"] if row["base_general"] else float("nan")
    return row


def _sequential_rows(run: dict) -> list[dict]:
    spec = run["spec"]
    rows = []
    for stage in run["stages"]:
        scores = stage["scores"]
        common = {"method": spec["method"], "seed": spec["seed"], "stage": stage["stage"], "trained": stage["trained"]}
        rows += [common | {"domain": d, "acc": v} for d, v in scores["test"].items() if d != "avg"]
        rows.append(common | {"domain": "general", "acc": scores["general"]["all"]})
    return rows


def load(folder: Path | str) -> Grid:
    """Read every run JSON in ``folder`` (and its chosen_rates.json)."""
    folder = Path(folder)
    rates_file = folder / "chosen_rates.json"
    if not rates_file.is_file():
        raise FileNotFoundError(f"{folder} holds no finished grid (no chosen_rates.json); run `python -m moescope "
                                "desmoe-grid` first")
    raw = {}
    for file in sorted(folder.glob("*.json")):
        if file.name != rates_file.name:
            run = json.loads(file.read_text())
            raw[run["id"]] = run
    joint = [r for r in raw.values() if r["spec"]["stage"] == "joint"]
    seq = [r for r in raw.values() if r["spec"]["stage"] == "sequential"]
    return Grid(runs=pd.DataFrame([_run_row(r) for r in joint]),
                history=pd.DataFrame([row for r in joint for row in _history_rows(r)]),
                sequential=pd.DataFrame([row for r in seq for row in _sequential_rows(r)]),
                raw=raw, rates=json.loads(rates_file.read_text())["rates"])
