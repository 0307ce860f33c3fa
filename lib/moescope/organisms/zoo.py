"""The organism zoo: which small models of each paper family the kit ships, and loading their cards.

Relative shapes follow the paper's models: Qwen1.5-MoE (24 layers, shared expert) is deeper than OLMoE
(16 layers, many experts, no shared expert); Mixtral and the dense models are deepest (32 layers).
"""
from __future__ import annotations

import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from .. import configs, paths
from . import gen2, planted
from .corpus import Corpus
from .gen2 import Gen2Spec
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


class NotTrainedError(FileNotFoundError):
    """A registered organism whose weights are not on disk (train it with the command the message names)."""


def train_command(name: str) -> str:
    """The command that trains the registered organism ``name``."""
    return f"python -m moescope organisms --gen {2 if name in GEN2_ZOO else 1} --names {name}"


def require_trained(name: str) -> str:
    """``name`` unchanged, unless it is a registered organism without saved weights: then NotTrainedError naming
    the command that trains it. Other names (local folders, hub ids) pass through to ``models.load_model``."""
    if (name in ZOO or name in GEN2_ZOO) and not (paths.ORGANISMS / name / "config.json").is_file():
        raise NotTrainedError(f"organism {name!r} is registered but not trained (no weights in "
                              f"{paths.ORGANISMS / name}); train it with `{train_command(name)}`")
    return name


def load_card(name: str) -> dict:
    """The card of a saved organism (NotTrainedError naming the training command for an untrained one)."""
    require_trained(name)
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


# --- gen 2 ------------------------------------------------------------------------------------------------------
# Depth-matched MoE / dense pairs at 8 and 16 layers (seeds: SEEDS) that differ only in the FFN: the MoE member is
# a Mixtral-class model (16 routed experts, top-4, no shared expert) and the dense member a Llama, with the same
# attention (same class of projections, RoPE theta 1e4, RMSNorm eps 1e-6) and equal active FFN width per token
# (top_k * expert_width == dense FFN width); a Qwen-MoE-like model with a small gated shared expert and 32 routed
# experts (top-4) trained with a curriculum; and the planted ground truth. Analyses use this registry (and the
# cards it reads), never the names. All are shipped trained; `make zoo` retrains what is missing or stale.

_HIDDEN, _HEADS = 64, 4
_MOE = dict(experts=16, top_k=4, expert_width=16)
_DENSE_WIDTH = _MOE["top_k"] * _MOE["expert_width"]
_SAME_ATTENTION = dict(rope_theta=10000.0, rms_norm_eps=1e-6)
#: training budget per depth (steps of ``batch`` texts); pair members and seeds share it
BUDGET: dict[int, dict] = {8: dict(max_steps=1000, batch=128, lr=5e-3, warmup=50),
                           16: dict(max_steps=1000, batch=128, lr=5e-3, warmup=100)}
#: seeds trained per depth (each pair member from each seed)
SEEDS: dict[int, tuple[int, ...]] = {8: (0, 1, 2), 16: (0, 1, 2)}
CURRICULUM = 200  # steps of general text only before the facts join (the shared-expert model)


@dataclass(frozen=True)
class Pair:
    """An MoE and a dense organism trained together: same depth, tokenizer, data, seed and active parameters."""

    depth: int
    seed: int
    moe: str
    dense: str


def _pair(depth: int, seed: int) -> Pair:
    return Pair(depth, seed, f"g2-moe-l{depth}-s{seed}", f"g2-dense-l{depth}-s{seed}")


PAIRS: tuple[Pair, ...] = tuple(_pair(d, s) for d, seeds in SEEDS.items() for s in seeds)
SHARED_MOE = "g2-qwen-moe-l8"
#: the shared-expert model from each seed (seed 0 keeps the name it shipped with)
SHARED_SEEDS: tuple[str, ...] = (SHARED_MOE, f"{SHARED_MOE}-s1", f"{SHARED_MOE}-s2")


def _pair_specs(p: Pair) -> list[Gen2Spec]:
    shape = dict(hidden=_HIDDEN, heads=_HEADS, layers=p.depth)
    common = dict(seed=p.seed, **BUDGET[p.depth], **_SAME_ATTENTION)
    return [
        Gen2Spec(p.moe, "mixtral", configs.Shape(**shape, **_MOE),
                 "MoE without shared expert (OLMoE / Mixtral style: many small routed experts)",
                 group=f"moe-l{p.depth}", role="moe", partner=p.dense, **common),
        Gen2Spec(p.dense, "llama", configs.Shape(**shape, expert_width=_DENSE_WIDTH), "dense (Llama style)",
                 group=f"dense-l{p.depth}", role="dense", partner=p.moe, **common),
    ]


def _shared_spec(name: str, seed: int) -> Gen2Spec:
    return Gen2Spec(name, "qwen2_moe", configs.Shape(hidden=_HIDDEN, heads=_HEADS, layers=8, experts=32, top_k=4,
                    expert_width=16, shared_width=32), "Qwen/Qwen1.5-MoE-A2.7B", group="qwen-moe-l8",
                    role="shared-moe", seed=seed,
                    **(BUDGET[8] | dict(curriculum=CURRICULUM, max_steps=BUDGET[8]["max_steps"] + CURRICULUM)))


_SPECS = [s for p in PAIRS for s in _pair_specs(p)] + [
    *(_shared_spec(name, seed) for seed, name in enumerate(SHARED_SEEDS)),
    *(planted.gen2_spec(BUDGET[8], seed) for seed in planted.GEN2_SEEDS),
]
#: every gen-2 organism, in training order (the first 8-layer pair, the planted and the shared-expert model first)
GEN2_ZOO: dict[str, Gen2Spec] = {s.name: s for s in sorted(_SPECS, key=lambda s: (s.seed > 0 or s.shape.layers > 8))}
GEN2: tuple[str, ...] = tuple(GEN2_ZOO)


def _pair_of(name: str) -> Pair | None:
    return next((p for p in PAIRS if name in (p.moe, p.dense)), None)


def partner(name: str) -> str | None:
    """The other member of ``name``'s registered pair (None when it has none)."""
    p = _pair_of(name)
    return None if p is None else (p.dense if name == p.moe else p.moe)


def seeds_of(name: str) -> list[str]:
    """The same pair member (or the shared-expert model) trained from every registered seed ([name] for any other)."""
    if name in SHARED_SEEDS:
        return list(SHARED_SEEDS)
    if name in planted.GEN2_NAMES:
        return list(planted.GEN2_NAMES)
    p = _pair_of(name)
    if p is None:
        return [name]
    side = "moe" if name == p.moe else "dense"
    return [getattr(q, side) for q in PAIRS if q.depth == p.depth]


def _gen2_card(name: str) -> dict | None:
    path = paths.ORGANISMS / name / "card.json"
    if "/" in name or not path.is_file():
        return None
    card = json.loads(path.read_text())
    return card if card.get("gen") == 2 else None


def _train_gen2(name: str) -> dict:
    spec = GEN2_ZOO[name]
    if spec.role == "planted":
        return planted.train_gen2_planted(spec)
    return gen2.train_gen2(spec)


def gen2_corpus(name: str) -> Corpus:
    """The corpus the gen-2 organism ``name`` is trained on (its spec's corpus spec)."""
    spec = GEN2_ZOO[name]
    return gen2.gen2_data(spec.corpus, spec.vocab_size)[0]


def _gen2_is_current(name: str) -> bool:
    """True when the saved card matches the spec and the corpus (so retraining would give the same weights)."""
    card, spec = _gen2_card(name), GEN2_ZOO[name]
    if card is None:
        return False
    corpus = gen2_corpus(name)
    extra = planted.card_extra() if spec.role == "planted" else None
    return card.get("spec_hash") == gen2.spec_hash(spec, extra) and card.get("data_hash") == corpus.hash()


def _row(card: dict) -> dict:
    return {"organism": card["name"], "spec": card["spec"], "seed": card["seed"],
            "layers": card["architecture"]["layers"], "params": card["architecture"]["params"],
            "active_params": card["active_params"], "steps": card["training_steps"],
            "seconds": card["training_seconds"], "heldout_mrr": card["eval_paper_tasks"]["mrr"],
            "heldout_hit@10": card["eval_paper_tasks"]["hit@10"]}


def ensure_gen2(names: Sequence[str] | None = None, retrain: bool = False, jobs: int = 1) -> pd.DataFrame:
    """Train the gen-2 organisms that are missing or stale (all with ``retrain``), ``jobs`` processes at a time;
    return their evaluation table. Each organism is saved when done, so an interrupted run resumes. Training
    steps run on one thread (``determinism.TRAIN_THREADS``), so the weights do not depend on ``jobs``."""
    names = list(names or GEN2)
    todo = [n for n in names if retrain or not _gen2_is_current(n)]
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="gen-2 organisms")
    if jobs <= 1 or len(todo) <= 1:
        for name in todo:
            bar.set_postfix_str(name)
            _train_gen2(name)
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for card in pool.imap_unordered(_train_gen2, todo):
                bar.set_postfix_str(card["name"])
                bar.update()
    bar.close()
    return pd.DataFrame([_row(_gen2_card(n)) for n in names])
