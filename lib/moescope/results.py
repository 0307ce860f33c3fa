"""Results written atomically (never a half-written file), and a notebook's key numbers as JSON beside its
executed copy (read back by the tests and the report)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from . import numerics


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pd.DataFrame):
        return _plain(value.to_dict(orient="records"))
    return value


def _atomic(path: Path | str, write: Callable[[IO[str]], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(path: Path | str, data: Any) -> Path:
    """Write ``data`` (dicts, lists, numbers, DataFrames) as JSON via a temporary file and a rename."""
    return _atomic(path, lambda f: json.dump(_plain(data), f, indent=2, sort_keys=True))


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` via a temporary file and a rename."""
    return _atomic(path, lambda f: f.write(text))


def write_csv_atomic(path: Path | str, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV via a temporary file and a rename."""
    return _atomic(path, lambda f: frame.to_csv(f, index=False))


def record(name: str, metrics: dict[str, Any], out_dir: Path | str) -> Path:
    """Save a notebook's key numbers as ``<out_dir>/<name>.metrics.json``, with the numerics that produced them
    (``"numerics"``: pinned or native, :func:`moescope.numerics.current`)."""
    return write_json_atomic(Path(out_dir) / f"{name}.metrics.json", {"numerics": numerics.current(), **metrics})


def load(name: str, out_dir: Path | str) -> dict[str, Any]:
    """Read back what :func:`record` wrote."""
    return json.loads((Path(out_dir) / f"{name}.metrics.json").read_text())
