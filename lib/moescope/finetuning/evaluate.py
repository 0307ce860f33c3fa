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
    """Scores a model on held-out domain tests and on the general set (encoded once)."""

    def __init__(self, tokenizer, domain_tests: Sequence[Example], general: Sequence[Example]):
        self.domains = encode(tokenizer, domain_tests)
        self.general = encode(tokenizer, general)
        self.general_kinds = ["text" if ex.prompt.startswith("repeat ") else "facts" for ex in general]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """{'<domain>': acc, ..., 'domain_avg': mean over domains, 'general': acc, 'general_facts', 'general_text'}."""
        scores = accuracy_by_domain(model, self.domains)
        out = {d: scores[d] for d in scores}
        out["domain_avg"] = sum(scores.values()) / len(scores)
        hits = exact_match(model, self.general).float()
        out[GENERAL] = float(hits.mean())
        for kind in ("facts", "text"):
            rows = [k == kind for k in self.general_kinds]
            if any(rows):
                out[f"{GENERAL}_{kind}"] = float(hits[rows].mean())
        return out


def forgetting(base: float, after: float) -> float:
    """F = score_base - score_after (positive = forgotten)."""
    return base - after


def forgetting_reduction(f_method: float, f_reference: float) -> float:
    """1 - F_method / F_reference (the paper's "x% less forgetting"); nan when the reference did not forget."""
    return float("nan") if f_reference <= 0 else 1.0 - f_method / f_reference
