"""CPU numerics are pinned (same results on AVX2 and AVX-512 machines) in every entry point."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """Ask make itself, from an empty environment, what its recipes see (a text match would miss make's parsing)."""
    probe = "probe: ; @env"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-s", "-C", str(root), "--eval", probe, "probe"], env={"PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True)
    seen = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert {k: seen.get(k) for k in numerics.PINNED} == numerics.PINNED


def test_the_command_line_choice_starts_the_command_with_native_numerics():
    """`moescope --numerics native CMD` runs CMD in a process without the pinned settings (they must be in place
    before torch's first kernel), and says so; the choice is part of `--help`."""
    out = subprocess.run([sys.executable, "-m", "moescope", "--numerics", "native", "numerics"], env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("numerics: native") and "not pinned: " in out and "MKL code branch" in out
    helptext = subprocess.run([sys.executable, "-m", "moescope", "--help"], env=_clean_env(), capture_output=True,
                              text=True, check=True).stdout
    assert all(choice in helptext for choice in numerics.CHOICES) and "3x slower" in helptext


def test_a_notebook_asking_for_other_numerics_than_its_kernel_fails_in_one_line(monkeypatch):
    monkeypatch.delenv(numerics.OPT_OUT, raising=False)
    assert numerics.require("pinned") == "pinned"  # the test process runs pinned (the Makefile sets it)
    with pytest.raises(numerics.NumericsError, match="this kernel computes with pinned numerics, the notebook asks "
                                                    "for native: numerics are fixed when torch starts"):
        numerics.require("native")
    with pytest.raises(ValueError, match="numerics must be 'pinned' or 'native', not 'fast'"):
        numerics.require("fast")
    monkeypatch.setenv(numerics.OPT_OUT, "1")
    assert numerics.require("native") == "native"
    with pytest.raises(numerics.NumericsError, match="asks for pinned"):
        numerics.require("pinned")
