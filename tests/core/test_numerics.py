"""CPU numerics are pinned (same results on AVX2 and AVX-512 machines) in every entry point."""
import json
import os
import subprocess
import sys
from pathlib import Path

from moescope import numerics

CHECK = "import moescope, torch; torch.randn(4, 4) @ torch.randn(4, 4); from moescope import numerics; print(numerics.problems())"


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED and k != numerics.OPT_OUT}
    return env | extra


def test_numerics_are_pinned_in_the_test_process():
    assert numerics.problems() == []


def test_importing_moescope_pins_them_before_torch_runs():
    out = subprocess.run([sys.executable, "-c", CHECK], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_moescope_after_torch_still_pins_mkl():
    code = "import torch\n" + CHECK
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_check_fails_when_numerics_are_native():
    code = "import torch; torch.randn(4, 4) @ torch.randn(4, 4); from moescope import numerics; print(numerics.problems())"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{numerics.OPT_OUT: "1"}),
                         capture_output=True, text=True, check=True)
    assert "MKL code branch" in out.stdout and "expected 'COMPATIBLE'" in out.stdout


def test_jupyter_kernel_spec_carries_the_settings():
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    assert json.loads(spec.read_text())["env"] == numerics.PINNED


def test_makefile_exports_the_same_settings():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text().replace("\\\n", " ")
    line = next(l for l in makefile.splitlines() if l.startswith("NUMERICS :="))
    assert dict(kv.split("=") for kv in line.removeprefix("NUMERICS :=").split()) == numerics.PINNED
