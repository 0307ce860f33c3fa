"""How a card's 20-step prefix check is compared: bit for bit on the CPU kind that trained the model, within a
calibrated tolerance elsewhere, and that tolerance separates a CPU kind's drift from a real change of the run."""
from __future__ import annotations

import json

import pytest

from moescope import fingerprint, paths
from moescope.organisms import training

CARDS = sorted(p for p in paths.ORGANISMS.glob("*/card.json") if "prefix_check" in json.loads(p.read_text()))


def _record(kind: str = "amd-epyc", optimizer: str = "loop", sha: str = "aa", scale: float = 1.0) -> dict:
    sketch = {"w": [1.0 * scale, 2.0, -1.0, 0.5], "b": [0.1, 0.0, 0.2, -0.3]}
    return {"steps": 20, "sha256": sha, "optimizer": optimizer, "kind": kind, "sketch": sketch,
            "tolerance": {"emulated": 1e-6, "real": 1e-2, "rtol": 1e-4, "real_change": "lr x 1.001"}}


def test_every_shipped_card_has_a_calibrated_prefix_check():
    assert len(CARDS) >= 20
    for path in CARDS:
        check = json.loads(path.read_text())["prefix_check"]
        # trained with the loop kernel (the shipped weights) on a CPU kind the kit has fingerprints of
        assert check["optimizer"] == "loop" and check["kind"] in fingerprint.recorded(), path.parent.name
        tol = check["tolerance"]
        # a CPU kind's emulated drift and a real change (lr x 1.001) lie a factor >= 3 either side of rtol
        assert tol["emulated"] * 3 <= tol["rtol"] <= tol["real"] / 3, (path.parent.name, tol)


def test_same_kind_compares_bit_for_bit():
    training.verify_prefix(_record(), _record())
    with pytest.raises(AssertionError, match="differ bit for bit"):
        training.verify_prefix(_record(), _record(sha="bb"))  # identical sketch, other weights: still a failure


def test_another_kind_compares_the_update_within_the_card_tolerance():
    training.verify_prefix(_record(), _record(kind="intel-xeon-avx512", sha="bb", scale=1 + 2e-5))
    with pytest.raises(AssertionError, match=r"relative .* > 1.00e-04; most in w"):
        training.verify_prefix(_record(), _record(kind="intel-xeon-avx512", sha="bb", scale=1.01))


def test_the_fused_kernel_is_bit_for_bit_on_every_kind():
    with pytest.raises(AssertionError, match="differ bit for bit"):
        training.verify_prefix(_record(optimizer="fused"), _record(kind="intel-xeon-avx512", optimizer="fused",
                                                                   sha="bb"))


def test_a_prefix_run_with_another_kernel_or_length_is_refused():
    with pytest.raises(AssertionError, match="with 'fused'; the card recorded 20 with 'loop'"):
        training.verify_prefix(_record(), _record(optimizer="fused"))


def test_sketch_difference_estimates_the_relative_update_difference():
    """Random projections keep the relative difference of two updates within a few percent (here 4 projections per
    tensor over 40 tensors: 160 numbers)."""
    import torch

    g = torch.Generator().manual_seed(0)
    init = {f"t{i}": torch.randn(64, 32, generator=g) for i in range(40)}
    step = {k: v + torch.randn(v.shape, generator=g) for k, v in init.items()}
    noise = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in step.items()}
    true = float(torch.cat([(noise[k] - step[k]).flatten() for k in init]).norm()
                 / torch.cat([(step[k] - init[k]).flatten() for k in init]).norm())
    rel, _ = training.sketch_difference(training.update_sketch(init, step), training.update_sketch(init, noise))
    assert rel == pytest.approx(true, rel=0.25)


def test_on_another_cpu_kind_a_square_root_drift_passes_and_a_real_change_fails():
    """The tolerance path end to end on gen-1 `olmoe-like`: its card's record read as if trained on another CPU
    kind accepts a retraining whose square roots differ by one ulp (a seed the calibration did not use) and
    rejects one with the learning rate x 1.001."""
    from dataclasses import replace

    from moescope import fingerprint
    from moescope.organisms import zoo

    spec, card = zoo.ZOO["olmoe-like"], zoo.load_card("olmoe-like")
    elsewhere = card["prefix_check"] | {"kind": "another-kind"}
    with fingerprint.other_sqrt(seed=99):
        drifted = training.prefix_check(spec)
    assert drifted["sha256"] != card["prefix_check"]["sha256"]
    training.verify_prefix(elsewhere, drifted)
    with pytest.raises(AssertionError, match="differs from the card's"):
        training.verify_prefix(elsewhere, training.prefix_check(replace(spec, lr=spec.lr * 1.001)))
