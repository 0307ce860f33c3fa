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

Gen-2 design (``g2-planted-olmoe-l8`` and its seeds ``-s1``, ``-s2``: one spec, one plant, three seeds), fixed
before training (issue 19, item 3), in an 8-layer OLMoE-like model (16 experts, top-4) on the gen-2 corpus:

==========================  =========  ============  ==========================================================
relation                    layer      experts       why
==========================  =========  ============  ==========================================================
name_birthplace             1 (early)  5 (single)    held-out MRR 0.58 against a prior of 0.14 in the shipped
                                                     planted organism; person names are no other relation's
                                                     subjects; layer 1, not 0, so that setting layer 0 apart
                                                     (the lens artefact of issue 19) leaves every plant in view
country_capital_city        4 (mid)    2, 9, 13      0.49 against 0.04; redundant triple; country_language and
                                       (redundant)   country_currency share its subjects: the hardest
                                                     unplanted controls for "spares unplanted relations"
verb_past_tense             6 (late)   3, 11         0.19 against 0.02 (0.39-0.51 in the unplanted 8-layer
                                       (redundant)   MoEs); verbs are no other relation's subjects
==========================  =========  ============  ==========================================================

The other eight relations are unplanted (fruit_inside_color, known no better than its colour prior, and
object_superclass, 0.11 against 0.10 in the shipped planted organism, are no longer planted). Priors are
:func:`moescope.attribution.tasks.prior_mrr` (objects ranked by how many of the relation's facts have them).

The plant must hold at inference, where no hook keeps other relations off it. The shipped seed-0 organism, trained
with the router loss at 0.1, did not: without hooks its routers put 0.1-0.16 of their probability on the planted
experts (planted experts in the top-4 at 30-70% of last positions) for relations they were not planted for, about
what a uniform router gives, so blocking a plant moved the other relations. Here the router loss weighs
:data:`GEN2_ROUTER_LOSS_WEIGHT` = 1.0 (ten times more), and the bound fixed before training is :data:`LEAK_BOUND`:
for the relations a layer does not plant, the router's mean probability of that layer's planted experts at the
prompt's last position (:func:`plant_leak`, held-out templates, no hook) must stay below 0.02 per relation. Notebook
45 prints it for every seed; the "spares unplanted relations" check (moescope.attribution.ground_truth) is its
behavioural counterpart, two-sided.

Outcome (recorded after training, the design unchanged): read through the model's own router logits, the loss at
1.0 reshaped the residual stream and left the first two seeds at their priors (held-out MRR of the paper's tasks
0.16-0.18), so the loss now trains the routers only (their inputs detached). The shipped seeds (training 694, 697 and
351 s on the shared 2-core machine) know their relations again (0.41-0.51), but miss LEAK_BOUND in every planted
layer: a linear router on a residual stream it may not shape does not route by relation (0.02-0.10 of the plant's
probability on other relations on average, the planted relation's own plant 0.08-0.43). The plant is where a
relation was learnt, not where the router sends it without hooks. verb_past_tense, the late plant, is not known
clearly beyond its prior over the seeds and its plant barely beats random blocking: notebook 45's preconditions make
its checks not testable.

What was tried after them (issue 19, item 3; seed 0, every fact of the corpus; none of it shipped). The routers leak
as much on their own training templates (worst relation 0.035 / 0.13 / 0.15, early / mid / late) as on held-out
ones (0.04 / 0.11 / 0.11), so it is not only a failure to generalise. :func:`router_refit` (notebook 45 prints it
per seed) shows what a router could do on the trained model's residual stream: refitted to the training templates'
last positions, a router of this shape keeps the plant to its relation there entirely, but on held-out templates
it still leaks 0.08 / 0.03 / 0.04. Five pilots, each with its rule fixed before it ran (paper-task MRR at 0.40 or
more, shipped 0.50, and the worst leak under LEAK_BOUND in every planted layer), all failed it:

- a share gamma of the router loss's gradient let into the stream (judged on held-out templates): gamma 0.1 gave
  0.18 / 0.12 / 0.03 at an MRR of 0.37, gamma 0.3 gave 0.08 / 0.07 / 0.04 at 0.33 (gamma 1: the priors, above);
- the router loss balanced over relations (each relation's tokens averaged, then the mean over relations), inputs
  still detached (judged on the training templates first, the part the refit shows a router can reach): 0.06 /
  0.08 / 0.06 at 0.37;
- the refit's own objective during training (balanced, at the position before the object only): 0.07 / 0.05 /
  0.01 on the training templates at 0.41, and 0.28 / 0.22 / 0.09 held-out, worse than shipped;
- the refitted routers swapped into the trained model (a calibration after training): 0.08 / 0.15 / 0.08 held-out
  at 0.35 (a refitted early router moves the later routers' inputs).

Shaping the stream lowers the leak and costs knowledge; reweighting or relocating the loss fits the training
templates better and generalises no better. What is left to try is data: more training templates per relation.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch import nn

from .. import arch, configs, data, paths, routing
from ..capture import capture
from ..determinism import set_determinism
from ..routing import RoutingEdit, routing_hook
from ..vocab import word_tokenizer
from . import gen2
from . import training as organisms

NAME = "planted-olmoe"
SPEC = organisms.OrganismSpec(NAME, "olmoe", configs.Shape(hidden=64, layers=2, experts=8, top_k=2, expert_width=64),
                              "ground truth for expert attribution (no real counterpart)", max_steps=2000)
#: relation -> {layer: planted expert}
PLANT: dict[str, dict[int, int]] = {"country_capital_city": {0: 2, 1: 5}, "fruit_inside_color": {0: 6, 1: 1}}
ROUTER_LOSS_WEIGHT = 0.1


def _as_tuple(experts: int | tuple[int, ...]) -> tuple[int, ...]:
    return (experts,) if isinstance(experts, int) else tuple(experts)


def planted_by_layer(plant: dict[str, dict[int, int | tuple[int, ...]]] = PLANT) -> dict[int, list[int]]:
    """{layer: [planted experts]} (for blocking them all); a plant maps a layer to one expert or a tuple of them."""
    out: dict[int, list[int]] = {}
    for layers in plant.values():
        for layer, experts in layers.items():
            out.setdefault(layer, []).extend(_as_tuple(experts))
    return out


def _only_expert_pre_hook(expert: int | tuple[int, ...], tokens: torch.Tensor):
    """Experts pre-hook: on ``tokens`` (flat bool), keep only the routing weights of ``expert`` (one or a tuple)."""
    keep = torch.tensor(_as_tuple(expert))

    def pre_hook(module, args):
        hidden, idx, weights = args[:3]
        drop = tokens.view(-1, 1) & ~torch.isin(idx, keep)
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


# --- gen 2: redundant and late-layer plants in a deep model ------------------------------------------------------
#
# In an 8-layer OLMoE-like model trained on the gen-2 corpus, each planted relation owns experts in some layers:
#
# - in a planted layer, its fact tokens go to its planted experts only (forced into the top-k, the other slots'
#   weights set to 0); a redundant plant (several experts) uses a random non-empty subset of them per batch, so each
#   planted expert learns to carry the relation alone; tokens of everything else are blocked from planted experts;
# - in every other layer its fact tokens are routed as usual, but the experts' output for them is detached: no
#   other expert learns from the relation's facts (the forward pass is unchanged, so the model needs no hook);
# - a router loss teaches every router the same assignment (cross-entropy on the planted set, -log(1 - p) for the
#   others), so that without any hook planted facts are routed to their experts.
#
# The experts that learn a planted relation are then known: exactly its planted experts (attention, shared by all
# text, can still carry part of it).

GEN2_NAME = "g2-planted-olmoe-l8"
#: the seeds of the gen-2 planted design: seed 0 keeps the name it shipped with, the others get -s<seed>
GEN2_SEEDS: tuple[int, ...] = (0, 1, 2)
GEN2_NAMES: tuple[str, ...] = tuple(GEN2_NAME if s == 0 else f"{GEN2_NAME}-s{s}" for s in GEN2_SEEDS)
#: relation -> {layer: planted experts}, fixed before training (see the module docstring, "gen-2 design"):
#: an early single expert, a mid-depth redundant triple, a late redundant pair, each on a relation the unplanted
#: 8-layer organisms know far beyond its object-frequency prior and whose subjects no other relation shares but one
#: (country_language shares the capital plant's countries: the hardest unplanted control).
GEN2_PLANT: dict[str, dict[int, tuple[int, ...]]] = {
    "name_birthplace": {1: (5,)},
    "country_capital_city": {4: (2, 9, 13)},
    "verb_past_tense": {6: (3, 11)},
}
#: weight of the router loss in the gen-2 planted training (gen 1 keeps ROUTER_LOSS_WEIGHT): ten times gen 1's 0.1,
#: under which the shipped seed-0 organism's routers put 0.1-0.16 of their probability (top-k at 40-77% of last
#: positions) on planted experts for relations they were not planted for, when no hook keeps them off
GEN2_ROUTER_LOSS_WEIGHT = 1.0


def gen2_spec(budget: dict, seed: int = 0) -> "gen2.Gen2Spec":
    """The gen-2 planted organism's spec from ``seed`` (named as in :data:`GEN2_NAMES`), with the training budget of
    the 8-layer pairs."""
    name = GEN2_NAMES[GEN2_SEEDS.index(seed)]
    return gen2.Gen2Spec(name, "olmoe", configs.Shape(hidden=64, layers=8, experts=16, top_k=4, expert_width=16),
                         "ground truth for expert attribution (no real counterpart)", group="planted-olmoe-l8",
                         role="planted", seed=seed, **budget)


def card_extra(plant: dict[str, dict[int, tuple[int, ...]]] = GEN2_PLANT) -> dict:
    """What a planted card adds to the spec (and its hash): the plant and the router loss weight."""
    return {"plant": {r: {str(l): list(e) for l, e in p.items()} for r, p in plant.items()},
            "router_loss_weight": GEN2_ROUTER_LOSS_WEIGHT, "router_loss_input": "detached"}


def _rows_of(relations: list[str], relation: str, real: torch.Tensor) -> torch.Tensor:
    return torch.tensor([r == relation for r in relations])[:, None] & real


def _detach_hook(tokens: torch.Tensor):
    """Experts forward hook: the output on ``tokens`` (flat bool) carries no gradient."""

    def hook(module, args, output):
        return torch.where(tokens.view(-1, 1), output.detach(), output)

    return hook


def _random_subset(experts: tuple[int, ...], gen: torch.Generator) -> tuple[int, ...]:
    """A non-empty random subset of ``experts``, each kept with probability 1/2 (a single expert is kept)."""
    while len(experts) > 1:
        keep = tuple(e for e, u in zip(experts, torch.rand(len(experts), generator=gen).tolist()) if u < 0.5)
        if keep:
            return keep
    return experts


def gen2_hooks(model: nn.Module, plant: dict[str, dict[int, tuple[int, ...]]], relations: list[str],
               real: torch.Tensor, gen: torch.Generator) -> list:
    """Routing edits, weight masks and gradient stops for one batch (``relations`` per row, '' for general text)."""
    hooks = []
    for parts in arch.layers(model):
        here = {r: p[parts.index] for r, p in plant.items() if parts.index in p}
        for relation, layers in plant.items():
            if parts.index not in layers:
                hooks.append((parts.experts, "forward", _detach_hook(_rows_of(relations, relation, real).reshape(-1))))
        if not here:
            continue
        other = torch.tensor([r not in here for r in relations])[:, None] & real
        blocked = tuple(e for experts in here.values() for e in experts)
        hooks.append((parts.router, "forward_prepend", routing_hook(RoutingEdit(blocked=blocked, tokens=other.reshape(-1)))))
        for relation, experts in here.items():
            rows = _rows_of(relations, relation, real).reshape(-1)
            active = _random_subset(experts, gen)
            hooks.append((parts.router, "forward_prepend", routing_hook(RoutingEdit(forced=active, tokens=rows))))
            hooks.append((parts.experts, "pre", _only_expert_pre_hook(active, rows)))
    return hooks


def gen2_router_loss(router_logits: tuple[torch.Tensor, ...], plant: dict[str, dict[int, tuple[int, ...]]],
                     relations: list[str], real: torch.Tensor) -> torch.Tensor:
    """Mean over planted layers and real tokens of -log(sum of p over the row's planted experts) on planted facts
    and -log(1 - sum of p over the layer's planted experts) on everything else."""
    losses = []
    for layer in planted_by_layer(plant):
        probs = router_logits[layer].float().softmax(-1).view(*real.shape, -1)
        own, planted_row = plant_masks(plant, layer, relations, probs.shape[-1])
        p = (probs * own[:, None, :]).sum(-1)
        loss = torch.where(planted_row[:, None], -torch.log(p + 1e-9), -torch.log1p(-p.clamp(max=1 - 1e-6)))
        losses.append(loss[real].mean())
    return torch.stack(losses).mean()


def _router_inputs_hooks(model: nn.Module, layers, store: dict) -> list:
    """Router pre-hooks that keep each planted layer's router input (the hidden states it routes) in ``store``."""
    parts = {p.index: p for p in arch.layers(model)}

    def keep(layer: int):
        def pre_hook(module, args):
            store[layer] = args[0]
        return pre_hook

    return [(parts[layer].router, "pre", keep(layer)) for layer in layers]


def gen2_extras(plant: dict[str, dict[int, tuple[int, ...]]], seed: int):
    """``extras_for`` of :func:`moescope.organisms.gen2.train_gen2`: the planting hooks and the router loss.

    The router loss reads the routers' logits recomputed from their inputs *detached*
    (:func:`moescope.routing.logits`): it trains the router weights only and never reshapes the residual stream.
    (Read through the model's own router logits at weight 1.0, its gradient through every earlier layer left the
    organisms at their priors: held-out MRR of the paper's tasks 0.16-0.18 against 0.43 at weight 0.1.)"""

    def extras_for(model: nn.Module, corpus) -> dict:
        row_relation = list(corpus.train.relation)
        rows_relations = lambda rows: [row_relation[i] for i in rows]  # noqa: E731
        gen = torch.Generator().manual_seed(seed + 1)
        parts = {p.index: p for p in arch.layers(model)}
        layers = sorted(planted_by_layer(plant))
        inputs: dict[int, torch.Tensor] = {}

        def extra_loss(out, rows, real):
            logits = [None] * (max(layers) + 1)
            for layer in layers:
                logits[layer] = routing.logits(parts[layer].router, inputs[layer].detach())
            return GEN2_ROUTER_LOSS_WEIGHT * gen2_router_loss(tuple(logits), plant, rows_relations(rows), real)

        return {
            "step_hooks": lambda rows, real: (gen2_hooks(model, plant, rows_relations(rows), real, gen)
                                              + _router_inputs_hooks(model, layers, inputs)),
            "extra_loss": extra_loss,
        }

    return extras_for


def train_gen2_planted(spec: "gen2.Gen2Spec", plant: dict[str, dict[int, tuple[int, ...]]] = GEN2_PLANT,
                       out_dir=None) -> dict:
    """Train the gen-2 planted organism and save it; the card records the plant."""
    return gen2.train_gen2(spec, out_dir, extras_for=gen2_extras(plant, spec.seed), card_extra=card_extra(plant))


def counted_experts(plant: dict[str, dict[int, tuple[int, ...]]], layer: int, relation: str) -> list[int]:
    """The experts whose summed router probability :func:`plant_leak` reads at ``layer`` for ``relation``: its own
    plant there if the layer plants it, else every expert the layer plants."""
    return list(plant[relation][layer]) if layer in plant.get(relation, {}) else planted_by_layer(plant)[layer]


def plant_masks(plant: dict[str, dict[int, tuple[int, ...]]], layer: int, relations: list[str],
                n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``relations``: which experts count at ``layer`` ([n, n_experts] bool, :func:`counted_experts`)
    and whether the layer plants the row's relation ([n] bool)."""
    counted = torch.zeros(len(relations), n_experts, dtype=torch.bool)
    for i, relation in enumerate(relations):
        counted[i, counted_experts(plant, layer, relation)] = True
    return counted, torch.tensor([layer in plant.get(r, {}) for r in relations], dtype=torch.bool)


#: the bound the router loss must meet without any hook: on held-out prompts of the relations a layer does not
#: plant, the router's mean probability of that layer's planted experts (summed) at the last position
LEAK_BOUND = 0.02


@torch.no_grad()
def plant_leak(model: nn.Module, tokenizer, plant: dict[str, dict[int, tuple[int, ...]]], frame, batch_size: int = 256):
    """How much of the plant the router picks, without any hook, for prompts it was not planted for.

    Per planted layer and scored relation (``frame``: prompt, relation): over the prompts' last positions and over
    all their tokens, the mean router probability of the layer's planted experts (summed; for the relation planted
    there, its own experts) and the fraction of positions where one of them is in the top-k. Columns: layer,
    relation, planted_here, p_last, p_all, topk_last, topk_all.
    """
    import pandas as pd

    model.eval()
    by_layer = planted_by_layer(plant)
    parts = {p.index: p for p in arch.layers(model)}
    k = arch.top_k(model)
    sums: dict[tuple[int, str], list[float]] = {}
    prompts_, relations = list(frame.prompt), list(frame.relation)
    for start in range(0, len(prompts_), batch_size):
        enc = tokenizer(prompts_[start:start + batch_size], return_tensors="pt", padding=True)
        real = enc["attention_mask"].bool()
        last = torch.zeros_like(real)
        if tokenizer.padding_side == "left":
            last[:, -1] = True
        else:
            last[torch.arange(len(real)), real.sum(1) - 1] = True
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_router_logits=True,
                    use_cache=False)
        for layer, experts in by_layer.items():
            probs = routing.probabilities(parts[layer].router, out.router_logits[layer]).view(*real.shape, -1)
            top = probs.topk(k, dim=-1).indices
            for b, relation in enumerate(relations[start:start + batch_size]):
                own = counted_experts(plant, layer, relation)
                p = probs[b][:, own].sum(-1)
                hit = torch.isin(top[b], torch.tensor(own)).any(-1).float()
                acc = sums.setdefault((layer, relation), [0.0] * 6)
                for i, (v, m) in enumerate([(p, last[b]), (p, real[b]), (hit, last[b]), (hit, real[b])]):
                    acc[i] += float(v[m].sum())
                acc[4] += float(last[b].sum())
                acc[5] += float(real[b].sum())
    rows = [{"layer": layer, "relation": relation, "planted_here": layer in plant.get(relation, {}),
             "p_last": a[0] / a[4], "p_all": a[1] / a[5], "topk_last": a[2] / a[4], "topk_all": a[3] / a[5]}
            for (layer, relation), a in sorted(sums.items())]
    return pd.DataFrame(rows)


#: L-BFGS iterations of :func:`refit_router` (each up to 25 evaluations, strong-Wolfe line search)
REFIT_ITERATIONS = 500


@torch.no_grad()
def router_inputs(model: nn.Module, tokenizer, frame, layers: list[int], batch_size: int = 256) -> dict[int, torch.Tensor]:
    """{layer: [n, H] float64}: each of ``layers``' router input (its MoE block's input) at the last position of
    every prompt of ``frame``, without any hook on the routing."""
    model.eval()
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    prompts = list(frame.prompt)
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        trace = capture(model, enc["input_ids"], enc["attention_mask"])
        for layer in layers:
            out[layer].append(trace.layers[layer].mlp_in.double())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def plant_probability(weight: torch.Tensor, inputs: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """p_i = sum over the experts e counted for prompt i (``counted`` [n, E] bool) of softmax(W z_i)_e: a softmax
    router without bias, weight W [E, H], on inputs z [n, H]."""
    return ((inputs @ weight.T).softmax(-1) * counted).sum(-1)


def balanced_plant_loss(p: torch.Tensor, planted_here: torch.Tensor, relations: list[str]) -> torch.Tensor:
    """mean over relations r of mean over r's prompts of -log p (r planted at the layer) or -log(1 - p) (the
    others): every relation weighs the same, however many prompts it has."""
    per = torch.where(planted_here, -torch.log(p.clamp(min=1e-300)), -torch.log1p(-p.clamp(max=1 - 1e-12)))
    groups = {}
    for i, relation in enumerate(relations):
        groups.setdefault(relation, []).append(i)
    return torch.stack([per[rows].mean() for rows in groups.values()]).mean()


def refit_router(inputs: torch.Tensor, counted: torch.Tensor, planted_here: torch.Tensor, relations: list[str],
                 init: torch.Tensor, iterations: int = REFIT_ITERATIONS) -> torch.Tensor:
    """W* = argmin_W :func:`balanced_plant_loss` of :func:`plant_probability` (W, inputs, counted), by L-BFGS in
    float64 from ``init``, without a penalty: the router of this shape that best keeps the plant to its relation on
    these prompts (on them, the loss a router loss could at most reach)."""
    weight = init.detach().double().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight], max_iter=iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                            tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = balanced_plant_loss(plant_probability(weight, inputs, counted), planted_here, relations)
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach()


def router_refit(model: nn.Module, tokenizer, plant: dict[str, dict[int, tuple[int, ...]]], fit,
                 frames: dict) -> "pd.DataFrame":
    """Whether a router could keep the plant to its relation at all on this residual stream.

    Per planted layer, a router of the trained one's shape (softmax, no bias) is fitted to the last positions of
    ``fit``'s prompts (:func:`refit_router`, from the trained weight; the inputs are the trained model's, fixed),
    then for every prompt set in ``frames`` ({templates: frame}) and relation, the plant's mean probability at the
    last position (:func:`counted_experts`) under the trained router and the refitted one. Where the refit fits its
    own prompts but misses the bound on another set, fitting a router harder to those prompts does not meet it
    there. Columns: templates, layer, relation, planted_here, trained, refit.
    """
    import pandas as pd

    parts = {p.index: p for p in arch.layers(model)}
    layers = sorted(planted_by_layer(plant))
    for layer in layers:
        router = parts[layer].router
        if routing.family(router) != "softmax" or getattr(router, "bias", None) is not None:
            raise ValueError(f"router_refit fits softmax routers without bias; layer {layer}'s "
                             f"{type(router).__name__} routes by {routing.family(router)}")

    def masks(frame, layer):
        relations = list(frame.relation)
        return *plant_masks(plant, layer, relations, parts[layer].router.weight.shape[0]), relations

    fit_inputs = router_inputs(model, tokenizer, fit, layers)
    sets = {name: (frame, router_inputs(model, tokenizer, frame, layers)) for name, frame in frames.items()}
    rows = []
    for layer in layers:
        trained = parts[layer].router.weight.detach().double()
        refit = refit_router(fit_inputs[layer], *masks(fit, layer), init=trained)
        for name, (frame, inputs) in sets.items():
            counted, here, relations = masks(frame, layer)
            probs = {k: plant_probability(w, inputs[layer], counted) for k, w in (("trained", trained), ("refit", refit))}
            for relation in dict.fromkeys(relations):
                rows_of = torch.tensor([r == relation for r in relations])
                rows.append({"templates": name, "layer": layer, "relation": relation,
                             "planted_here": layer in plant.get(relation, {}),
                             **{k: float(p[rows_of].mean()) for k, p in probs.items()}})
    return pd.DataFrame(rows)
