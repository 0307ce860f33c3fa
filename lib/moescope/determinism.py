"""Determinism in one place: seeds, thread count and the fused-experts implementation."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

#: Expert kernels must be pinned: `eager` and `grouped_mm` train differently (their backward passes differ),
#: and `batched_mm` is 5-60x slower on CPU. `experts_implementation` is not saved in config.json.
EXPERTS_IMPLEMENTATION = "grouped_mm"
#: Results on CPU depend on the thread count (1 vs 2 threads diverge from the second training step).
DEFAULT_THREADS = 2


def set_determinism(seed: int = 0, threads: int | None = DEFAULT_THREADS) -> None:
    """Seed python, numpy and torch, use deterministic kernels, and fix the CPU thread count.

    Without deterministic kernels, two training runs in separate processes drift apart after ~25 steps
    (an accumulating backward op); ``threads=None`` leaves the thread count alone.
    """
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
