"""Tiny random-config models of every supported class, built in milliseconds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moescope import configs, fingerprint
from moescope.determinism import set_determinism

ALL_FAMILIES = configs.MOE_FAMILIES + configs.DENSE_FAMILIES


def _jitter_constants(model) -> None:
    """Perturb every constant-initialised tensor (norm weights, biases, correction biases) by N(0, 0.2^2) if it
    is 1, N(0, 0.02^2) if it is 0, so that a quirk the kit ignored (a (1 + w) norm, a bias, an offset) changes the
    numbers the tests compare, without letting a bias decide the routing alone."""
    g = torch.Generator().manual_seed(2)
    tensors = [p for p in model.parameters()] + [b for n, b in model.named_buffers() if "correction_bias" in n]
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point() and t.numel() > 0 and bool((t == t.flatten()[0]).all()):
                scale = 0.02 if float(t.flatten()[0]) == 0.0 else 0.2
                t.add_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))


def tiny_model(family: str, dtype: torch.dtype = torch.float32, **shape):
    set_determinism(0)
    experts = "eager" if dtype == torch.float64 else "grouped_mm"  # grouped_mm has no float64 kernel
    model = configs.build(configs.tiny_config(family, configs.Shape(**shape)), experts=experts).eval()
    _jitter_constants(model)
    return model.to(dtype)


def on_training_kind(card: dict) -> None:
    """Skip a full-length retraining (opt-in, `make test-retrain`) on a CPU kind other than the one that trained
    ``card``'s model with the "loop" AdamW kernel: thousands of steps from 1-ulp different square roots give another
    model, so bit-for-bit identity is defined only there (the 20-step prefix checks of `make test` run everywhere)."""
    check = card["prefix_check"]
    if check["optimizer"] != "fused" and check["kind"] != fingerprint.kind():
        pytest.skip(f"trained on {check['kind']} with the loop AdamW kernel; this machine is {fingerprint.kind()}")


def same_weights(a: Path, b: Path) -> bool:
    """Whether two saved models (folders with ``model.safetensors``) hold the same tensors, bit for bit."""
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def random_batch(vocab: int = 128, batch: int = 3, seq: int = 7, seed: int = 1):
    """Right-padded ids: row 1 is shorter (its last two positions are padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 2 :] = 0
    return ids, mask


@pytest.fixture(params=configs.MOE_FAMILIES)
def moe_family(request):
    return request.param


@pytest.fixture(params=ALL_FAMILIES)
def any_family(request):
    return request.param


#: markers of tests that run only when asked for by name (``pytest -m realshape``, ``-m retrain``, ``-m browser``)
OPT_IN = {
    "realshape": "random-weight models at the real width of each published config (minutes and GBs of RAM each)",
    "retrain": "full-length retraining of a shipped organism, compared bit for bit (a minute or more each)",
    "browser": "JupyterLab and the report in headless Chromium (make test-browser installs Debian's chromium)",
}


def pytest_configure(config):
    for name, what in OPT_IN.items():
        config.addinivalue_line("markers", f"{name}: {what}; deselected unless asked for with -m {name}")


def pytest_collection_modifyitems(config, items):
    """Opt-in tests (:data:`OPT_IN`) run only when their marker is named in ``-m``; everywhere else (``make test``,
    ``-m "not slow"``, ``-m slow``) they are deselected."""
    asked = config.getoption("markexpr") or ""
    skip = [name for name in OPT_IN if name not in asked]
    held = [item for item in items if any(item.get_closest_marker(name) for name in skip)]
    if held:
        config.hook.pytest_deselected(items=held)
        items[:] = [item for item in items if item not in held]
    items.sort(key=_start_rank)  # stable: every other module keeps its collection order


#: The longest scopes of ``make test`` (seconds on 2 Intel cores, two workers), started first: the workers take
#: scopes in collection order (``make test`` passes --no-loadscope-reorder), and a long notebook reached last
#: leaves the other worker idle for minutes (notebook 40 started at 263 s made the run 567 s; busy time 945 s).
LONGEST_FIRST = (
    "notebooks/40_table5_blocking.ipynb",  # 308
    "notebooks/46_attribution_methods.ipynb",  # 86
    "tests/organisms/test_gen2_zoo.py",  # 82
    "notebooks/20_depth_profile.ipynb",  # 68
    "tests/attribution/test_evidence.py",  # 52
    "tests/kit/test_runner.py",  # 45
)


def _start_rank(item) -> int:
    """Position of ``item``'s file in :data:`LONGEST_FIRST` (the others after it, in their own order)."""
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
