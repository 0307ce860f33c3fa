"""Where the kit's files live, computed once. Each folder can be moved with one environment variable."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _folder(variable: str, default: Path) -> Path:
    return Path(os.environ.get(variable) or default)


DATA = ROOT / "data"
RELATIONS = _folder("MOESCOPE_DATA", DATA / "relations")
ORGANISMS = _folder("MOESCOPE_ORGANISMS", ROOT / "organisms")
FIGURES = _folder("MOESCOPE_FIGURES", ROOT / "figures")
RUNS = _folder("MOESCOPE_RUNS", ROOT / "runs")
NOTEBOOKS = ROOT / "notebooks"
BENCHMARKS = ROOT / "benchmarks"
