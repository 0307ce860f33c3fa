"""Interventions as context managers. Each registers forward hooks on stock modules and removes them on exit,
also when the body raises, so the model is restored exactly (no weight or attribute is ever changed).

``layers_`` arguments take layer indices (0-indexed); ``None`` means every MoE layer. Expert arguments
({layer: experts}) name the same experts for every token, or give a per-token set (bool [T, E] over the router's
flat tokens of the batch, :data:`moescope.routing.ExpertSet`), so one pass can block a different set per prompt.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from . import arch
from .hooks import hooked
from .routing import (ExpertSet, RoutingEdit, check_edit, decision, in_set, renormalises, repack, require_reweighting,
                      route, routing_hook, weights_at)


def _moe_parts(model: nn.Module, layer_ids: Iterable[int] | None) -> list[arch.LayerParts]:
    arch.require_moe(model, "this intervention")
    parts = [p for p in arch.layers(model) if p.is_moe]
    if layer_ids is None:
        return parts
    wanted = set(layer_ids)
    chosen = [p for p in parts if p.index in wanted]
    missing = wanted - {p.index for p in chosen}
    if missing:
        raise ValueError(f"layers {sorted(missing)} are not MoE layers of this model")
    return chosen


def _per_layer(spec: Mapping[int, Iterable[int] | torch.Tensor]) -> dict[int, ExpertSet]:
    return {int(layer): experts if isinstance(experts, torch.Tensor) else tuple(int(e) for e in experts)
            for layer, experts in spec.items()}


@contextmanager
def edit_routing(model: nn.Module, edits: Mapping[int, RoutingEdit]) -> Iterator[None]:
    """Apply a :class:`RoutingEdit` to the router of each listed layer."""
    parts = _moe_parts(model, edits)
    for p in parts:
        check_edit(p.router, edits[p.index])
    with hooked((p.router, "forward_prepend", routing_hook(edits[p.index])) for p in parts):
        yield


def block_experts(model: nn.Module, experts: Mapping[int, Iterable[int] | torch.Tensor], tokens: torch.Tensor | None = None):
    """Remove experts from routing ({layer: [expert, ...]}): logit -> -inf, the next-best expert takes the slot."""
    return edit_routing(model, {l: RoutingEdit(blocked=e, tokens=tokens) for l, e in _per_layer(experts).items()})


def force_experts(model: nn.Module, experts: Mapping[int, Iterable[int]], tokens: torch.Tensor | None = None):
    """Make the given experts part of the top-k ({layer: [expert, ...]}) with their own router weights."""
    return edit_routing(model, {l: RoutingEdit(forced=e, tokens=tokens) for l, e in _per_layer(experts).items()})


def set_top_k(model: nn.Module, k: int, layer_ids: Iterable[int] | None = None):
    """Route every token to its top-``k`` experts instead of the configured number."""
    return edit_routing(model, {p.index: RoutingEdit(top_k=k) for p in _moe_parts(model, layer_ids)})


def _mask_after_softmax_hook(blocked: ExpertSet):
    edit = RoutingEdit(blocked=blocked)

    def hook(router, args, output):
        logits, weights, _ = output
        _, idx = route(router, logits, edit)
        w = weights_at(router, logits, idx)
        drop = in_set(idx, blocked)
        if drop.any():  # no expert left to take the slot: the blocked one stays selected with weight 0
            w = w.masked_fill(drop, 0.0)
            w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-20) if renormalises(router) else w
        return logits, w.to(weights.dtype), idx

    return hook


@contextmanager
def mask_experts(model: nn.Module, experts: Mapping[int, Iterable[int] | torch.Tensor]) -> Iterator[None]:
    """Mask the listed experts after the softmax ({layer: [expert, ...]}): their probability -> 0, the next-best
    expert takes the slot with its own clean probability. Unlike :func:`block_experts` the other experts are not
    renormalised over the unblocked ones (a router that renormalises its top-k still does): re-routing = refill +
    renormalisation, masking = refill, :func:`zero_experts` = neither. Where no expert is left to refill a slot,
    masking is zeroing the blocked weight, renormalised as the router would."""
    spec = _per_layer(experts)
    parts = _moe_parts(model, spec)
    for p in parts:
        require_reweighting(p.router, "mask-after-softmax", f" (layer {p.index}): use block_experts or zero_experts")
    with hooked((p.router, "forward_prepend", _mask_after_softmax_hook(spec[p.index])) for p in parts):
        yield


def zero_experts(model: nn.Module, experts: Mapping[int, Iterable[int] | torch.Tensor]):
    """Keep routing, but set the listed experts' routing weights to 0, so their outputs count 0 times (no
    re-routing; Llama 4, which scales expert inputs, feeds them 0, and its experts map 0 to 0)."""
    return edit_routing(model, {l: RoutingEdit(zeroed=e) for l, e in _per_layer(experts).items()})


def _zero_output(module, args, output):
    return torch.zeros_like(output)


@contextmanager
def drop_shared_expert(model: nn.Module, layer_ids: Iterable[int] | None = None) -> Iterator[None]:
    """Remove the shared expert's contribution (its output -> 0) in MoE layers that have one."""
    parts = [p for p in _moe_parts(model, layer_ids) if p.ffn is not None]
    if not parts:
        raise arch.ArchitectureError(f"{type(model).__name__} has no shared expert to drop")
    with hooked((p.ffn, "forward", _zero_output) for p in parts):
        yield


@contextmanager
def drop_routed_experts(model: nn.Module, layer_ids: Iterable[int] | None = None) -> Iterator[None]:
    """Remove the routed experts' contribution (their summed output -> 0), keeping any shared expert."""
    with hooked((p.experts, "forward", _zero_output) for p in _moe_parts(model, layer_ids)):
        yield


def _head_mask_pre_hook(heads: tuple[int, ...], n_heads: int, tokens: torch.Tensor | None):
    def pre_hook(module, args):
        z = args[0]
        shaped = z.view(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)
        keep = torch.ones(n_heads, dtype=z.dtype, device=z.device)
        keep[list(heads)] = 0
        masked = shaped * keep[:, None]
        if tokens is not None:
            where = tokens.to(z.device).view(*z.shape[:-1], 1, 1)
            masked = torch.where(where, masked, shaped)
        return (masked.view_as(z), *args[1:])

    return pre_hook


@contextmanager
def inhibit_heads(
    model: nn.Module, heads: Mapping[int, Iterable[int]], tokens: torch.Tensor | None = None
) -> Iterator[None]:
    """Zero the listed heads' outputs ({layer: [head, ...]}) before o_proj; ``tokens`` ([B,S] bool) limits where."""
    parts = {p.index: p for p in arch.layers(model)}
    spec = _per_layer(heads)
    bad = [l for l in spec if l not in parts]
    if bad:
        raise ValueError(f"layers {bad} do not exist (model has {len(parts)})")
    with hooked((parts[l].o_proj, "pre", _head_mask_pre_hook(h, parts[l].n_heads, tokens)) for l, h in spec.items()):
        yield


@contextmanager
def recorded_routing(model: nn.Module) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Record every MoE layer's routing decision in the block: {layer: (top_k_weights [T,k], top_k_index [T,k])}
    of the last forward pass (for :func:`fixed_routing`)."""
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(layer: int):
        def hook(router, args, output):
            _, weights, index = decision(router, output)
            store[layer] = (weights.detach(), index.detach())

        return hook

    with hooked((p.router, "forward", recorder(p.index)) for p in _moe_parts(model, None)):
        yield store


def _fixed_routing_hook(weights: torch.Tensor, index: torch.Tensor):
    def hook(router, args, output):
        logits, w, idx = decision(router, output)
        if idx.shape != index.shape:
            raise ValueError(f"recorded routing has shape {tuple(index.shape)}, this pass routes {tuple(idx.shape)}: "
                             "replay it on the same batch")
        return repack(router, logits, weights.to(w.dtype), index, output)

    return hook


@contextmanager
def fixed_routing(model: nn.Module, recorded: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Replay recorded routing ({layer: (weights, index)} from :func:`recorded_routing`): every token goes to the
    recorded experts with the recorded weights, whatever the router now computes (same batch only)."""
    with hooked((p.router, "forward_prepend", _fixed_routing_hook(*recorded[p.index]))
                for p in _moe_parts(model, recorded)):
        yield
