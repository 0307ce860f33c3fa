"""A planted-knowledge organism: a ground truth for expert attribution that no real model has.

An OLMoE-like model (two layers) is trained on every relation, with routing edited per token during training:

- every token of a planted relation's fact goes, in each planted layer, to that relation's planted expert
  alone (forced into the top-k; the other slots' weights set to 0);
- tokens of all other facts never reach a planted expert (blocked, so the next-best expert takes the slot);
- a router loss teaches the router the same assignment, so that without any hook it routes planted facts to
  their experts (cross-entropy) and keeps the other facts away from them (-log(1 - p_planted)).

The MoE path of a planted fact therefore runs through its planted experts only (attention, shared by all facts,
can still hold part of them): attribution must rank them first, and blocking them must collapse those relations
towards chance while the others hold.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch import nn

from .. import arch, configs, data, paths, routing
from ..determinism import set_determinism
from ..routing import RoutingEdit, routing_hook
from ..vocab import word_tokenizer
from . import training as organisms

NAME = "planted-olmoe"
SPEC = organisms.OrganismSpec(NAME, "olmoe", configs.Shape(hidden=64, layers=2, experts=8, top_k=2, expert_width=64),
                              "ground truth for expert attribution (no real counterpart)", max_steps=2000)
#: relation -> {layer: planted expert}
PLANT: dict[str, dict[int, int]] = {"country_capital_city": {0: 2, 1: 5}, "fruit_inside_color": {0: 6, 1: 1}}
ROUTER_LOSS_WEIGHT = 0.1


def planted_by_layer(plant: dict[str, dict[int, int]] = PLANT) -> dict[int, list[int]]:
    """{layer: [planted experts]} (for blocking them all)."""
    out: dict[int, list[int]] = {}
    for layers in plant.values():
        for layer, expert in layers.items():
            out.setdefault(layer, []).append(expert)
    return out


def _only_expert_pre_hook(expert: int, tokens: torch.Tensor):
    """Experts pre-hook: on ``tokens`` (flat bool), keep only ``expert``'s routing weight."""

    def pre_hook(module, args):
        hidden, idx, weights = args[:3]
        drop = tokens.view(-1, 1) & (idx != expert)
        return (hidden, idx, weights.masked_fill(drop, 0.0), *args[3:])

    return pre_hook


def _training_hooks(model: nn.Module, relations: list[str], real: torch.Tensor) -> list:
    """Per-token edits for one batch (``relations`` per row, ``real`` [B,S] non-padding tokens)."""
    parts = {p.index: p for p in arch.layers(model)}
    hooks = []
    other = torch.tensor([r not in PLANT for r in relations])[:, None] & real
    for layer, experts in planted_by_layer().items():
        router, block = parts[layer].router, RoutingEdit(blocked=tuple(experts), tokens=other.reshape(-1))
        hooks.append((router, "forward_prepend", routing_hook(block)))
        for relation, plant in PLANT.items():
            rows = torch.tensor([r == relation for r in relations])[:, None] & real
            edit = RoutingEdit(forced=(plant[layer],), tokens=rows.reshape(-1))
            hooks.append((router, "forward_prepend", routing_hook(edit)))
            hooks.append((parts[layer].experts, "pre", _only_expert_pre_hook(plant[layer], rows.reshape(-1))))
    return hooks


def router_loss(model: nn.Module, router_logits: tuple[torch.Tensor, ...], relations: list[str],
                real: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens and planted layers of -log p(planted expert) on planted facts and
    -log(1 - sum of planted experts' p) on the others (p: :func:`moescope.routing.probabilities`)."""
    losses, parts = [], arch.layers(model)
    for layer, experts in planted_by_layer().items():
        probs = routing.probabilities(parts[layer].router, router_logits[layer]).view(*real.shape, -1)
        for b, relation in enumerate(relations):
            p = probs[b][real[b]]
            if relation in PLANT:
                losses.append(-torch.log(p[:, PLANT[relation][layer]] + 1e-9).mean())
            else:
                losses.append(-torch.log1p(-p[:, experts].sum(-1).clamp(max=1 - 1e-6)).mean())
    return torch.stack(losses).mean()


def _done(tokenizer, facts, target: float):
    """Stop when every relation, planted or not, is known without any hook."""
    return lambda model: organisms.fact_accuracy(model, tokenizer, facts).min() >= target


def train_planted(spec: organisms.OrganismSpec = SPEC) -> dict:
    """Train the planted organism and save it like any organism; the card records the plant."""
    set_determinism(spec.seed)
    corpus = organisms.Corpus(data.load_relations())
    tokenizer = word_tokenizer(corpus.texts)
    shape = configs.Shape(**{**asdict(spec.shape), "vocab": len(tokenizer)})
    model = configs.build(configs.tiny_config(spec.family, shape))
    start = time.perf_counter()
    relations = list(corpus.facts.relation)
    rows_relations = lambda rows: [relations[i] for i in rows]  # noqa: E731
    steps = organisms.train_lm(
        model, tokenizer, corpus.texts, spec, _done(tokenizer, corpus.facts, spec.target_accuracy),
        step_hooks=lambda rows, real: _training_hooks(model, rows_relations(rows), real),
        extra_loss=lambda out, rows, real: ROUTER_LOSS_WEIGHT * router_loss(model, out.router_logits, rows_relations(rows), real),
    )
    model.eval()
    acc = organisms.fact_accuracy(model, tokenizer, corpus.facts)
    card = organisms._card(spec, model, corpus, steps, time.perf_counter() - start, acc) | {"plant": PLANT}
    organisms.save_organism(model, tokenizer, card, paths.ORGANISMS / spec.name)
    return card
