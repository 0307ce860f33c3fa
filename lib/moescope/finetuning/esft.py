"""Expert relevance and selection of ESFT (Wang et al., EMNLP 2024, arXiv 2407.01906), per MoE layer l.

For N_s sequences j of L_j real tokens, with g^l_{i,k} the routing weight of expert i at token k (0 when i is
not in the top-K):

- Gate score (ESFT-Gate):    g^l_i = 1/N_s * sum_j 1/L_j * sum_k g^l_{i,k}
- Token score (ESFT-Token):  r^l_i = 1/N_s * sum_j 1/L_j * sum_k 1[g^l_{i,k} > 0] / K

Selection: per layer, take experts by decreasing score until their cumulative score reaches p (the expert that
crosses p is included; ESFT's ``generate_expert_config.py``). Scores use the paper's per-token normalisation,
not the released code's per-expert normalisation across layers (ESFT issue #17); they are not renormalised, so
token scores sum to 1 per layer and gate scores to the mean top-K gate mass.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .. import arch, routing
from ..hooks import hooked


@contextmanager
def routing_log(model: nn.Module) -> Iterator[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Record (top_k_weights [T,k], top_k_index [T,k]) of every router call, one list per MoE layer.

    The hooks are appended after any routing edit, so they see the routing the experts actually received. The
    router's output is read through :func:`moescope.routing.decision` (Llama 4's (scores, logits) as well).
    """
    arch.require_moe(model, "routing_log")
    routers = [p.router for p in arch.layers(model) if p.is_moe]
    log: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in routers]

    def recorder(row: int):
        def hook(module, args, output):
            _, weights, index = routing.decision(module, output)
            log[row].append((weights.detach(), index.detach()))
        return hook

    with hooked((r, "forward", recorder(i)) for i, r in enumerate(routers)):
        yield log


@dataclass(frozen=True)
class Relevance:
    """ESFT scores, each [n_moe_layers, E]; ``tokens`` is the number of real tokens scored."""

    gate: torch.Tensor
    token: torch.Tensor
    tokens: int


def dense_routing(weights: torch.Tensor, index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[T, E] routing weights with zeros for unselected experts."""
    return torch.zeros(index.shape[0], n_experts, dtype=torch.float32, device=index.device).scatter_add_(
        1, index, weights.float())


def _per_sequence(dense: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1/L_j sum_k dense[j, k] over the real tokens of each sequence j; dense [B*S, E], mask [B, S] -> [B, E]."""
    m = mask.float()
    per_token = dense.view(*m.shape, -1) * m[..., None]
    return per_token.sum(1) / m.sum(1, keepdim=True).clamp(min=1)


@dataclass(frozen=True)
class SequenceScores:
    """Per-sequence ESFT contributions, each [n_sequences, n_moe_layers, E]: the scores are their means."""

    gate: torch.Tensor
    token: torch.Tensor
    tokens: int


@torch.no_grad()
def sequence_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> SequenceScores:
    """1/L_j sum_k g_{i,k} and 1/L_j sum_k 1[g_{i,k} > 0] / K for every sequence j, layer and routed expert i."""
    arch.require_moe(model, "ESFT expert relevance")
    n_experts, k = arch.num_experts(model), arch.top_k(model)
    gates, tokens, n_tok = [], [], 0
    with routing_log(model) as log:
        for ids, mask in batches:
            for row in log:
                row.clear()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            gates.append(torch.stack([_per_sequence(dense_routing(w, i, n_experts), mask) for (w, i), in log], 1))
            tokens.append(torch.stack([_per_sequence(dense_routing(torch.ones_like(w) / k, i, n_experts), mask)
                                       for (w, i), in log], 1))
            n_tok += int(mask.sum())
    if not gates:
        raise ValueError("relevance needs at least one batch")
    return SequenceScores(torch.cat(gates).cpu(), torch.cat(tokens).cpu(), n_tok)


def relevance(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Relevance:
    """Gate and token scores of every routed expert over ``batches`` of (input_ids, attention_mask)."""
    seq = sequence_scores(model, batches)
    return Relevance(gate=seq.gate.mean(0), token=seq.token.mean(0), tokens=seq.tokens)


def select_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask [L, E]: per layer, the fewest top-scored experts whose cumulative score reaches ``p``."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    before = scores.gather(1, order).cumsum(1) - scores.gather(1, order)  # cumulative score before each expert
    chosen_sorted = before < p
    return torch.zeros_like(chosen_sorted).scatter(1, order, chosen_sorted)


def experts_needed(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Number of experts per layer that :func:`select_top_p` keeps, [L]."""
    return select_top_p(scores, p).sum(1)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two bool masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
