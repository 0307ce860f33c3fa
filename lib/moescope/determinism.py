"""Determinism in one place: seeds, thread count and the fused-experts implementation."""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: Expert kernels must be pinned: `eager` and `grouped_mm` train differently (their backward passes differ),
#: and `batched_mm` is 5-60x slower on CPU. `experts_implementation` is not saved in config.json.
EXPERTS_IMPLEMENTATION = "grouped_mm"
#: Results on CPU depend on the thread count (1 vs 2 threads diverge from the second training step).
DEFAULT_THREADS = 2
#: Training steps run on one thread: bit-identical on every machine, and two trainings can share a 2-core machine
#: (with 2 OpenMP threads per process an oversubscribed CPU runs a training step ~8x slower, not 2x).
TRAIN_THREADS = 1
#: AdamW kernels. "loop" is torch's default (for-loop) AdamW: its square root is MKL's vector-maths vsSqrt, accurate
#: to 1 ulp but chosen by MKL per CPU vendor, so the same training gives other weights on Intel than on AMD (the
#: only kernel of training that does; :mod:`moescope.fingerprint`). "fused" is the same algorithm with the CPU's
#: correctly rounded square root, identical on every CPU.
OPTIMIZER_KERNELS = ("loop", "fused")
#: The kernel of every training loop: "loop" trained every shipped organism, the DES-MoE base and its grid, so
#: their retraining stays bit for bit on the CPU kind that trained them. Switching to "fused" makes retraining
#: identical on every CPU and changes every trained weight (retrain with ``make zoo`` and ``make desmoe-grid``).
OPTIMIZER_KERNEL = "loop"


def adamw(params, lr: float, betas: tuple[float, float], weight_decay: float,
          kernel: str | None = None) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the named kernel (:data:`OPTIMIZER_KERNELS`; default :data:`OPTIMIZER_KERNEL`)."""
    kernel = kernel or OPTIMIZER_KERNEL
    if kernel not in OPTIMIZER_KERNELS:
        raise ValueError(f"unknown AdamW kernel {kernel!r}; known: {', '.join(OPTIMIZER_KERNELS)}")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=kernel == "fused")


def set_determinism(seed: int = 0, threads: int | None = DEFAULT_THREADS) -> None:
    """Seed python, numpy and torch and fix the CPU thread count (``threads=None`` leaves it alone).

    Training steps also need :func:`deterministic_kernels`.
    """
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Deterministic torch kernels on TRAIN_THREADS threads inside the block, the previous settings after it.

    Without deterministic kernels two training runs in separate processes drift apart after ~25 steps (an
    accumulating backward op); with them CPU inference is ~200x slower, so only training steps are wrapped.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(TRAIN_THREADS)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(threads)
