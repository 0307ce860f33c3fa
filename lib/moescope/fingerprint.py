"""Kernel fingerprints: the CPU kernels training uses, hashed, so that a machine can tell which CPU kind it computes
like, and a torch or MKL update that breaks identity across CPU kinds is noticed with the kernels named.

Each case draws its inputs from a fixed seed, runs one kernel (matrix products with short and long inner dimensions,
linear forward and backward, bmm, ``_grouped_mm``, cross-entropy and its backward, element-wise functions,
embedding backward, AdamW steps) and records the first 16 hex digits of the sha256 of the result's bytes. The cases
and their inputs are those of the fingerprints measured on an Intel Xeon (AVX-512) machine, so the recorded files
under ``data/cpu-fingerprints/`` compare case by case.

What they showed (torch 2.13.0, pinned numerics): every kernel of the forward and backward passes is identical on
Intel and AMD; only torch's default AdamW differs, because its square root (``Tensor.sqrt`` on float tensors) is
MKL's vector-maths ``vsSqrt``, which is accurate to 1 ulp but not correctly rounded (about 17% of results are 1 ulp
off here) and is chosen by MKL per CPU vendor whatever ``MKL_CBWR`` says. The fused AdamW kernel takes its square
root from the CPU's IEEE instruction and is bit for bit the same algorithm with a correctly rounded square root
(:func:`adamw_reference`), so it is identical on every CPU.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import paths

RECORDED = paths.DATA / "cpu-fingerprints"
#: thread counts fingerprinted: training steps run on one, analyses on two
THREADS = (1, 2)
#: cases identical on every CPU by construction (only IEEE-exact operations in a kernel compiled for the pinned
#: capability), checked against the recorded value even where only one CPU kind measured them
BY_CONSTRUCTION = ("adamw fused 3 steps", "adamw exact-sqrt reference 3 steps")
#: AdamW settings of the fingerprint's optimizer cases (those of the organisms' training)
_ADAM = {"lr": 5e-3, "betas": (0.9, 0.98), "weight_decay": 0.0}


def _h(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def _draw(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def adamw_reference(param: torch.Tensor, grads: list[torch.Tensor], lr: float, betas: tuple[float, float],
                    eps: float = 1e-8) -> torch.Tensor:
    """AdamW (no weight decay) written out, with a correctly rounded square root (numpy's):

    m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2;  p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    in torch's operation order, so it equals torch's for-loop AdamW up to the square root.
    """
    p, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        m.lerp_(g, 1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        root = torch.from_numpy(np.sqrt(v.numpy()))
        denom = (root / (1 - betas[1] ** t) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - betas[0] ** t))
    return p


def _adamw_steps(fused: bool) -> torch.Tensor:
    p = torch.nn.Parameter(_draw(8, (256, 64))[0])
    opt = torch.optim.AdamW([p], fused=fused, **_ADAM)
    for s in range(3):
        p.grad = _draw(9 + s, (256, 64))[0]
        opt.step()
    return p.detach()


def matmul_hashes(mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul) -> dict[str, str]:
    """case -> hash of the matrix-product cases (short and long inner dimensions, both operand layouts) computed
    by ``mm`` (default ``@``; :mod:`moescope.kit.branches` passes alternatives)."""
    out = {}
    for m, n, k in [(1280, 64, 64), (1280, 256, 64), (64, 64, 1280), (64, 64, 4096), (256, 64, 1280),
                    (1024, 64, 1280), (64, 1024, 1280), (8, 8, 100000), (64, 64, 17), (64, 64, 333)]:
        x, y = _draw(m * 7 + n * 3 + k, (m, k), (k, n))
        out[f"mm {m}x{k}@{k}x{n}"] = _h(mm(x, y))
        out[f"mm^T {m}x{k}@{k}x{n}"] = _h(mm(y.t().contiguous().t().t(), x.t()).t())
    return out


def _matmuls(out: dict[str, str]) -> None:
    out.update(matmul_hashes())


def _layers(out: dict[str, str]) -> None:
    x, w = _draw(1, (1280, 64), (256, 64))
    out["linear fwd"] = _h(F.linear(x, w))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.linear(xg, wg).pow(2).sum().backward()
    out["linear bwd dX"], out["linear bwd dW"] = _h(xg.grad), _h(wg.grad)
    (e,), (b,) = _draw(2, (16, 1280, 64)), _draw(3, (16, 64, 32))
    out["bmm"] = _h(torch.bmm(e, b))
    logits, = _draw(4, (1280, 1024))
    target = torch.randint(0, 1024, (1280,), generator=torch.Generator().manual_seed(5))
    lg = logits.clone().requires_grad_()
    loss = F.cross_entropy(lg, target)
    loss.backward()
    out["cross_entropy"], out["cross_entropy bwd"] = _h(loss.reshape(1)), _h(lg.grad)
    out["exp"], out["log"], out["tanh"] = _h(logits.exp()), _h(logits.abs().log()), _h(logits.tanh())
    out["silu"], out["sigmoid"], out["softmax"] = _h(F.silu(logits)), _h(logits.sigmoid()), _h(logits.softmax(-1))
    out["rsqrt"], out["sum"], out["mean sq"] = _h(logits.abs().rsqrt()), _h(logits.sum(0)), _h(logits.pow(2).mean(-1))
    out["sqrt"] = _h(logits.abs().sqrt())
    emb = torch.nn.Embedding(1024, 64)
    torch.manual_seed(6)
    torch.nn.init.normal_(emb.weight)
    ids = torch.randint(0, 1024, (128, 10), generator=torch.Generator().manual_seed(7))
    emb(ids).pow(2).sum().backward()
    out["embedding bwd"] = _h(emb.weight.grad)


def _optimizers(out: dict[str, str]) -> None:
    out["adamw 3 steps"] = _h(_adamw_steps(fused=False))
    out["adamw fused 3 steps"] = _h(_adamw_steps(fused=True))
    grads = [_draw(9 + s, (256, 64))[0] for s in range(3)]
    out["adamw exact-sqrt reference 3 steps"] = _h(adamw_reference(_draw(8, (256, 64))[0], grads, _ADAM["lr"],
                                                                   _ADAM["betas"]))
    xs, ws = _draw(10, (96, 64), (4, 64, 32))
    out["_grouped_mm"] = _h(torch._grouped_mm(xs, ws, offs=torch.tensor([24, 48, 72, 96], dtype=torch.int32)))


def compute(threads: int) -> dict[str, str]:
    """case -> hash on this machine with ``threads`` torch threads (the thread count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out: dict[str, str] = {"randn": _h(_draw(0, (64, 64))[0])}
        parts: list[Callable[[dict[str, str]], None]] = [_matmuls, _layers, _optimizers]
        for part in parts:
            part(out)
        return out
    finally:
        torch.set_num_threads(before)


def cpu_name() -> str:
    """The CPU's model name as lscpu prints it."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")


def recorded(folder: Path = RECORDED) -> dict[str, dict]:
    """CPU kind -> its recorded fingerprint ``{"cpu", "torch", "threads": {"1": {case: hash}, "2": ...}}``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


@cache
def this_machine() -> dict:
    """This machine's fingerprint in the recorded files' format (computed once per process)."""
    return {"cpu": cpu_name(), "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": {str(t): compute(t) for t in THREADS}}


def compare(mine: dict, kinds: dict[str, dict]) -> pd.DataFrame:
    """One row per (threads, case): this machine's hash, each kind's, and whether the case must match.

    ``required``: the case is identical on every recorded kind that measured it (or identical by construction),
    so a different hash here means this machine or this torch breaks cross-CPU identity in that kernel.
    """
    rows = []
    for threads, cases in mine["threads"].items():
        for case, value in cases.items():
            theirs = {k: doc["threads"].get(threads, {}).get(case) for k, doc in kinds.items()}
            measured = {k: v for k, v in theirs.items() if v is not None}
            agree = len(set(measured.values())) == 1 and (len(measured) == len(kinds) or case in BY_CONSTRUCTION)
            rows.append({"threads": int(threads), "case": case, "here": value, **theirs,
                         "required": agree, "ok": not agree or value in measured.values()})
    return pd.DataFrame(rows)


def kind(mine: dict | None = None, kinds: dict[str, dict] | None = None) -> str:
    """The recorded CPU kind whose every measured case equals this machine's, else ``"unrecorded"``."""
    mine, kinds = mine or this_machine(), recorded() if kinds is None else kinds
    for name, doc in kinds.items():
        if all(doc["threads"].get(t, {}).get(c, v) == v for t, cases in mine["threads"].items() for c, v in cases.items()):
            return name
    return "unrecorded"


@contextmanager
def other_sqrt(seed: int, share: float = 0.2) -> Iterator[None]:
    """Inside the block, float32 ``Tensor.sqrt`` returns this machine's result moved by one ulp up or down in a
    random ``share`` of the elements (seeded): what another 1-ulp-accurate vector-maths square root (another CPU
    vendor's MKL path) may return. Emulates another CPU kind for the loop AdamW kernel; restored on exit."""
    original = torch.Tensor.sqrt
    gen = torch.Generator().manual_seed(seed)

    def sqrt(self: torch.Tensor) -> torch.Tensor:
        out = original(self)
        if out.dtype != torch.float32:
            return out
        move = torch.rand(out.shape, generator=gen) < share
        up = torch.rand(out.shape, generator=gen) < 0.5
        moved = torch.where(up, torch.nextafter(out, torch.full_like(out, float("inf"))),
                            torch.nextafter(out, torch.zeros_like(out)))
        return torch.where(move & (out > 0), moved, out)

    torch.Tensor.sqrt = sqrt
    try:
        yield
    finally:
        torch.Tensor.sqrt = original
