"""Exact-match scores per domain and general retention.

Exact match of an answer = greedy decoding reproduces answer + <eos>. Under teacher forcing this is the same
event as "argmax equals the target at every answer position": if all argmaxes match, greedy decoding follows the
target prefix and emits it; at the first mismatch greedy decoding leaves the target. So one forward pass per
batch scores it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .domains import GENERAL, Example
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


def accuracy_by_domain(model: nn.Module, data: Encoded) -> dict[str, float]:
    """{domain: exact-match accuracy}."""
    hits = exact_match(model, data)
    domains = sorted(set(data.domains))
    return {d: float(hits[[x == d for x in data.domains]].float().mean()) for d in domains}


class Evaluator:
    """Scores a model on the domains' validation and test sets and on the general set (each encoded once).

    Returns ``{"val": {domain: acc, "avg": mean}, "test": {...}, "general": {"all", "facts", "text"}}``. Checkpoint
    and learning-rate selection read ``val`` only (:mod:`.protocol`); ``test`` and ``general`` are reported.
    """

    def __init__(self, tokenizer, val: Sequence[Example], test: Sequence[Example], general: Sequence[Example]):
        self.sets = {"val": encode(tokenizer, val), "test": encode(tokenizer, test)}
        self.general = encode(tokenizer, general)
        self.general_kinds = ["text" if ex.prompt.startswith("repeat ") else "facts" for ex in general]

    def __call__(self, model: nn.Module) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, data in self.sets.items():
            scores = accuracy_by_domain(model, data)
            out[name] = scores | {"avg": sum(scores.values()) / len(scores)}
        hits = exact_match(model, self.general).float()
        out[GENERAL] = {"all": float(hits.mean())}
        for kind in ("facts", "text"):
            rows = [k == kind for k in self.general_kinds]
            if any(rows):
                out[GENERAL][kind] = float(hits[rows].mean())
        return out


def forgetting(base: float, after: float) -> float:
    """F = score_base - score_after (positive = forgotten)."""
    return base - after


def forgetting_reduction(f_method: float, f_reference: float, least: float = 0.0) -> float:
    """1 - F_method / F_reference (the paper's "x% less forgetting"); nan (undefined) unless the reference forgot
    more than ``least``: a ratio to a forgetting of about zero means nothing."""
    return float("nan") if not f_reference > least else 1.0 - f_method / f_reference
