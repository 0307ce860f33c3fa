"""Which models a claim is computed over: the seeds of a model, and depth-matched MoE / dense groups.

Organisms come from the registry (:mod:`moescope.organisms.zoo`: ``seeds_of``, ``partner``, ``PAIRS``); any
other model (hub id, local folder) is its own only seed and has no registered partner. Models given together
that the registry does not pair are grouped by depth: an MoE and a dense model with the same number of layers
form a depth-matched group. Nothing here looks at a model's name beyond asking the registry.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ..organisms import zoo


def seeds(model: str) -> list[str]:
    """The same model trained from each seed (the registry's ``seeds_of``; [model] for any other model)."""
    return list(zoo.seeds_of(model)) or [model]


def partner(model: str) -> str | None:
    """The registry's depth-matched partner of an organism (None for any other model)."""
    return zoo.partner(model)


def with_partners(models: Sequence[str], across_seeds: bool = True) -> list[str]:
    """``models``, each expanded to its seeds (when ``across_seeds``) and followed by its depth-matched partner."""
    out: list[str] = []
    for m in models:
        for name in seeds(m) if across_seeds else [m]:
            for x in (name, partner(name)):
                if x is not None and x not in out:
                    out.append(x)
    return out


def run(study: Callable[..., Any], models: Sequence[str], across_seeds: bool = True, **kwargs) -> dict[str, list]:
    """{model: [study(seed, **kwargs) for each of its seeds]} (only the model itself unless ``across_seeds``)."""
    return {m: [study(s, **kwargs) for s in (seeds(m) if across_seeds else [m])] for m in models}


@dataclass(frozen=True)
class Group:
    """MoE and dense models of one depth (and seed, when the registry pairs them)."""

    label: str
    depth: int
    moe: tuple[str, ...]
    dense: tuple[str, ...]
    pair: tuple[str, str] | None

    @property
    def models(self) -> tuple[str, ...]:
        return self.moe + self.dense


def depth_matched(table: pd.DataFrame) -> list[Group]:
    """Depth-matched groups among the models of ``table`` (columns model, moe, layers): the registry's pairs
    first, then the remaining models grouped by depth (a group needs at least one MoE and one dense model)."""
    names, groups, used = set(table.model), [], set()
    for p in zoo.PAIRS:
        if p.moe in names and p.dense in names:
            groups.append(Group(f"{p.depth} layers, seed {p.seed}", p.depth, (p.moe,), (p.dense,), (p.moe, p.dense)))
            used |= {p.moe, p.dense}
    rest = table[~table.model.isin(used)]
    for depth, g in rest.groupby("layers", sort=True):
        moe, dense = tuple(g.model[g.moe]), tuple(g.model[~g.moe])
        if moe and dense:
            pair = (moe[0], dense[0]) if len(moe) == len(dense) == 1 else None
            groups.append(Group(f"{depth} layers", int(depth), moe, dense, pair))
    return groups


def unmatched(table: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """The models of ``table`` in no group."""
    inside = {m for g in groups for m in g.models}
    return table[~table.model.isin(inside)]


def groups_table(groups: Sequence[Group]) -> pd.DataFrame:
    """The groups as a table (label, depth, MoE models, dense models, one-to-one pair)."""
    return pd.DataFrame([asdict(g) for g in groups], columns=["label", "depth", "moe", "dense", "pair"])
