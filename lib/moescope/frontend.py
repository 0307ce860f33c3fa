"""Whether a live Jupyter front end can show widgets, or the kernel runs headless (papermill, nbval, nbconvert).

Headless clients cannot render widgets, and ipywidgets' Output capture makes nbclient stand in for the front end
with extra messages to the kernel (a known source of stuck executions). Notebooks therefore always render a
static view and build widgets only when :func:`has_frontend` is true. The kit's runner starts kernels with
``MOESCOPE_HEADLESS=1``; set it yourself for other headless runs.
"""
from __future__ import annotations

import os

HEADLESS = "MOESCOPE_HEADLESS"


def has_frontend() -> bool:
    """True inside a Jupyter kernel that is not marked headless (``MOESCOPE_HEADLESS=1``)."""
    if os.environ.get(HEADLESS) == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
