"""CPU numerics that do not depend on the instruction set, pinned before torch runs its first kernel.

Machines of one kind come with different CPUs (Intel with AVX-512, AMD with AVX2 only). Left alone, PyTorch
dispatches its vectorised kernels to the widest instruction set (so sums, exponentials and random normals round
differently), and MKL picks a different matrix-multiply code path per CPU vendor and width. Training is chaotic, so
a last-bit difference becomes a different model after a few hundred steps. moescope therefore pins:

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's vectorised kernels use AVX2 on every x86 CPU that has it;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the one code branch MKL offers on Intel and
  AMD alike (it refuses its AVX2 branch on AMD); about 1.5x slower matrix products on these small models;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN kernels (bf16 paths) at most AVX2;
- 2 OpenMP/MKL threads, never adjusted at run time (``MKL_DYNAMIC``/``OMP_DYNAMIC`` off: MKL's conditions for
  reproducible results across systems); training steps use one (see :mod:`moescope.determinism`).

The variables must be in the environment before torch's first kernel call: ``import moescope`` sets them (when not
set already), and the Makefile, the Jupyter kernel spec and the runner set them too. ``moescope --numerics native``
(or ``MOESCOPE_NATIVE_NUMERICS=1``) opts out: faster, but results then depend on the CPU (:data:`CHOICES`).
:func:`problems` says what is not in effect.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

#: environment variable -> pinned value
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
OPT_OUT = "MOESCOPE_NATIVE_NUMERICS"
#: the two numerics a user chooses between (``moescope --numerics``), and what each costs
CHOICES: dict[str, str] = {
    "pinned": "results identical on every CPU of this machine class (Intel AVX-512 and AMD), the kit's default and "
              "what its organisms and committed notebook outputs are checked against; matrix products take MKL's "
              "COMPATIBLE branch, about 3x slower on these CPUs",
    "native": "the CPU's fastest kernels (about 3x faster CPU analyses of large models); results then differ between "
              "CPU kinds in the last bits, and retrained weights differ",
}
_MKL_CBWR_BRANCH, _MKL_CBWR_COMPATIBLE = 1, 3  # mkl.h: MKL_CBWR_BRANCH, MKL_CBWR_COMPATIBLE


def pin() -> None:
    """Put the pinned settings into ``os.environ`` (keeping values the user set), unless opted out.

    When torch is already imported, MKL's branch is also set directly (possible until MKL's first call).
    """
    if os.environ.get(OPT_OUT) == "1":
        return
    for key, value in PINNED.items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules and os.environ["MKL_CBWR"] == PINNED["MKL_CBWR"]:
        _mkl_call("mkl_serv_cbwr_set", _MKL_CBWR_COMPATIBLE)


def current() -> str:
    """The numerics this process asked for: "native" when opted out (``MOESCOPE_NATIVE_NUMERICS=1``), else
    "pinned" (:func:`problems` says whether the pinned settings are also in effect)."""
    return "native" if os.environ.get(OPT_OUT) == "1" else "pinned"


class NumericsError(RuntimeError):
    """A notebook asks for numerics its kernel does not compute with."""


def require(choice: str) -> str:
    """Check that this process computes with ``choice``'s numerics (a notebook's ``numerics`` parameter) and
    return it; NumericsError in one line naming how to start a kernel that does. Numerics are fixed when torch
    starts, so a running kernel cannot switch: pinned needs the kit's kernel (its spec sets :data:`PINNED`),
    native a kernel started with ``MOESCOPE_NATIVE_NUMERICS=1``."""
    if choice not in CHOICES:
        raise ValueError(f"numerics must be {' or '.join(map(repr, CHOICES))}, not {choice!r}")
    if choice != current():
        how = ("start JupyterLab with MOESCOPE_NATIVE_NUMERICS=1, or run `python -m moescope --numerics native run`"
               if choice == "native" else "start JupyterLab without MOESCOPE_NATIVE_NUMERICS, or run `python -m "
               "moescope run`")
        raise NumericsError(f"this kernel computes with {current()} numerics, the notebook asks for {choice}: "
                            f"numerics are fixed when torch starts; {how}")
    if choice == "pinned" and problems():
        raise NumericsError(f"pinned numerics are not in effect in this kernel ({problems()[0]}): use the kit's "
                            "kernel 'Python 3 (moescope)' (make setup installs it)")
    return choice


def environment(choice: str, base: dict[str, str]) -> dict[str, str]:
    """``base`` (an environment) changed so that a new process starts with ``choice``'s numerics."""
    if choice not in CHOICES:
        raise ValueError(f"unknown numerics {choice!r}; choose {' or '.join(CHOICES)}")
    env = {k: v for k, v in base.items() if k not in PINNED and k != OPT_OUT}
    return env | ({OPT_OUT: "1"} if choice == "native" else dict(PINNED))


def _mkl_call(function: str, arg: int) -> int | None:
    """Call an MKL service function of the MKL linked into libtorch_cpu; None where there is none."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return int(getattr(lib, function)(arg))
    except (OSError, AttributeError):
        return None


def _mkl_branch() -> int | None:
    """MKL's current code branch (3 = COMPATIBLE); None if unreadable."""
    return _mkl_call("mkl_serv_cbwr_get", _MKL_CBWR_BRANCH)


def problems() -> list[str]:
    """What keeps CPU results from being the same on every CPU of this machine kind (empty list: all pinned)."""
    import torch

    found = [f"{k}={os.environ.get(k)!r}, expected {v!r}" for k, v in PINNED.items() if os.environ.get(k) != v]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        found.append(f"PyTorch uses {capability} kernels, expected AVX2 (set ATEN_CPU_CAPABILITY before torch runs)")
    branch = _mkl_branch()
    if torch.backends.mkl.is_available() and branch != _MKL_CBWR_COMPATIBLE:
        found.append(f"MKL code branch is {branch}, expected {_MKL_CBWR_COMPATIBLE} (MKL_CBWR=COMPATIBLE before MKL runs)")
    if torch.get_num_threads() != int(PINNED["OMP_NUM_THREADS"]):
        found.append(f"torch uses {torch.get_num_threads()} threads, expected {PINNED['OMP_NUM_THREADS']}")
    return found


def describe() -> dict[str, str]:
    """The settings in effect, for cards and reports."""
    import torch

    return {"numerics": current(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_branch": str(_mkl_branch()),
            "threads": str(torch.get_num_threads()), **{k: os.environ.get(k, "") for k in PINNED}}
