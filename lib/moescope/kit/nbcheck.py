"""Re-execute the notebooks on another device (one GPU, bf16 where the notebook allows) and compare their checked
outputs with the stored ones within stated tolerances: ``make test-gpu``.

The cells compared are those nbval checks (``# NBVAL_CHECK_OUTPUT``). Their text outputs (stdout and text/plain)
are sanitised with the nbval sanitize file, whitespace runs are folded (a wider number shifts a table's columns),
and the text is split into numbers and the words between them. A cell passes when the words are identical and
every pair of numbers (stored b, new a) satisfies |a - b| <= atol + rtol * |b|. Tolerances and the dtype each
notebook runs in come from an ini file (default ``tests/nbval_gpu.cfg``): a ``[default]`` section and
``[notebook <glob>]`` sections matched against the notebook's name.

    python -m moescope.kit.nbcheck --device cuda            # all notebooks, report in runs/nbcheck-cuda/
    python -m moescope.kit.nbcheck --device cpu --notebooks 00   # the same logic on the CPU
"""
from __future__ import annotations

import argparse
import configparser
import fnmatch
import math
import re
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import nbformat
import pandas as pd

from .. import paths
from . import runner

CHECK_MARK = "NBVAL_CHECK_OUTPUT"
TOLERANCES = paths.ROOT / "tests" / "nbval_gpu.cfg"
SANITIZE = paths.ROOT / "tests" / "nbval_sanitize.cfg"
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b")


@dataclass(frozen=True)
class Tolerance:
    """How a notebook is re-run and compared: its dtype and the number tolerances."""

    dtype: str
    rtol: float
    atol: float


def load_tolerances(path: Path = TOLERANCES) -> dict[str, Tolerance]:
    """{'default': ..., '<glob>': ...} from the ini file."""
    cfg = configparser.ConfigParser()
    if not cfg.read(path):
        raise FileNotFoundError(f"tolerance file {path} not found")
    out = {}
    for section in cfg.sections():
        key = section.removeprefix("notebook ").strip() if section.startswith("notebook ") else section
        s = cfg[section]
        out[key] = Tolerance(s.get("dtype", "float32"), s.getfloat("rtol"), s.getfloat("atol"))
    if "default" not in out:
        raise ValueError(f"{path} needs a [default] section")
    return out


def tolerance_for(notebook: str, tolerances: dict[str, Tolerance]) -> Tolerance:
    """The first ``[notebook <glob>]`` section matching the notebook's file name, else the default."""
    for pattern, tol in tolerances.items():
        if pattern != "default" and fnmatch.fnmatch(notebook, pattern):
            return tol
    return tolerances["default"]


def load_sanitizers(path: Path = SANITIZE) -> list[tuple[re.Pattern, str]]:
    """(regex, replacement) pairs of an nbval sanitize file."""
    cfg = configparser.ConfigParser()
    cfg.read(path)
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
        elif out.get("output_type") == "error":
            parts.append(f"ERROR {out.get('ename')}: {out.get('evalue')}")
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def split_numbers(text: str) -> tuple[list[str], list[float]]:
    """The words between numbers (whitespace folded) and the numbers of ``text``."""
    words, numbers, last = [], [], 0
    for m in _NUMBER.finditer(text):
        words.append(" ".join(text[last : m.start()].split()))
        numbers.append(float(m.group()))
        last = m.end()
    words.append(" ".join(text[last:].split()))
    return words, numbers


def compare_text(stored: str, new: str, tol: Tolerance, sanitizers=()) -> dict:
    """Compare two outputs: {'ok', 'reason', 'numbers', 'worst'} (worst = largest |a-b| / (atol + rtol |b|))."""
    for regex, replace in sanitizers:
        stored, new = regex.sub(replace, stored), regex.sub(replace, new)
    (w_old, n_old), (w_new, n_new) = split_numbers(stored), split_numbers(new)
    if w_old != w_new:
        first = next(i for i, (a, b) in enumerate(zip_longest(w_old, w_new)) if a != b)
        return {"ok": False, "reason": f"text differs: {w_old[first:first + 1]} vs {w_new[first:first + 1]}",
                "numbers": len(n_old), "worst": math.nan}
    worst = 0.0
    for b, a in zip(n_old, n_new):
        if math.isnan(a) or math.isnan(b):
            ratio = 0.0 if math.isnan(a) and math.isnan(b) else math.inf
        else:
            ratio = abs(a - b) / (tol.atol + tol.rtol * abs(b)) if a != b else 0.0
        worst = max(worst, ratio)
    ok = worst <= 1.0
    return {"ok": ok, "reason": "" if ok else f"a number differs by {worst:.2f}x its tolerance",
            "numbers": len(n_old), "worst": worst}


def _checked_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and CHECK_MARK in c.source
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def _failed(notebook: str, cell: int, reason: str) -> dict:
    return {"notebook": notebook, "cell": cell, "ok": False, "numbers": 0, "worst": math.nan, "reason": reason}


def compare_notebooks(stored: Path, new: Path, tol: Tolerance, sanitizers=()) -> pd.DataFrame:
    """One row per checked cell of ``stored``: cell index among the checked cells, ok, reason, numbers, worst."""
    old_cells, new_cells = (_checked_cells(nbformat.read(str(p), as_version=4)) for p in (stored, new))
    if len(old_cells) != len(new_cells):
        reason = f"{len(old_cells)} checked cells stored, {len(new_cells)} executed"
        return pd.DataFrame([_failed(stored.name, -1, reason)])
    rows = []
    for i, (a, b) in enumerate(zip(old_cells, new_cells)):
        if a.source != b.source:
            rows.append(_failed(stored.name, i, "cell source differs"))
            continue
        rows.append({"notebook": stored.name, "cell": i, **compare_text(_text(a), _text(b), tol, sanitizers)})
    return pd.DataFrame(rows)


def run(device: str = "cuda", selection: list[str] | None = None, tolerances: Path = TOLERANCES,
        out: Path | None = None, force: bool = False, notebooks: Path | None = None) -> pd.DataFrame:
    """Execute the selected notebooks (of ``notebooks``, default the kit's) with ``device`` (and each one's dtype)
    and compare them to the stored ones."""
    tols, sanitizers = load_tolerances(tolerances), load_sanitizers()
    out = out or paths.RUNS / f"nbcheck-{device}"
    frames = []
    for nb in runner.find_notebooks(selection, notebooks or paths.NOTEBOOKS):
        tol = tolerance_for(nb.name, tols)
        job = runner.plan([nb], None, run="", overrides={"device": device, "dtype": tol.dtype}, runs_dir=out)[0]
        try:
            if force or not job.is_done():
                runner.execute(job)
            table = compare_notebooks(nb, job.output, tol, sanitizers)
        except runner.JobFailed as failed:  # recorded like a mismatch; the other notebooks still run
            table = pd.DataFrame([_failed(nb.name, -1, failed.status)])
        frames.append(table.assign(device=device, dtype=tol.dtype, rtol=tol.rtol, atol=tol.atol))
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "nbcheck.csv", index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--notebooks", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--tolerances", type=Path, default=TOLERANCES)
    parser.add_argument("--out", type=Path, help="folder for the executed copies and nbcheck.csv")
    parser.add_argument("--force", action="store_true", help="re-execute notebooks already executed")
    args = parser.parse_args(argv)
    table = run(args.device, args.notebooks, args.tolerances, args.out, args.force)
    print(table.to_string(index=False))
    failed = table[~table.ok]
    print(f"{len(table) - len(failed)}/{len(table)} checked cells within tolerance on {args.device}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
