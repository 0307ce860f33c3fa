"""Test-only stand-in for the organism registry's gen-2 interface (moescope.organisms.zoo: Pair, PAIRS, SHARED_MOE,
GEN2, partner, seeds_of) while it is not there yet: no registered pairs, every model its own only seed.

Imported by tests/conftest.py, and by notebook kernels through PYTHONPATH (as ``sitecustomize``) in the tests that
execute notebooks. Attributes the registry already has are left alone, so this does nothing once gen 2 lands.
"""
from dataclasses import dataclass


def install() -> None:
    try:
        from moescope.organisms import zoo
    except ImportError:  # a kernel started without the kit on its path
        return

    @dataclass(frozen=True)
    class Pair:
        depth: int
        seed: int
        moe: str
        dense: str

    stand_ins = {"Pair": Pair, "PAIRS": (), "SHARED_MOE": None, "GEN2": (),
                 "partner": lambda name: None, "seeds_of": lambda name: [name]}
    for name, value in stand_ins.items():
        if not hasattr(zoo, name):
            setattr(zoo, name, value)


install()
