"""The fine-tuning entry point under `accelerate launch` with 2 CPU processes (gloo) equals its one-process run.

End to end through accelerate's launcher (process group, ranks, rank-0 evaluation and saving), float64 so the
comparison is tight: losses and saved weights (ALR heads included) within TOL of the one-process command, and the
DES-MoE summary (DGES masks) exactly equal. The per-method maths is tested in test_parallel.py; this test checks
the launch path. Measured by hand (20 steps, batch 16): losses <= 1.5e-6, weights <= 3.9e-5. About 50 s on a
loaded 2-core machine (mostly the three processes importing torch and transformers), hence slow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

TOL = 1e-4
METHODS = ("esft_token", "desmoe")
ARGS = ["--model", "desmoe-base", "--domain", "math", "--eval", "math", "--general", "shipped", "--steps", "8",
        "--batch-size", "8", "--weight-decay", "0.1", "--dtype", "float64", "--device", "cpu", "--save-model"]
ARGS += [a for m in METHODS for a in ("--method", m)]


def run(command: list[str], out) -> None:
    done = subprocess.run(command + ARGS + ["--out", str(out)], env=os.environ | {"OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_equal_one(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed (it is pinned in requirements.txt)"
    run([sys.executable, "-m", "moescope.finetuning.launch"], tmp_path / "one")
    run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "-m", "moescope.finetuning.launch"], tmp_path / "two")
    for method in METHODS:
        one, two = (json.loads((tmp_path / f / method / "result.json").read_text()) for f in ("one", "two"))
        assert (one["processes"], two["processes"]) == (1, 2)
        assert abs(one["losses"][0] - one["losses"][-1]) > 100 * TOL  # training did something
        assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"])) < TOL
        assert one["summary"] == two["summary"]
        w1, w2 = (weights(tmp_path / f / method / "model") for f in ("one", "two"))
        assert w1.keys() == w2.keys() and len(w1) > 100
        diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        assert diff < TOL, (method, diff)
