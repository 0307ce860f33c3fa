"""What the DES-MoE notebooks call first: the grid of a model, read from the shipped cache or run for it.

The shipped base organism's grid lives in ``data/desmoe/grid`` (made by ``python -m moescope desmoe-grid``); the
notebooks read it and never retrain. Any other model (organism name, local folder, hub id) gets the reduced grid
(:meth:`.protocol.GridSpec.reduced`: every method at one rate, N in {2, 6}, one order, two seeds) run into
``<out_dir>/desmoe-grid/<model>``, itself resumable.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .. import arch, paths
from . import base as base_model
from . import protocol, tables

GRID_FOLDER = paths.DATA / "desmoe" / "grid"


def folder_for(model: str, out_dir: Path | str) -> Path:
    """Where the grid of ``model`` lives: the shipped cache for the base organism, else under ``out_dir``."""
    if model == base_model.NAME:
        return GRID_FOLDER
    return Path(out_dir) / "desmoe-grid" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")


def load_grid(model: str = base_model.NAME, out_dir: Path | str = paths.RUNS, device: str = "cpu",
              dtype: str | None = None, steps: int = 60, seeds: tuple[int, ...] = (0, 1),
              jobs: int = 1) -> tuple[tables.Grid, dict]:
    """(grid, model description) for ``model``: the cached grid when there is one, else a reduced grid run now."""
    folder = folder_for(model, out_dir)
    if not (folder / "chosen_rates.json").is_file():
        if model == base_model.NAME:
            raise FileNotFoundError(f"the shipped DES-MoE grid is missing from {folder}; run `python -m moescope "
                                    "desmoe-grid` (or `make desmoe-grid`)")
        base = base_model.Base(model, base_model.shipped_corpus(), device, dtype)
        protocol.run_grid(base, folder, protocol.FULL.reduced(steps, seeds), jobs)
    described = json.loads((folder / "chosen_rates.json").read_text())["model"]
    return tables.load(folder), {"name": model, **described}


def base_for(model: str = base_model.NAME, device: str = "cpu", dtype: str | None = None) -> base_model.Base:
    """The model with the shipped corpus (for the analyses of the base model itself, e.g. the ESFT premise)."""
    return base_model.Base(model, base_model.shipped_corpus(), device, dtype)


def describe(base: base_model.Base) -> dict:
    """Architecture summary of the base model (what the claims' preconditions read), with its name."""
    return {"name": base.model, **arch.describe(base.load())}
