"""What identical results cost: matrix products under each MKL branch, and one alternative, timed and fingerprinted.

The pinned numerics take MKL's COMPATIBLE branch (``MKL_CBWR=COMPATIBLE``), the one branch MKL runs alike on Intel
and AMD; the benchmark measures it about 3x slower than the native branch at real width. This module measures what
a faster reproducible path would have to beat, on this machine, each case in a fresh process (MKL reads
``MKL_CBWR`` once, at its first call):

    branch  : MKL_CBWR in {COMPATIBLE, AVX2, AVX512, AUTO} (AUTO: MKL's own choice, the native numerics)
    method  : "float32"  - x @ y in float32 (sgemm, what the models run)
              "float64"  - (x.double() @ y.double()).float(): every product of two float32 is exact in float64, the
                           sum's rounding error (about k * 2^-53 relative) is far below float32's half ulp, so the
                           float32 result depends on the summation order, hence on the branch, only where the exact
                           sum lies within that error of a float32 rounding boundary (rare, not never)
              "blocked"  - the inner dimension split into fixed blocks of :data:`BLOCK`, each block's float32
                           product by MKL, the partial products added in a fixed order (block 0 first): the long
                           reduction's order is the kit's, only each block's short one is MKL's

and for each: the matrix-product rate (TFLOP/s on ``SHAPE``), the hashes of the kernel-fingerprint matrix products
(:data:`moescope.fingerprint` cases ``mm ...``), how many of them equal those of every recorded CPU kind
(recorded under COMPATIBLE, float32) or, for the alternatives, those of the same method under COMPATIBLE here, how
many are the same under all four branches, and how many of the 1,024 rows of the timed product (about a million
float32 results, inner dimension 2,048) equal COMPATIBLE's: the fingerprint's 20 cases can miss a rare difference,
a million results rarely do. A path is a
candidate only if it is faster than COMPATIBLE float32 and its hashes equal on every CPU kind; a CPU kind not yet
measured here keeps the question open (the JSON written by :func:`main` is what the other kind's session diffs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .. import numerics
from ..results import write_json_atomic

BRANCHES = ("COMPATIBLE", "AVX2", "AVX512", "AUTO")
METHODS = ("float32", "float64", "blocked")
#: inner-dimension block of the "blocked" method
BLOCK = 64
#: (m, k, n) of the timed product
SHAPE = (1024, 2048, 1024)
REPEATS = 5


def measure_here() -> list[dict]:
    """In this process (its MKL branch already fixed): per method, the rate on :data:`SHAPE` and the fingerprint
    matrix products' hashes."""
    import torch

    from .. import fingerprint

    def blocked(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x[:, :BLOCK] @ y[:BLOCK]
        for start in range(BLOCK, x.shape[1], BLOCK):
            out += x[:, start:start + BLOCK] @ y[start:start + BLOCK]
        return out

    def product(method: str):
        if method == "float32":
            return lambda x, y: x @ y
        if method == "blocked":
            return blocked
        return lambda x, y: (x.double() @ y.double()).float()

    m, k, n = SHAPE
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    rows = []
    for method in METHODS:
        mm = product(method)
        mm(x, y)
        start = time.perf_counter()
        for _ in range(REPEATS):
            mm(x, y)
        seconds = (time.perf_counter() - start) / REPEATS
        result = mm(x, y)
        rows.append({"method": method, "tflops": 2 * m * k * n / seconds / 1e12, "hashes": fingerprint.matmul_hashes(mm),
                     "rows": [hashlib.sha256(r.numpy().tobytes()).hexdigest()[:12] for r in result],
                     "threads": torch.get_num_threads()})
    return rows


def measure(branch: str) -> list[dict]:
    """:func:`measure_here` in a fresh process with the pinned numerics but ``MKL_CBWR=branch``."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {', '.join(BRANCHES)}, not {branch!r}")
    env = {k: v for k, v in os.environ.items() if k != numerics.OPT_OUT} | dict(numerics.PINNED) | {"MKL_CBWR": branch}
    code = "import json; from moescope.kit import branches; print(json.dumps(branches.measure_here()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"MKL_CBWR={branch}: {out.stderr.strip().splitlines()[-1]}")
    return [r | {"branch": branch} for r in json.loads(out.stdout.splitlines()[-1])]


def table(measured: list[dict], kinds: dict[str, dict]) -> pd.DataFrame:
    """One row per branch and method: rate, speed-up over COMPATIBLE float32, how many fingerprint products equal
    every recorded kind's (float32) or the same method's under COMPATIBLE here (``same``, of ``cases``), how many
    are identical under every measured branch (``all_branches``), and how many rows of the timed product equal the
    same method's under COMPATIBLE here (``rows_same``, of ``rows``)."""
    by = {(r["branch"], r["method"]): r for r in measured}
    base = by[("COMPATIBLE", "float32")]["tflops"]
    rows = []
    for r in measured:
        if r["method"] == "float32":
            reference = [doc["threads"][str(r["threads"])] for doc in kinds.values()]
            against = f"recorded kinds ({', '.join(kinds)})"
        else:
            reference = [by[("COMPATIBLE", r["method"])]["hashes"]]
            against = f"COMPATIBLE {r['method']} here"
        same = sum(all(ref.get(case) == h for ref in reference) for case, h in r["hashes"].items())
        peers = [o["hashes"] for o in measured if o["method"] == r["method"]]
        agree = sum(all(o.get(case) == h for o in peers) for case, h in r["hashes"].items())
        compatible = by[("COMPATIBLE", r["method"])]["rows"]
        rows.append({"branch": r["branch"], "method": r["method"], "tflops": r["tflops"],
                     "speedup": r["tflops"] / base, "same": same, "cases": len(r["hashes"]), "against": against,
                     "all_branches": agree, "rows_same": sum(a == b for a, b in zip(r["rows"], compatible)),
                     "rows": len(r["rows"])})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m moescope.kit.branches --out DIR``: every branch and method, the table printed and written with
    the raw hashes to ``DIR/mkl_branches.json``."""
    from .. import fingerprint

    p = argparse.ArgumentParser(prog="python -m moescope.kit.branches", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for mkl_branches.json")
    args = p.parse_args(argv)
    measured = [row for b in BRANCHES for row in measure(b)]
    result = table(measured, fingerprint.recorded())
    print(f"{fingerprint.cpu_name()}, {SHAPE[0]}x{SHAPE[1]} @ {SHAPE[1]}x{SHAPE[2]}, {measured[0]['threads']} threads")
    print(result.round(3).to_string(index=False))
    write_json_atomic(args.out / "mkl_branches.json", {"cpu": fingerprint.cpu_name(), "shape": SHAPE,
                                                       "table": result.to_dict("records"),
                                                       "measured": [{k: v for k, v in r.items() if k != "rows"}
                                                                    for r in measured]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
