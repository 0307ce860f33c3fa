"""A planted-knowledge organism: a ground truth for expert attribution that no real model has.

Construction (OLMoE-like, two layers):

1. Base: train on every relation except the planted ones, with the planted experts blocked (never routed).
2. Plant: freeze everything except the planted experts' slices of the fused ``gate_up_proj``/``down_proj`` and
   their router rows; train on the planted relations' facts with the planted experts forced into the top-k at
   the object-predicting position, plus a router loss that selects them there (cross-entropy) and keeps them
   away from the other relations' prompts (-log(1 - p)).

So the planted facts can live nowhere but in the planted experts: attribution must rank them first, and
blocking them must collapse those relations while the others hold.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch import nn
from tqdm.auto import tqdm

from . import arch, configs, data, interventions, organisms
from .determinism import set_determinism
from .routing import RoutingEdit
from .models import ORGANISMS_DIR
from .vocab import word_tokenizer

NAME = "planted-olmoe"
SPEC = organisms.OrganismSpec(NAME, "olmoe", configs.Shape(hidden=64, layers=2, experts=8, top_k=2, expert_width=64),
                              "ground truth for expert attribution (no real counterpart)")
#: relation -> {layer: planted expert}
PLANT_LR = 1e-2
PLANT: dict[str, dict[int, int]] = {"country_capital_city": {0: 2, 1: 5}, "fruit_inside_color": {0: 6, 1: 1}}


def _by_layer(plant: dict[str, dict[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layers in plant.values():
        for layer, expert in layers.items():
            out.setdefault(layer, []).append(expert)
    return out


def _object_positions(tokenizer, prompts) -> torch.Tensor:
    return torch.tensor([len(tokenizer(p)["input_ids"]) - 1 for p in prompts])


def _mask_grads(model: nn.Module, planted: dict[int, list[int]]) -> tuple[list, list]:
    """Only planted experts' slices and router rows keep gradients; returns (trainable tensors, hook handles).

    With AdamW (weight decay 0) started here, a gradient that is always zero gives an update of exactly zero.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    params, handles = [], []
    for part in arch.layers(model):
        keep = torch.zeros(part.experts.gate_up_proj.shape[0], 1, 1)
        keep[planted.get(part.index, [])] = 1.0
        for t, m in ((part.experts.gate_up_proj, keep), (part.experts.down_proj, keep), (part.router.weight, keep[:, :, 0])):
            t.requires_grad_(True)
            handles.append(t.register_hook(lambda g, m=m: g * m))
            params.append(t)
    return params, handles


def _router_loss(router_logits, pos, plant_of_row, n_layers: int) -> torch.Tensor:
    """CE towards the planted expert at planted rows; -log(1 - p_planted) at the other rows."""
    loss = 0.0
    for layer in range(n_layers):
        logits = router_logits[layer].view(len(pos), -1, router_logits[layer].shape[-1])
        probs = logits[torch.arange(len(pos)), pos].float().softmax(-1)
        for row, target in enumerate(plant_of_row):
            if target is not None and layer in target:
                loss = loss - torch.log(probs[row, target[layer]] + 1e-9)
        planted_all = sorted({e for t in PLANT.values() for l, e in t.items() if l == layer})
        others = torch.tensor([t is None for t in plant_of_row])
        if others.any():
            loss = loss - torch.log1p(-probs[others][:, planted_all].sum(-1) + 1e-6).sum()
    return loss / len(pos)


def _plant(model, tokenizer, facts, spec, steps: int = 3000) -> int:
    """Phase 2: train the planted experts (and their router rows) until the planted facts are known."""
    planted = _by_layer(PLANT)
    params, handles = _mask_grads(model, planted)
    try:
        return _plant_loop(model, tokenizer, facts, spec, steps, planted, params)
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(True)


def _plant_loop(model, tokenizer, facts, spec, steps, planted, params) -> int:
    opt = torch.optim.AdamW(params, lr=PLANT_LR, betas=(0.9, 0.98), weight_decay=0.0)
    texts = [f"{p} {o}" for p, o in zip(facts.prompt, facts.object)]
    ids, _ = organisms._lm_batches(tokenizer, texts)
    pos = _object_positions(tokenizer, facts.prompt)
    plant_of_row = [PLANT.get(r) for r in facts.relation]
    is_planted = torch.tensor([p is not None for p in plant_of_row])
    gen = torch.Generator().manual_seed(spec.seed)
    planted_facts = facts[is_planted.numpy()]
    rows_p, rows_o = torch.where(is_planted)[0], torch.where(~is_planted)[0]
    half = spec.batch // 2
    for step in tqdm(range(1, steps + 1), desc="plant", leave=False, mininterval=2):
        # half planted facts (to learn), half others (to keep the router away from the planted experts)
        batch = torch.cat([rows_p[torch.randint(len(rows_p), (half,), generator=gen)],
                           rows_o[torch.randint(len(rows_o), (half,), generator=gen)]])
        b_ids, b_pos = ids[batch], pos[batch]
        tokens = torch.zeros_like(b_ids, dtype=torch.bool)
        tokens[torch.arange(len(batch)), b_pos] = is_planted[batch]
        labels = torch.full_like(b_ids, -100)
        target = b_ids[torch.arange(len(batch)), b_pos + 1]
        labels[torch.arange(len(batch)), b_pos + 1] = torch.where(is_planted[batch], target, -100)
        forced = {l: RoutingEdit(forced=tuple(e), tokens=tokens.view(-1)) for l, e in planted.items()}
        model.train()
        with interventions.edit_routing(model, forced):
            out = model(input_ids=b_ids, attention_mask=(b_ids != tokenizer.pad_token_id).long(), labels=labels,
                        output_router_logits=True, use_cache=False)
        loss = out.loss + _router_loss(out.router_logits, b_pos, [plant_of_row[i] for i in batch], len(planted))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % spec.eval_every == 0:
            model.eval()
            if organisms.fact_accuracy(model, tokenizer, planted_facts).min() >= spec.target_accuracy:
                return step
    return steps


def train_planted(spec: organisms.OrganismSpec = SPEC) -> dict:
    """Build the planted organism (both phases) and save it like any organism; the card records the plant."""
    set_determinism(spec.seed)
    corpus = organisms.Corpus(data.load_relations())
    tokenizer = word_tokenizer(corpus.texts)
    model = configs.build(configs.tiny_config(spec.family, configs.Shape(**{**asdict(spec.shape), "vocab": len(tokenizer)})))
    base = corpus.facts[~corpus.facts.relation.isin(list(PLANT))]
    start = time.perf_counter()
    done = lambda m: float(organisms.fact_accuracy(m, tokenizer, base).mean()) >= spec.target_accuracy  # noqa: E731
    with interventions.block_experts(model, _by_layer(PLANT)):
        base_steps = organisms.train_lm(model, tokenizer, [f"{p} {o}" for p, o in zip(base.prompt, base.object)], spec, done)
    plant_steps = _plant(model, tokenizer, corpus.facts, spec)
    seconds = time.perf_counter() - start
    model.eval()
    acc = organisms.fact_accuracy(model, tokenizer, corpus.facts)
    card = organisms._card(spec, model, corpus, base_steps + plant_steps, seconds, acc)
    card |= {"plant": PLANT, "base_steps": base_steps, "plant_steps": plant_steps}
    organisms.save_organism(model, tokenizer, card, ORGANISMS_DIR / spec.name)
    return card
