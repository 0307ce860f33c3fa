"""Which parameters train, and exact freezing of single experts inside fused expert tensors.

Parameters fall in six parts: ``router`` (mlp.gate), ``experts`` (the fused routed-expert tensors
``gate_up_proj[E,2I,H]`` and ``down_proj[E,H,I]``), ``shared`` (shared experts and their gate), ``embeddings``
(input and output embeddings), ``other`` (attention, norms, dense FFNs) and ``adapter`` (parameters added to the
model after the map was made, e.g. LoRA adapters). Whole parts are frozen with
``requires_grad=False`` (the optimizer then skips them: no update, no weight decay). One expert is a slice of a
fused tensor, so it is frozen by (1) zeroing its gradient rows before ``opt.step()`` and (2) restoring its
slice from a snapshot after the step, which also cancels AdamW momentum and weight decay: frozen experts stay
bit-identical.

Optimizer state of a frozen expert (a choice, stated): its AdamW moments are kept, decaying with zero gradients
(m <- beta1 m, v <- beta2 v per step), and act again when a mask re-opens the expert (DGES masks change every
refresh). Clearing them when a mask changes is the other choice, which the kit does not take; weight decay never
reaches a frozen row (the restore undoes it).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import arch

PARTS = ("router", "experts", "shared", "embeddings", "other", "adapter")
BASE_PARTS = PARTS[:-1]
BACKBONE = ("embeddings", "other")


class PartMap:
    """Which part each parameter of a model belongs to, fixed when made; parameters added later are 'adapter'."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.owner = {id(p): name for name, ps in parameter_parts(model).items() for p in ps}

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """{part: parameters} of the model as it is now."""
        out: dict[str, list[nn.Parameter]] = {name: [] for name in PARTS}
        for param in self.model.parameters():
            out[self.owner.get(id(param), "adapter")].append(param)
        return out


def parameter_parts(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{part: parameters} covering every parameter of ``model`` exactly once (no 'adapter' parameters)."""
    owner: dict[int, str] = {}
    for p in arch.layers(model):
        if p.is_moe:
            for param in p.router.parameters():
                owner[id(param)] = "router"
            for param in p.experts.parameters():
                owner[id(param)] = "experts"
            for mod in (p.ffn, p.ffn_gate):
                for param in mod.parameters() if mod is not None else ():
                    owner[id(param)] = "shared"
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        for param in mod.parameters():
            owner[id(param)] = "embeddings"
    parts: dict[str, list[nn.Parameter]] = {name: [] for name in PARTS}
    for param in model.parameters():
        parts[owner.get(id(param), "other")].append(param)
    return parts


def set_trainable(model: nn.Module | PartMap, parts: Iterable[str]) -> None:
    """requires_grad = True for the parameters of ``parts``, False for all others."""
    wanted = set(parts)
    unknown = wanted - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parameter parts {sorted(unknown)}; choose from {PARTS}")
    by_part = model.parts() if isinstance(model, PartMap) else parameter_parts(model)
    for name, params in by_part.items():
        for param in params:
            param.requires_grad_(name in wanted)


def moe_experts(model: nn.Module) -> list[nn.Module]:
    """The fused experts module of every MoE layer, in layer order (rows of an expert mask)."""
    arch.require_moe(model, "expert masks")
    return [p.experts for p in arch.layers(model) if p.is_moe]


def full_mask(model: nn.Module, value: bool = True) -> torch.Tensor:
    """A bool mask [n_moe_layers, E] filled with ``value`` (True = the expert trains)."""
    return torch.full((len(moe_experts(model)), arch.num_experts(model)), value, dtype=torch.bool)


class ExpertFreezer:
    """Freeze the experts where ``mask`` is False for one optimizer step; call in this order::

        freezer.hold(mask); loss.backward(); freezer.mask_grads(); opt.step(); freezer.restore()
    """

    def __init__(self, model: nn.Module):
        self.experts = moe_experts(model)
        self.frozen: torch.Tensor | None = None
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _tensors(self) -> Iterable[tuple[int, torch.Tensor]]:
        for row, mod in enumerate(self.experts):
            yield row, mod.gate_up_proj
            yield row, mod.down_proj

    def hold(self, mask: torch.Tensor | None) -> None:
        """Snapshot the slices of experts that must not change this step (``mask`` [L, E], None = all train)."""
        if mask is not None and tuple(mask.shape) != (len(self.experts), self.experts[0].gate_up_proj.shape[0]):
            raise ValueError(f"expert mask has shape {tuple(mask.shape)}, expected [n_moe_layers, n_experts]")
        self.frozen = None if mask is None or bool(mask.all()) else ~mask.bool()
        self.saved = []
        if self.frozen is not None:
            self.saved = [(t, t.detach()[self.frozen[row].to(t.device)].clone()) for row, t in self._tensors()]

    def mask_grads(self) -> None:
        """Zero the gradient rows of frozen experts (so clipping and logging see only trained experts)."""
        if self.frozen is None:
            return
        for row, t in self._tensors():
            if t.grad is not None:
                t.grad[self.frozen[row].to(t.device)] = 0

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the snapshot back into the frozen slices (undoes momentum and weight decay updates)."""
        if self.frozen is None:
            return
        for (row, t), (_, saved) in zip(self._tensors(), self.saved):
            t[self.frozen[row].to(t.device)] = saved

    def trained_params(self, mask: torch.Tensor | None) -> int:
        """Number of expert parameters that ``mask`` lets train."""
        per_expert = sum(t[0].numel() for _, t in self._tensors()) // len(self.experts)
        return per_expert * (int(mask.sum()) if mask is not None else len(self.experts) * self.experts[0].gate_up_proj.shape[0])
