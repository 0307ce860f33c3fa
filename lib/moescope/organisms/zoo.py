"""The organism zoo: which small models of each paper family the kit ships, and loading their cards.

Relative shapes follow the paper's models: Qwen1.5-MoE (24 layers, shared expert) is deeper than OLMoE
(16 layers, many experts, no shared expert); Mixtral and the dense models are deepest (32 layers).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from .. import configs, paths
from .training import OrganismSpec, train_organism

ZOO: dict[str, OrganismSpec] = {s.name: s for s in (
    OrganismSpec("qwen-moe-like", "qwen2_moe", configs.Shape(hidden=64, layers=3, experts=8, top_k=2,
                 expert_width=64, shared_width=256), "Qwen/Qwen1.5-MoE-A2.7B"),
    OrganismSpec("olmoe-like", "olmoe", configs.Shape(hidden=64, layers=2, experts=16, top_k=4,
                 expert_width=64), "allenai/OLMoE-1B-7B-0924"),
    OrganismSpec("mixtral-like", "mixtral", configs.Shape(hidden=64, layers=4, experts=8, top_k=2,
                 expert_width=128), "mistralai/Mixtral-8x7B-v0.1"),
    OrganismSpec("llama-like", "llama", configs.Shape(hidden=64, layers=4, expert_width=256), "huggyllama/llama-7b"),
    OrganismSpec("qwen2-like", "qwen2", configs.Shape(hidden=64, layers=4, expert_width=256), "Qwen/Qwen1.5-7B"),
    OrganismSpec("mistral-like", "mistral", configs.Shape(hidden=64, layers=4, expert_width=256),
                 "mistralai/Mistral-7B-v0.1", seed=1),  # same shapes as llama-like: a seed of its own
)}
MOE_ORGANISMS = ("qwen-moe-like", "olmoe-like", "mixtral-like")
DENSE_ORGANISMS = ("llama-like", "qwen2-like", "mistral-like")


@dataclass(frozen=True)
class Pair:
    """An MoE and a dense organism trained together: same depth, tokenizer, data, seed and active parameters."""

    depth: int
    seed: int
    moe: str
    dense: str


#: Depth-matched pairs trained as such (none of the shipped organisms is: they are grouped by depth instead,
#: see :func:`moescope.attribution.replicas.depth_matched`).
PAIRS: tuple[Pair, ...] = ()


def _pair_of(name: str) -> Pair | None:
    return next((p for p in PAIRS if name in (p.moe, p.dense)), None)


def partner(name: str) -> str | None:
    """The other member of ``name``'s registered pair (None when it has none)."""
    p = _pair_of(name)
    return None if p is None else (p.dense if name == p.moe else p.moe)


def seeds_of(name: str) -> list[str]:
    """The same pair member trained from every registered seed ([name] for a model in no pair)."""
    p = _pair_of(name)
    if p is None:
        return [name]
    side = "moe" if name == p.moe else "dense"
    return [getattr(q, side) for q in PAIRS if q.depth == p.depth]


def load_card(name: str) -> dict:
    """The card of a saved organism."""
    return json.loads((paths.ORGANISMS / name / "card.json").read_text())


def ensure_zoo(names: Sequence[str] | None = None, retrain: bool = False) -> pd.DataFrame:
    """Train the organisms that are missing (or all with ``retrain``); return their accuracy table."""
    rows = []
    for name in tqdm(names or list(ZOO), desc="organisms"):
        folder = paths.ORGANISMS / name
        card = train_organism(ZOO[name]) if retrain or not (folder / "card.json").is_file() else load_card(name)
        rows.append({"organism": name, "mirrors": card["mirrors"], "layers": card["architecture"]["layers"],
                     "params": card["architecture"]["params"], "steps": card["training_steps"],
                     "seconds": card["training_seconds"], "accuracy": card["accuracy"]})
    return pd.DataFrame(rows)
