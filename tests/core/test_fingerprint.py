"""The kernel fingerprint of training recomputed on this machine against the recorded CPU kinds, and the AdamW
kernel that is identical on every CPU."""
from __future__ import annotations

import pytest
import torch

from moescope import determinism, fingerprint


@pytest.fixture(scope="module")
def mine():
    return fingerprint.this_machine()


def test_both_cpu_kinds_are_recorded():
    kinds = fingerprint.recorded()
    assert {"amd-epyc", "intel-xeon-avx512"} <= set(kinds)
    assert all(set(doc["threads"]) == {"1", "2"} for doc in kinds.values())


def test_kernels_identical_across_recorded_cpu_kinds_are_identical_here(mine):
    """Every kernel that the recorded kinds computed alike (or that is alike by construction) gives the same hash
    on this machine; a torch/MKL update or a new CPU that breaks cross-CPU identity fails here, naming the kernels."""
    table = fingerprint.compare(mine, fingerprint.recorded())
    bad = table[table.required & ~table.ok]
    assert bad.empty, "kernels no longer identical across CPU kinds: " + ", ".join(
        f"{r.case} ({r.threads} thread{'s' if r.threads > 1 else ''})" for r in bad.itertuples())
    assert table.required.sum() >= 70  # the forward/backward kernels of training, at 1 and 2 threads


def test_this_machine_computes_like_a_recorded_kind(mine):
    """The CPU-dependent kernels (the loop AdamW's square root) match one recorded kind exactly: this machine's
    card checks then know whether they may compare bit for bit."""
    assert fingerprint.kind(mine) in fingerprint.recorded()


def test_the_recorded_kinds_differ_only_in_the_loop_adamw():
    kinds = fingerprint.recorded()
    table = fingerprint.compare(kinds["amd-epyc"], kinds)
    measured_twice = table.dropna(subset=["intel-xeon-avx512"])
    differ = set(measured_twice.case[measured_twice["amd-epyc"] != measured_twice["intel-xeon-avx512"]])
    assert differ == {"adamw 3 steps"}


def test_fused_adamw_equals_the_exactly_rounded_reference():
    """The fused kernel is torch's AdamW with a correctly rounded square root, bit for bit (so it depends on no
    vendor's vector maths); the loop kernel is not (MKL's vsSqrt is 1 ulp off in a share of the elements)."""
    g = torch.Generator().manual_seed(3)
    start, grads = torch.randn(300, 70, generator=g), [torch.randn(300, 70, generator=g) for _ in range(4)]
    results = {}
    for kernel in determinism.OPTIMIZER_KERNELS:
        p = torch.nn.Parameter(start.clone())
        opt = determinism.adamw([p], lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0, kernel=kernel)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        results[kernel] = p.detach()
    reference = fingerprint.adamw_reference(start, grads, lr=1e-2, betas=(0.9, 0.98))
    assert torch.equal(results["fused"], reference)
    assert torch.allclose(results["loop"], reference, rtol=1e-5, atol=0)  # the same algorithm, up to the root


def test_the_loop_adamw_is_exact_on_neither_kind():
    """Both recorded kinds' loop AdamW differ from the correctly rounded reference (so neither vendor's vsSqrt is
    exact), while the fused kernel equals it: the fingerprint's diagnosis, from the recorded data."""
    for doc in fingerprint.recorded().values():
        for cases in doc["threads"].values():
            assert cases["adamw 3 steps"] != fingerprint.recorded()["amd-epyc"]["threads"]["1"]["adamw fused 3 steps"]
    amd = fingerprint.recorded()["amd-epyc"]["threads"]["1"]
    assert amd["adamw fused 3 steps"] == amd["adamw exact-sqrt reference 3 steps"]


def test_an_unknown_kernel_name_is_refused():
    with pytest.raises(ValueError, match="unknown AdamW kernel 'adam'"):
        determinism.adamw([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                          kernel="adam")


def test_other_sqrt_moves_by_at_most_one_ulp_and_is_restored_on_error():
    x = torch.rand(5000, generator=torch.Generator().manual_seed(0)) + 0.1
    original, plain = torch.Tensor.sqrt, x.sqrt()
    with pytest.raises(RuntimeError):
        with fingerprint.other_sqrt(seed=0):
            moved = x.sqrt()
            raise RuntimeError("inside")
    assert torch.Tensor.sqrt is original and torch.equal(x.sqrt(), plain)
    ulps = (moved.view(torch.int32) - plain.view(torch.int32)).abs()
    assert int(ulps.max()) == 1 and 0.15 < float((ulps > 0).float().mean()) < 0.25
