"""Tiny random-config models of every supported class, built in milliseconds."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from moescope import configs
from moescope.determinism import set_determinism

#: Folder whose sitecustomize.py stands in for the registry's gen-2 interface where it is missing: loaded here for
#: the tests, and put on PYTHONPATH for the notebook kernels the tests start (nbval, the any-model test).
ZOO_STUB = Path(__file__).parent / "zoo_stub"
_spec = importlib.util.spec_from_file_location("zoo_stub", ZOO_STUB / "sitecustomize.py")
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ZOO_STUB), os.environ.get("PYTHONPATH")]))

ALL_FAMILIES = configs.MOE_FAMILIES + configs.DENSE_FAMILIES


def tiny_model(family: str, dtype: torch.dtype = torch.float32, **shape):
    set_determinism(0)
    experts = "eager" if dtype == torch.float64 else "grouped_mm"  # grouped_mm has no float64 kernel
    model = configs.build(configs.tiny_config(family, configs.Shape(**shape)), experts=experts).eval()
    return model.to(dtype)


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
