"""Top-k routing recomputed from router logits, with edits (block, force, zero, change k).

Each router family of transformers 5 is re-implemented from its logits, in the router's own order of operations,
so that an edit changes only what it names. With no edit, :func:`route` returns exactly what the router module
returns (tested per class, float64, bit for bit on the index).

- softmax (OLMoE, Qwen2/3-MoE, Qwen3-Next, Mixtral, Mellum, HunYuan-MoE): p = softmax(logits); idx = top_k(p);
  w = p[idx], renormalised when ``norm_topk_prob`` (routers without that attribute: always).
- softmax_bias (ERNIE 4.5 MoE): p = softmax(logits); idx = top_k(p + e_score_correction_bias);
  w = p[idx] / max(sum p[idx], moe_norm_min).
- sigmoid_topk (Flint): s = sigmoid(logits); idx = top_k(s); w = s[idx], renormalised when ``norm_topk_prob``.
- deepseek_v2: p = softmax(logits); greedy or group-limited top-k; w = p[idx] * routed_scaling_factor.
- deepseek_v3 (DeepSeek-V3/V3.2, GLM-4-MoE(-Lite, -DSA), dots1, Solar-Open, EXAONE-MoE, MiMo-V2-Flash, A.X-K2):
  s = sigmoid(logits); choice = s + e_score_correction_bias, limited to the top groups (sum of each group's two
  best; no groups when num_group is None); w = s[idx] (renormalised when ``norm_topk_prob``)
  * routed_scaling_factor.
- block_bias (MiniMax-M2, HY-V3): s = sigmoid(logits); idx = top_k(s + bias) with the correction bias the MoE
  block passes to the router call; w = s[idx] renormalised (HY-V3: + 1e-20, times router_scaling_factor).
- sigmoid_bias (Laguna): s = sigmoid(logits) (the router returns soft-capped logits); idx = top_k(s + bias);
  w = s[idx] renormalised.
- topk_softmax (gpt-oss with its router bias, Granite-MoE, Aria): idx = top_k(logits); w = softmax(logits[idx]).
- topk_sigmoid (Llama 4): idx = top_k(logits); w = sigmoid(logits[idx]); the module returns dense scores
  [T, E] (0 off the top-k) and multiplies each expert's *input* by its score.
- sparsemixer (PhiMoE, inference path): top-2 only; expert 1 = argmax, w1 = softmax over the logits within a
  relative margin 2*jitter_eps of the max; expert 2 = argmax of the rest, w2 the same with the first masked out.

Blocking sets an expert's logit to -inf (and its choice score to -inf), so the next-best expert takes its slot.
Forcing puts the forced experts first in the choice, keeping their own router weights. Zeroing keeps the choice
and sets the zeroed experts' weights to 0 (their output is multiplied by 0; Llama 4: their input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .offload import materialized

NEG_INF = float("-inf")

#: Router class -> routing family (the maths above). A router class not listed here is not supported.
ROUTER_FAMILIES: dict[str, str] = {
    "OlmoeTopKRouter": "softmax", "Qwen2MoeTopKRouter": "softmax", "Qwen3MoeTopKRouter": "softmax",
    "MixtralTopKRouter": "softmax", "Qwen3NextTopKRouter": "softmax", "Qwen3_5MoeTopKRouter": "softmax",
    "MellumTopKRouter": "softmax", "HunYuanMoEV1Gate": "softmax",
    "Ernie4_5_MoeTopKRouter": "softmax_bias",
    "FlintTopKRouter": "sigmoid_topk",
    "MiniMaxM2TopKRouter": "block_bias", "HYV3TopKRouter": "block_bias",
    "LagunaTopKRouter": "sigmoid_bias",
    "DeepseekV2TopkRouter": "deepseek_v2",
    "DeepseekV3TopkRouter": "deepseek_v3", "Glm4MoeTopkRouter": "deepseek_v3", "Dots1TopkRouter": "deepseek_v3",
    "Glm4MoeLiteTopkRouter": "deepseek_v3", "SolarOpenTopkRouter": "deepseek_v3", "ExaoneMoeTopkRouter": "deepseek_v3",
    "MiMoV2FlashTopkRouter": "deepseek_v3", "DeepseekV32TopkRouter": "deepseek_v3", "GlmMoeDsaTopkRouter": "deepseek_v3",
    "AXK2TopkRouter": "deepseek_v3",
    "GptOssTopKRouter": "topk_softmax", "GraniteMoeTopKRouter": "topk_softmax",
    "GraniteMoeSharedTopKRouter": "topk_softmax", "GraniteMoeSWATopKRouter": "topk_softmax",
    "GraniteMoeHybridTopKRouter": "topk_softmax",
    "AriaTextTopKRouter": "topk_softmax",
    "Llama4Router": "topk_sigmoid",
    "PhimoeTopKRouter": "sparsemixer",
}
#: Families whose router scores are sigmoids rather than a softmax over experts.
SIGMOID_FAMILIES = ("deepseek_v3", "topk_sigmoid", "sigmoid_topk", "block_bias", "sigmoid_bias")
#: Families that select a fixed number of experts whatever the config says.
FIXED_TOP_K = {"sparsemixer": 2}


class RoutingEditError(ValueError):
    """An edit the router family cannot express (e.g. forcing experts into PhiMoE's sparsemixer)."""


#: a set of experts: the same for every token (expert ids), or per token (bool [T, E], True = in the set; T the
#: router's flat tokens, batch-major), so one pass can carry a different set for each prompt of the batch
ExpertSet = tuple[int, ...] | torch.Tensor


@dataclass(frozen=True)
class RoutingEdit:
    """What to change in one router's decision. ``tokens`` (flat bool [T]) limits the edit to some tokens;
    ``blocked`` and ``zeroed`` may be per token (:data:`ExpertSet`)."""

    blocked: ExpertSet = ()
    forced: tuple[int, ...] = ()
    zeroed: ExpertSet = ()
    top_k: int | None = None
    tokens: torch.Tensor | None = None


def any_experts(experts: ExpertSet) -> bool:
    """Whether the set names any expert (for any token)."""
    return bool(experts.any()) if isinstance(experts, torch.Tensor) else len(experts) > 0


def in_set(index: torch.Tensor, experts: ExpertSet) -> torch.Tensor:
    """bool [T, k]: whether expert ``index[t, j]`` is in the set (the set of token t when it is per token)."""
    if isinstance(experts, torch.Tensor):
        if experts.shape[0] != index.shape[0]:
            raise RoutingEditError(f"a per-token expert set has {experts.shape[0]} rows, this pass routes "
                                   f"{index.shape[0]} tokens: build it for this batch")
        return experts.to(index.device).gather(1, index)
    return torch.isin(index, torch.tensor(experts, device=index.device, dtype=index.dtype))


def family(router: nn.Module) -> str:
    """The routing family of ``router`` (a key of the functions below); a parametrized router (PEFT's LoRA on its
    weight: torch's ``Parametrized<Class>``) is of its original class's family."""
    cls = type(router)
    if parametrize.is_parametrized(router):
        cls = cls.__bases__[0]
    name = cls.__name__
    if name not in ROUTER_FAMILIES:
        raise NotImplementedError(f"routing edits are not implemented for router class {name}")
    return ROUTER_FAMILIES[name]


def _select(choice: torch.Tensor, k: int, forced: tuple[int, ...], sorted_: bool = True) -> torch.Tensor:
    if forced:
        choice = choice.clone()
        choice[:, list(forced)] = torch.inf
    return torch.topk(choice, k, dim=-1, sorted=sorted_)[1]


def _blocked(t: torch.Tensor, blocked: ExpertSet) -> torch.Tensor:
    if isinstance(blocked, torch.Tensor):
        if blocked.shape != t.shape:
            raise RoutingEditError(f"a per-token expert set of shape {tuple(blocked.shape)} does not match the "
                                   f"router's scores {tuple(t.shape)}: build it for this batch")
        return t.masked_fill(blocked.to(t.device), NEG_INF)
    if not blocked:
        return t
    t = t.clone()
    t[:, list(blocked)] = NEG_INF
    return t


def _softmax_route(router, logits, k, blocked, forced):
    probs = torch.softmax(_blocked(logits.float(), blocked), dim=-1)
    if forced:
        idx = _select(probs, k, forced)
        weights = probs.gather(1, idx)
    else:
        weights, idx = torch.topk(probs, k, dim=-1)
    if getattr(router, "norm_topk_prob", True):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, idx


def _softmax_bias_route(router, logits, k, blocked, forced):
    probs = torch.softmax(_blocked(logits.float(), blocked), dim=1)
    choice = _blocked(router.moe_statics(probs), blocked)  # probs + e_score_correction_bias
    idx = _select(choice, k, forced)
    weights = probs.gather(1, idx)
    return weights / torch.clamp(weights.sum(dim=-1, keepdim=True), min=router.norm_min), idx


def _sigmoid_topk_route(router, logits, k, blocked, forced):
    scores = logits.float().sigmoid()
    if forced:
        idx = _select(_blocked(scores, blocked), k, forced)
        weights = scores.gather(1, idx)
    else:
        weights, idx = torch.topk(_blocked(scores, blocked), k, dim=-1)
    if router.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, idx


def _sigmoid_bias_route(router, logits, k, blocked, forced):
    scores = logits.float().sigmoid()
    idx = _select(_blocked(scores + router.e_score_correction_bias.to(scores.dtype), blocked), k, forced)
    weights = scores.gather(-1, idx)
    return weights / weights.sum(dim=-1, keepdim=True), idx


def _block_bias_route(router, logits, k, blocked, forced, bias=None):
    if bias is None:
        raise RoutingEditError(f"{type(router).__name__} needs the correction bias its MoE block passes to it")
    scores = logits.float().sigmoid()
    idx = _select(_blocked(scores + bias, blocked), k, forced, sorted_=False)
    weights = scores.gather(1, idx)
    scaling = getattr(router, "router_scaling_factor", None)
    if scaling is None:
        return weights / weights.sum(dim=-1, keepdim=True), idx
    return weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * scaling, idx


def _group_mask(scores: torch.Tensor, router, per_group_score) -> torch.Tensor:
    n_group = router.num_group
    grouped = scores.view(-1, n_group, router.num_experts // n_group)
    group_idx = torch.topk(per_group_score(grouped), k=router.topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros(grouped.shape[:2], dtype=torch.bool, device=scores.device)
    mask.scatter_(1, group_idx, True)
    return mask.unsqueeze(-1).expand_as(grouped).reshape(scores.shape)


def _deepseek_v2_route(router, logits, k, blocked, forced):
    probs = logits.float().softmax(dim=-1)
    choice = _blocked(probs, blocked)
    if router.topk_method == "group_limited_greedy":
        choice = choice.masked_fill(~_group_mask(choice, router, lambda g: g.max(dim=-1).values), 0.0)
    idx = _select(choice, k, forced, sorted_=False)
    return probs.gather(1, idx) * router.routed_scaling_factor, idx


def _deepseek_v3_route(router, logits, k, blocked, forced):
    scores = logits.float().sigmoid()
    choice = _blocked(scores + router.e_score_correction_bias, blocked)
    if router.num_group is not None:  # A.X-K2-Light routes without groups
        choice = choice.masked_fill(
            ~_group_mask(choice, router, lambda g: g.topk(2, dim=-1)[0].sum(dim=-1)), NEG_INF
        )
    idx = _select(choice, k, forced, sorted_=False)
    weights = scores.gather(1, idx)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor, idx


def _topk_logits(logits, k, blocked, forced):
    choice = _blocked(logits, blocked)
    idx = _select(choice, k, forced)
    return logits.gather(1, idx), idx


def _topk_softmax_route(router, logits, k, blocked, forced):
    top, idx = _topk_logits(logits, k, blocked, forced)
    return torch.softmax(top, dim=-1), idx


def _topk_sigmoid_route(router, logits, k, blocked, forced):
    top, idx = _topk_logits(logits, k, blocked, forced)
    dense = torch.full_like(logits, NEG_INF).scatter_(1, idx, top)  # sigmoid on the router's own [T, E] shape:
    return torch.sigmoid(dense.float()).gather(1, idx), idx        # float32 kernels round per shape


def _sparsemixer_pick(scores: torch.Tensor, masked: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One sparsemixer step: argmax of ``masked``; its softmax weight among logits within the relative margin."""
    threshold, index = masked.max(dim=-1, keepdim=True)
    factor = scores.abs().clamp(min=threshold)
    outside = ((threshold - scores) / factor) > (2 * eps)
    gates = torch.softmax(masked.masked_fill(outside, NEG_INF), dim=-1)
    return gates.gather(dim=-1, index=index), index


def _sparsemixer_route(router, logits, k, blocked, forced):
    scores = _blocked(logits, blocked)
    eps = router.router_jitter_noise
    w1, i1 = _sparsemixer_pick(scores, scores, eps)
    w2, i2 = _sparsemixer_pick(scores, torch.scatter(scores, -1, i1, NEG_INF), eps)
    return torch.cat((w1, w2), dim=-1), torch.cat((i1, i2), dim=-1)


_ROUTES = {
    "softmax": _softmax_route, "softmax_bias": _softmax_bias_route, "sigmoid_topk": _sigmoid_topk_route,
    "deepseek_v2": _deepseek_v2_route, "deepseek_v3": _deepseek_v3_route, "block_bias": _block_bias_route,
    "sigmoid_bias": _sigmoid_bias_route,
    "topk_softmax": _topk_softmax_route, "topk_sigmoid": _topk_sigmoid_route, "sparsemixer": _sparsemixer_route,
}


def check_edit(router: nn.Module, edit: RoutingEdit) -> None:
    """Raise :class:`RoutingEditError` up front for an edit ``router``'s family cannot express."""
    fam = family(router)
    k = edit.top_k or FIXED_TOP_K.get(fam, router.top_k)
    if fam in FIXED_TOP_K and (edit.forced or k != FIXED_TOP_K[fam]):
        raise RoutingEditError(
            f"{type(router).__name__} always selects {FIXED_TOP_K[fam]} experts (PhiMoE's sparsemixer): it cannot "
            "force experts or change top_k; blocking and zeroing work")
    if len(edit.forced) > k:
        raise RoutingEditError(f"cannot force {len(edit.forced)} experts into a top-{k} selection")


def route(
    router: nn.Module, logits: torch.Tensor, edit: RoutingEdit = RoutingEdit(), bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_k_weights [T,k], top_k_index [T,k]) that ``router`` picks from ``logits`` [T,E] under ``edit``.

    ``bias``: the correction bias a block_bias router receives in its call (``LayerParts.router_extra``).
    """
    check_edit(router, edit)
    fam = family(router)
    k = edit.top_k or FIXED_TOP_K.get(fam, router.top_k)
    extra = {"bias": bias} if fam == "block_bias" else {}
    blocked = edit.blocked if isinstance(edit.blocked, torch.Tensor) else tuple(edit.blocked)
    weights, idx = _ROUTES[fam](router, logits, k, blocked, tuple(edit.forced), **extra)
    if any_experts(edit.zeroed):
        weights = weights.masked_fill(in_set(idx, edit.zeroed), 0.0)
    return weights.to(logits.dtype), idx


def probabilities(router: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The router's per-expert scores: sigmoid(logits) for sigmoid routers, else softmax(logits) over experts."""
    if family(router) in SIGMOID_FAMILIES:
        return logits.float().sigmoid()
    return logits.float().softmax(dim=-1)


def decision(router: nn.Module, output) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [T,E], weights [T,k], index [T,k]) from a router module's output.

    Most routers return that triple. Llama 4's returns (dense scores [T,E], logits): the index is the router's
    own ``topk`` of the logits, over the finite ones when an edit has set the logits outside its selection to
    -inf (see :func:`routing_hook`).
    """
    if family(router) != "topk_sigmoid":
        return output
    scores, logits = output
    finite = torch.isfinite(logits).sum(dim=1)
    k = router.top_k if bool((finite == logits.shape[1]).all()) else int(finite.max())
    idx = torch.topk(logits, k, dim=1)[1]
    return logits, scores.gather(1, idx), idx


def repack(router: nn.Module, logits, weights, idx, like):
    """The router module's own output convention for an edited decision. Llama 4's dense scores cannot carry
    the selection of a zeroed expert or a changed k, so its logits are set to -inf outside the selection."""
    if family(router) != "topk_sigmoid":
        return logits, weights, idx
    scores = torch.zeros_like(like[0]).scatter_(1, idx, weights.to(like[0].dtype))
    selected = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)
    return scores, logits.masked_fill(~selected, NEG_INF)


def routing_hook(edit: RoutingEdit):
    """Forward hook for a router module: replace its decision by the edited routing.

    Tokens outside ``edit.tokens`` keep the router's own decision (only possible when k is unchanged).
    """

    def hook(router: nn.Module, args, output):
        logits, weights, idx = decision(router, output)
        new_w, new_idx = route(router, logits, edit, *args[1:2])
        if edit.tokens is not None:
            if new_idx.shape != idx.shape:
                raise RoutingEditError("a per-token routing edit cannot change top_k")
            keep = ~edit.tokens.to(idx.device).view(-1, 1)
            new_w = torch.where(keep, weights, new_w.to(weights.dtype))
            new_idx = torch.where(keep, idx, new_idx)
        if any_experts(edit.blocked) and edit.tokens is None:
            logits = _blocked(logits, edit.blocked)
        return repack(router, logits, new_w.to(weights.dtype), new_idx, output)

    return hook


# ---------------------------------------------------------------------------------------------------- router maths
def logits(router: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Router logits z = x W_r^T (+ b) for hidden states x [..., H], as the router computes them (DeepSeek, and
    HunYuan's float32 ``wg``: in float32)."""
    linear = getattr(router, "wg", router)  # HunYuan keeps its projection in a submodule
    with materialized(linear):  # offloaded weights: brought in for the read (autograd keeps what it needs)
        weight, bias = linear.weight, getattr(linear, "bias", None)
    if family(router).startswith("deepseek") or (linear is not router and weight.dtype == torch.float32):
        x = x.float()
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


#: Router families whose weights for any given selection :func:`weights_at` computes.
REWEIGHTED_FAMILIES = ("softmax", "deepseek_v2", "deepseek_v3")


def require_reweighting(router: nn.Module, what: str, hint: str = "") -> None:
    """RoutingEditError naming the router (then ``hint``) unless its family is one :func:`weights_at` computes."""
    kind = family(router)
    if kind not in REWEIGHTED_FAMILIES:
        raise RoutingEditError(f"{what} is defined for the {', '.join(REWEIGHTED_FAMILIES)} router families; "
                               f"{type(router).__name__} ({kind} routing) is not one of them{hint}")


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
    require_reweighting(router, "weighting a selection the router did not make")
    kind = family(router)
    w = probabilities(router, logits_).gather(-1, index)
    if kind == "softmax":
        return w / w.sum(dim=-1, keepdim=True) if renormalises(router) else w
    if renormalises(router):
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * router.routed_scaling_factor
