"""Exact-match scores per domain, general retention, and how the routing of the test tokens separates domains.

Exact match of an answer = greedy decoding reproduces answer + <eos>. Under teacher forcing this is the same
event as "argmax equals the target at every answer position": if all argmaxes match, greedy decoding follows the
target prefix and emits it; at the first mismatch greedy decoding leaves the target. So one forward pass per
batch scores it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import arch, routing
from ..hooks import hooked
from . import routing_eval
from .domains import GENERAL, GENERAL_PARTS, Example, general_part
from .batches import IGNORE, Encoded, encode


@torch.no_grad()
def exact_match(model: nn.Module, data: Encoded, batch_size: int = 256) -> torch.Tensor:
    """Bool [N]: row i's answer (+ <eos>) is the model's greedy continuation of its prompt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = []
    for start in range(0, len(data), batch_size):
        b = data.rows(range(start, min(start + batch_size, len(data))), device)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        pred = logits[:, :-1].argmax(-1)
        target = b.labels[:, 1:]
        hits.append(((pred == target) | (target == IGNORE)).all(1).cpu())
    model.train(was_training)
    return torch.cat(hits)


@dataclass(frozen=True)
class Routed:
    """The routing of ``N`` real tokens through the ``L`` MoE layers: ``experts`` [N, L, K] as the model routes them
    (with every active hook, e.g. an ALR router), ``unhooked`` [N, L, K] as the routers alone route the same inputs,
    each row ordered by weight; ``hidden`` [N, L, H] the routers' inputs; ``domain`` and ``sequence`` [N]."""

    experts: torch.Tensor
    unhooked: torch.Tensor
    hidden: torch.Tensor
    domain: torch.Tensor
    sequence: torch.Tensor


def _by_weight(router: nn.Module, output) -> torch.Tensor:
    _, weights, index = routing.decision(router, output)
    return index.gather(1, weights.argsort(dim=1, descending=True, stable=True)).detach()


@torch.no_grad()
def record_routing(model: nn.Module, data: Encoded, names: Sequence[str], batch_size: int = 256) -> Routed:
    """Route every real token of ``data`` (domains indexed by ``names``) and record each MoE layer's decision, the
    routers' own decision on the same input (``router.forward``, which runs no hooks) and the input itself."""
    arch.require_moe(model, "recording the routing")
    routers = [p.router for p in arch.layers(model) if p.is_moe]
    seen: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in routers]

    def recorder(row: int):
        def hook(router, args, output):
            hidden = args[0].reshape(-1, args[0].shape[-1])
            seen[row].append((_by_weight(router, output), _by_weight(router, router.forward(*args)), hidden.detach()))
        return hook

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keep, domain, sequence = [], [], []
    with hooked([(r, "forward", recorder(i)) for i, r in enumerate(routers)]):
        for start in range(0, len(data), batch_size):
            rows = range(start, min(start + batch_size, len(data)))
            b = data.rows(rows, device)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            mask = b.attention_mask.bool().cpu()
            keep.append(mask.reshape(-1))
            ids = torch.tensor(list(rows))[:, None].expand_as(mask)[mask]
            sequence.append(ids)
            domain.append(torch.tensor([names.index(data.domains[i]) for i in rows])[ids - start])
    model.train(was_training)
    mask = torch.cat(keep)
    stack = lambda k: torch.stack([torch.cat([s[k].cpu() for s in layer])[mask] for layer in seen], 1)  # noqa: E731
    return Routed(stack(0), stack(1), stack(2).float(), torch.cat(domain), torch.cat(sequence))


def routing_scores(model: nn.Module, data: Encoded) -> dict:
    """:func:`.routing_eval.routing_report` of the routing of ``data``'s tokens (domains in sorted order), with
    ``unhooked_agreement``: the share of (token, layer) whose expert set the routers alone would have chosen too
    (1 without routing hooks; for ESFT + ALR, 1 minus its routing-assignment errors against ESFT's router)."""
    names = sorted(set(data.domains))
    r = record_routing(model, data, names)
    report = routing_eval.routing_report(r.experts, r.domain, r.sequence, names, arch.num_experts(model), r.hidden)
    return report | {"unhooked_agreement": routing_eval.agreement(r.experts, r.unhooked)}


def accuracy_by_domain(model: nn.Module, data: Encoded) -> dict[str, float]:
    """{domain: exact-match accuracy}."""
    hits = exact_match(model, data)
    domains = sorted(set(data.domains))
    return {d: float(hits[[x == d for x in data.domains]].float().mean()) for d in domains}


class Evaluator:
    """Scores a model on the domains' validation and test sets and on the general set (each encoded once).

    Returns ``{"val": {domain: acc, "avg": mean}, "test": {...}, "general": {"all", and each part of
    :data:`.domains.GENERAL_PARTS`}}`` and, on an MoE, ``"routing"``: :func:`routing_scores` of the test tokens (with two or more domains). Checkpoint and
    learning-rate selection read ``val`` only (:mod:`.protocol`); ``test``, ``general`` and ``routing`` are reported.
    """

    def __init__(self, tokenizer, val: Sequence[Example], test: Sequence[Example], general: Sequence[Example]):
        self.sets = {"val": encode(tokenizer, val), "test": encode(tokenizer, test)}
        self.general = encode(tokenizer, general)
        self.general_kinds = [general_part(ex) for ex in general]

    def __call__(self, model: nn.Module) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, data in self.sets.items():
            scores = accuracy_by_domain(model, data)
            out[name] = scores | {"avg": sum(scores.values()) / len(scores)}
        hits = exact_match(model, self.general).float()
        out[GENERAL] = {"all": float(hits.mean())}
        for kind in GENERAL_PARTS:
            rows = [k == kind for k in self.general_kinds]
            if any(rows):
                out[GENERAL][kind] = float(hits[rows].mean())
        if arch.is_moe(model) and len(set(self.sets["test"].domains)) > 1:
            out["routing"] = routing_scores(model, self.sets["test"])
        return out


def forgetting(base: float, after: float) -> float:
    """F = score_base - score_after (positive = forgotten)."""
    return base - after


def forgetting_reduction(f_method: float, f_reference: float, least: float = 0.0) -> float:
    """1 - F_method / F_reference (the paper's "x% less forgetting"); nan (undefined) unless the reference forgot
    more than ``least``: a ratio to a forgetting of about zero means nothing."""
    return float("nan") if not f_reference > least else 1.0 - f_method / f_reference
