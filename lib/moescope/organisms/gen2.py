"""Gen-2 organisms: 8- and 16-layer models trained on the gen-2 corpus and scored off their training prompts.

Every gen-2 organism is trained by :func:`moescope.organisms.training.train_lm` (the loop of gen 1) through its
extension points: its own batch order (epochs over the corpus, or general text first for a curriculum), a
learning-rate schedule (linear warm-up, cosine decay), and batches cut to their longest text. Its card holds the
spec (and its hash), the corpus and tokenizer hashes, the measured training time with the machine's load, a
bit-for-bit check of the first ``prefix_steps`` steps, and the held-out evaluation:

    per relation: MRR and HIT@10 of the gold object's first token over every fact on every held-out template
    (the relation file's prompt_templates and prompt_templates_zs, never trained on), and the same over the
    rarest third of its facts (frequency ranks above 2n/3).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import arch, configs, data, metrics, numerics, paths, prompts
from ..determinism import EXPERTS_IMPLEMENTATION, set_determinism
from . import training
from .corpus import Corpus, CorpusSpec
from .tokenizer import bpe_tokenizer, tokenizer_hash

PAPER_RELATIONS = tuple(data.PAPER_TASKS.values())
#: Each relation object counts as this many occurrences of a frequent word when the tokenizer is trained.
OBJECT_WORD_COUNT = 400
EVAL_PROTOCOL = ("gold object's first token ranked at the prompt's last position; every fact on every held-out "
                 "template (the relation file's prompt_templates + prompt_templates_zs, none trained on); "
                 "'rare' = the rarest third of each relation's facts (frequency rank > 2n/3)")

StepExtras = Callable[[nn.Module, Corpus], dict]


@dataclass(frozen=True)
class Gen2Spec(training.OrganismSpec):
    """A gen-2 organism: ``group`` names the design shared by its seeds; ``partner`` its depth-matched partner;
    ``rope_theta`` / ``rms_norm_eps`` override the family's defaults (so that a pair's attention is identical)."""

    group: str = ""
    role: str = ""
    partner: str = ""
    warmup: int = 100
    final_lr: float = 0.1
    curriculum: int = 0
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    vocab_size: int = 1024
    prefix_steps: int = 20
    rope_theta: float | None = None
    rms_norm_eps: float | None = None


def spec_hash(spec: Gen2Spec, extra: dict | None = None) -> str:
    """First 16 hex digits of sha256 over the spec's fields (and ``extra``, e.g. a plant)."""
    blob = repr(sorted((asdict(spec) | (extra or {})).items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@lru_cache(maxsize=4)
def gen2_data(corpus_spec: CorpusSpec = CorpusSpec(), vocab_size: int = 1024) -> tuple[Corpus, object]:
    """The corpus over every relation file and its BPE tokenizer (objects counted as frequent words)."""
    corpus = Corpus(data.load_relations(), corpus_spec)
    objects = sorted(set(corpus.facts.object))
    tokenizer = bpe_tokenizer(corpus.texts + [f" {o}" for o in objects] * OBJECT_WORD_COUNT, vocab_size)
    return corpus, tokenizer


def lr_scale(spec: Gen2Spec) -> Callable[[int], float]:
    """Multiplier of step s (0-based): (s+1)/warmup during warm-up, then cosine from 1 down to ``final_lr``."""

    def scale(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        t = (step - spec.warmup) / max(1, spec.max_steps - spec.warmup)
        return spec.final_lr + (1 - spec.final_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return scale


def batches(corpus: Corpus, spec: Gen2Spec, lengths: torch.Tensor, bucket: int = 16) -> Iterator[torch.Tensor]:
    """Text indices per step: ``spec.curriculum`` steps of epochs over the general texts, then epochs over all.

    Each epoch is a seeded permutation cut into chunks of ``bucket`` batches; within a chunk texts are sorted by
    token length (``lengths``) and cut into batches, which are then shuffled, so a batch pads little.
    """
    gen = torch.Generator().manual_seed(spec.seed)
    general = torch.tensor([i for i, k in enumerate(corpus.train.kind) if k != "fact"])
    every = torch.arange(len(corpus.train))
    queue: list[torch.Tensor] = []
    for step in range(spec.max_steps):
        if step == spec.curriculum:
            queue = []
        if not queue:
            pool = general if step < spec.curriculum else every
            for chunk in pool[torch.randperm(len(pool), generator=gen)].split(spec.batch * bucket):
                chunk = chunk[torch.argsort(lengths[chunk], stable=True)].split(spec.batch)
                queue += [chunk[i] for i in torch.randperm(len(chunk), generator=gen).tolist()]
            queue.reverse()
        yield queue.pop()


def heldout_scores(model: nn.Module, tokenizer, corpus: Corpus, batch_size: int = 512) -> pd.DataFrame:
    """Every fact on every held-out template with the gold first token's rank (and the fact's rank and count)."""
    frame = corpus.heldout()
    enc = prompts.encode(tokenizer, list(frame.prompt), list(frame.object), prompts.context_length(model))
    logits = metrics.last_token_logits(model, enc, batch_size=batch_size)
    n = frame.groupby("relation")["sample_id"].transform("nunique")
    return frame.assign(rank_gold=metrics.ranks(logits, enc.target_ids).numpy(), rare=frame["rank"] > 2 * n / 3)


def summarize_heldout(scores: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{relation: {mrr, hit@10, n, rare_mrr, rare_hit@10}} from :func:`heldout_scores`."""
    out = {}
    for relation, g in scores.groupby("relation"):
        every, rare = metrics.hit_mrr(g.rank_gold), metrics.hit_mrr(g.rank_gold[g.rare])
        out[relation] = {"mrr": round(every["mrr"], 4), "hit@10": round(every["hit@10"], 4), "n": len(g),
                         "rare_mrr": round(rare["mrr"], 4), "rare_hit@10": round(rare["hit@10"], 4)}
    return out


def active_params(model: nn.Module) -> dict[str, int]:
    """Parameters used per token: all, minus the (experts - top_k) unselected routed experts of each MoE layer."""
    info = arch.describe(model)
    total = int(info["params"])
    if not info["moe_layers"]:
        return {"active_params": total, "ffn_active_width": int(model.config.intermediate_size), "router_params": 0}
    e, k, w, h = int(info["experts"]), int(info["top_k"]), int(info["expert_width"]), int(info["hidden"])
    layers = int(info["moe_layers"])
    return {"active_params": total - layers * (e - k) * 3 * h * w, "ffn_active_width": k * w,
            "router_params": layers * e * h}


def _build(spec: Gen2Spec, tokenizer) -> nn.Module:
    set_determinism(spec.seed)
    shape = configs.Shape(**{**asdict(spec.shape), "vocab": len(tokenizer)})
    config = configs.tiny_config(spec.family, shape)
    if spec.rope_theta is not None:
        config.rope_parameters = {**config.rope_parameters, "rope_theta": spec.rope_theta}
    if spec.rms_norm_eps is not None:
        config.rms_norm_eps = spec.rms_norm_eps
    return configs.build(config, attn="eager")


def _train(spec: Gen2Spec, model, tokenizer, corpus: Corpus, extras: dict, steps: int | None = None,
           on_step: Callable[[int, nn.Module], None] | None = None) -> int:
    lengths = torch.tensor([len(ids) for ids in tokenizer(corpus.texts)["input_ids"]])
    order = batches(corpus, spec, lengths)
    return training.train_lm(model, tokenizer, corpus.texts, spec, lambda m: False, batches=islice(order, steps),
                             lr_scale=lr_scale(spec), trim=True, on_step=on_step, **extras)


def prefix_check(spec: Gen2Spec, extras_for: StepExtras | None = None) -> dict:
    """The :class:`training.PrefixCheck` record of the first ``spec.prefix_steps`` steps of ``spec``'s training (same
    code path), for :func:`training.verify_prefix` against the card's."""
    corpus, tokenizer = gen2_data(spec.corpus, spec.vocab_size)
    model = _build(spec, tokenizer)
    check = training.PrefixCheck(model, spec.prefix_steps)
    _train(spec, model, tokenizer, corpus, extras_for(model, corpus) if extras_for else {}, steps=spec.prefix_steps,
           on_step=check)
    return check.record


def train_gen2(spec: Gen2Spec, out_dir: Path | None = None, extras_for: StepExtras | None = None,
               card_extra: dict | None = None) -> dict:
    """Train ``spec`` for its fixed budget and save it (HF format, card.json, README.md); returns the card.

    ``extras_for(model, corpus)`` may give ``step_hooks``/``extra_loss`` for :func:`training.train_lm` (planting);
    ``card_extra`` is merged into the card and the spec hash.
    """
    corpus, tokenizer = gen2_data(spec.corpus, spec.vocab_size)
    model = _build(spec, tokenizer)
    prefix = training.PrefixCheck(model, spec.prefix_steps)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    steps = _train(spec, model, tokenizer, corpus, extras_for(model, corpus) if extras_for else {},
                   on_step=prefix)
    seconds = time.perf_counter() - start
    model.eval()
    load = (load_before + os.getloadavg()[0]) / 2
    tolerance = training.calibrate_prefix(
        lambda: prefix_check(spec, extras_for),
        lambda: prefix_check(replace(spec, lr=spec.lr * training.CALIBRATION_LR_FACTOR), extras_for))
    card = _card(spec, model, tokenizer, corpus, steps, seconds, load, prefix.record | {"tolerance": tolerance})
    card |= card_extra or {}
    card["spec_hash"] = spec_hash(spec, card_extra)
    folder = out_dir or paths.ORGANISMS / spec.name
    training.save_organism(model, tokenizer, card, folder, readme=readme(card))
    return card


def _card(spec: Gen2Spec, model, tokenizer, corpus: Corpus, steps: int, seconds: float, load: float,
          prefix: dict) -> dict:
    evaluation = summarize_heldout(heldout_scores(model, tokenizer, corpus))
    paper = [evaluation[r] for r in PAPER_RELATIONS]
    return {
        "name": spec.name, "gen": 2, "spec": spec.group, "role": spec.role, "seed": spec.seed,
        "partner": spec.partner or None, "mirrors": spec.mirrors, "family": spec.family,
        "architecture": arch.describe(model), **active_params(model), "shape": asdict(spec.shape),
        "lr": spec.lr, "batch": spec.batch, "warmup": spec.warmup, "final_lr": spec.final_lr,
        "curriculum_steps": spec.curriculum, "corpus": asdict(corpus.spec),
        "experts_implementation": EXPERTS_IMPLEMENTATION, "numerics": numerics.describe(),
        "data_hash": corpus.hash(), "relations_hash": data.data_hash(corpus.relations),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "n_train_texts": len(corpus.train), "train_texts_by_kind": corpus.train.kind.value_counts().to_dict(),
        "training_steps": steps, "training_seconds": round(seconds, 1),
        "training_load_average": round(load, 2),
        "training_time_note": "measured on a shared 2-core machine; load_average is the 1-minute load while training",
        "prefix_check": prefix,
        "eval_protocol": EVAL_PROTOCOL, "eval": evaluation,
        "eval_paper_tasks": {"mrr": round(sum(e["mrr"] for e in paper) / len(paper), 4),
                             "hit@10": round(sum(e["hit@10"] for e in paper) / len(paper), 4)},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }


def readme(card: dict) -> str:
    """A short model card in markdown."""
    arch_ = card["architecture"]
    rows = "\n".join(f"| {r} | {e['mrr']:.3f} | {e['hit@10']:.3f} | {e['rare_mrr']:.3f} |"
                     for r, e in card["eval"].items())
    pair = f" Its depth-matched partner is `{card['partner']}`." if card.get("partner") else ""
    return (
        f"# {card['name']}\n\nA gen-2 moescope model organism ({card['family']}, {arch_['layers']} layers, "
        f"{arch_['params']:,} parameters, {card['active_params']:,} active per token), spec `{card['spec']}`, seed "
        f"{card['seed']}.{pair} Trained by `moescope.organisms.gen2.train_gen2` for {card['training_steps']} steps "
        f"on corpus {card['data_hash']} (tokenizer {card['tokenizer_hash']}); retrain with "
        f"`python -m moescope organisms --gen 2`.\n\nHeld-out evaluation ({card['eval_protocol']}):\n\n"
        f"| relation | MRR | HIT@10 | MRR (rare facts) |\n|---|---|---|---|\n{rows}\n"
    )
