"""Top-k routing recomputed from router logits, with edits (block, force, change k).

Each router family of transformers 5 is re-implemented from its logits so that an edit changes only what it
names. With no edit, :func:`route` returns exactly what the router module returns (tested per class).

- softmax routers (OLMoE, Qwen2/3-MoE, Mixtral): p = softmax(logits); idx = top_k(p); w = p[idx],
  renormalised when ``norm_topk_prob`` (Mixtral: always).
- DeepSeek-V2: p = softmax(logits); greedy or group-limited top-k; w = p[idx] * routed_scaling_factor.
- DeepSeek-V3: s = sigmoid(logits); choice = s + bias, limited to the top groups; w = s[idx] (renormalised when
  ``norm_topk_prob``) * routed_scaling_factor.

Blocking sets an expert's logit to -inf (and its choice score to -inf), so the next-best expert takes its slot.
Forcing puts the forced experts first in the choice, keeping their own router weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


@dataclass(frozen=True)
class RoutingEdit:
    """What to change in one router's decision. ``tokens`` (flat bool [T]) limits the edit to some tokens."""

    blocked: tuple[int, ...] = ()
    forced: tuple[int, ...] = ()
    top_k: int | None = None
    tokens: torch.Tensor | None = None


def family(router: nn.Module) -> str:
    """'softmax', 'deepseek_v2' or 'deepseek_v3'."""
    name = type(router).__name__
    if name.startswith("DeepseekV3"):
        return "deepseek_v3"
    if name.startswith("DeepseekV2"):
        return "deepseek_v2"
    if name.endswith(("TopKRouter", "TopkRouter")):
        return "softmax"
    raise NotImplementedError(f"routing edits are not implemented for router class {name}")


def _select(choice: torch.Tensor, k: int, forced: tuple[int, ...]) -> torch.Tensor:
    if forced:
        if len(forced) > k:
            raise ValueError(f"cannot force {len(forced)} experts into a top-{k} selection")
        choice = choice.clone()
        choice[:, list(forced)] = torch.inf
    return torch.topk(choice, k, dim=-1)[1]


def _softmax_route(router, logits, k, blocked, forced):
    logits = logits.float()
    if blocked:
        logits = logits.clone()
        logits[:, list(blocked)] = NEG_INF
    probs = torch.softmax(logits, dim=-1)
    if forced:
        idx = _select(probs, k, forced)
        weights = probs.gather(1, idx)
    else:
        weights, idx = torch.topk(probs, k, dim=-1)
    if getattr(router, "norm_topk_prob", True):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, idx


def _group_mask(scores: torch.Tensor, router, per_group_score) -> torch.Tensor:
    n_group = router.num_group
    grouped = scores.view(-1, n_group, router.num_experts // n_group)
    group_idx = torch.topk(per_group_score(grouped), k=router.topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros(grouped.shape[:2], dtype=torch.bool, device=scores.device)
    mask.scatter_(1, group_idx, True)
    return mask.unsqueeze(-1).expand_as(grouped).reshape(scores.shape)


def _deepseek_v2_route(router, logits, k, blocked, forced):
    probs = logits.float().softmax(dim=-1)
    choice = probs
    if blocked:
        choice = choice.clone()
        choice[:, list(blocked)] = NEG_INF
    if router.topk_method == "group_limited_greedy":
        choice = choice.masked_fill(~_group_mask(choice, router, lambda g: g.max(dim=-1).values), 0.0)
    if forced:
        idx = _select(choice, k, forced)
    else:
        idx = torch.topk(choice, k=k, dim=-1, sorted=False)[1]
    return probs.gather(1, idx) * router.routed_scaling_factor, idx


def _deepseek_v3_route(router, logits, k, blocked, forced):
    scores = logits.float().sigmoid()
    choice = scores + router.e_score_correction_bias
    if blocked:
        choice = choice.clone()
        choice[:, list(blocked)] = NEG_INF
    choice = choice.masked_fill(
        ~_group_mask(choice, router, lambda g: g.topk(2, dim=-1)[0].sum(dim=-1)), NEG_INF
    )
    idx = _select(choice, k, forced) if forced else torch.topk(choice, k=k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, idx)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor, idx


_ROUTES = {"softmax": _softmax_route, "deepseek_v2": _deepseek_v2_route, "deepseek_v3": _deepseek_v3_route}


def route(router: nn.Module, logits: torch.Tensor, edit: RoutingEdit = RoutingEdit()) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_k_weights [T,k], top_k_index [T,k]) that ``router`` picks from ``logits`` [T,E] under ``edit``."""
    k = edit.top_k or router.top_k
    weights, idx = _ROUTES[family(router)](router, logits, k, tuple(edit.blocked), tuple(edit.forced))
    return weights.to(logits.dtype), idx


def routing_hook(edit: RoutingEdit):
    """Forward hook for a router module: replace its (weights, index) by the edited routing.

    Tokens outside ``edit.tokens`` keep the router's own decision (only possible when k is unchanged).
    """

    def hook(router: nn.Module, args, output):
        logits, weights, idx = output
        new_w, new_idx = route(router, logits, edit)
        if edit.tokens is not None:
            if new_idx.shape != idx.shape:
                raise ValueError("a per-token routing edit cannot change top_k")
            keep = ~edit.tokens.to(idx.device).view(-1, 1)
            new_w = torch.where(keep, weights, new_w.to(weights.dtype))
            new_idx = torch.where(keep, idx, new_idx)
        if edit.blocked and edit.tokens is None:
            logits = logits.clone()
            logits[:, list(edit.blocked)] = NEG_INF
        return logits, new_w.to(weights.dtype), new_idx

    return hook


# ---------------------------------------------------------------------------------------------------- router maths
def logits(router: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Router logits z = x W_r^T for hidden states x [..., H], as the router computes them (DeepSeek: in float32)."""
    if family(router).startswith("deepseek"):
        x = x.float()
    return F.linear(x, router.weight.to(x.dtype))


def probabilities(router: nn.Module, logits_: torch.Tensor) -> torch.Tensor:
    """The router's per-expert scores in float32: p = softmax(z), or s = sigmoid(z) for DeepSeek-V3."""
    if family(router) == "deepseek_v3":
        return logits_.float().sigmoid()
    return logits_.float().softmax(dim=-1)


def renormalises(router: nn.Module) -> bool:
    """Whether the router divides its top-k weights by their sum (softmax: ``norm_topk_prob``, default True as in
    Mixtral; DeepSeek-V2: never; DeepSeek-V3: ``norm_topk_prob``)."""
    kind = family(router)
    if kind == "deepseek_v2":
        return False
    return bool(getattr(router, "norm_topk_prob", kind == "softmax"))


def weights_at(router: nn.Module, logits_: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The weights [T, k] the router gives the experts ``index`` [T, k] from ``logits`` [T, E], whoever chose them.

    softmax: w = p[index], divided by its sum when ``norm_topk_prob`` (Mixtral: always); DeepSeek-V2:
    w = p[index] * routed_scaling_factor; DeepSeek-V3: w = s[index] (renormalised when ``norm_topk_prob``) *
    routed_scaling_factor. With the router's own index this is exactly its own top-k weights.
    """
    kind = family(router)
    w = probabilities(router, logits_).gather(-1, index)
    if kind == "softmax":
        return w / w.sum(dim=-1, keepdim=True) if renormalises(router) else w
    if renormalises(router):
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * router.routed_scaling_factor
