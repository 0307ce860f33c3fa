"""The fine-tuning methods as per-step decisions for the shared loop in :mod:`.train`.

A method says, at each step and for the batch's domain, which parameter parts train and which routed experts
(:class:`StepPlan`); it may add hooks (routing edits, logging), extra parameters (ALR heads) and its own
backward pass (router distillation).

- :class:`FullFT` : every parameter trains.
- :class:`FrozenRouterFT` : every parameter but the routers (mlp.gate) trains.
- :class:`ESFT` : only the routed experts selected by relevance (Gate score p=0.1 or Token score p=0.2) train;
  router, shared experts, attention, embeddings and norms stay frozen; routing is unchanged.
- :class:`DESMoE` : ALR + distillation, DGES masks, three-phase schedule (:mod:`.desmoe`); ``alr=False`` and
  ``dges=False`` give the paper's ablations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import arch
from . import desmoe, esft
from .batches import Encoded
from .masks import BACKBONE, PARTS


@dataclass(frozen=True)
class StepPlan:
    """Parts whose parameters train this step; ``experts`` [L, E] limits the routed experts (None = all)."""

    parts: frozenset[str]
    experts: torch.Tensor | None = None


class Method:
    """Base class: every part trains, no hooks, plain backward."""

    name = "method"

    def prepare(self, model: nn.Module, data: Encoded, batch_size: int) -> None:
        """Called once before training, with the encoded training data."""

    def hooks(self) -> list:
        """Module hooks active during training and evaluation (see interventions.hooked)."""
        return []

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the model that the optimizer must update."""
        return []

    def plan(self, step: int, total: int, domain: str) -> StepPlan:
        return StepPlan(frozenset(PARTS))

    def backward(self, loss: torch.Tensor, batch: Encoded, step: int, total: int) -> None:
        loss.backward()

    def after_step(self, step: int, total: int, domain: str, batch: Encoded) -> None:
        """Called after each optimizer step."""

    def summary(self) -> dict:
        """What the method decided (selected experts, affinity snapshots), for the results file."""
        return {}


class FullFT(Method):
    """Full fine-tuning: all parameters train."""

    name = "fft"


class FrozenRouterFT(Method):
    """All parameters but the routers train (routing can only change through the router inputs)."""

    name = "frozen_router"

    def prepare(self, model, data, batch_size):
        arch.require_moe(model, "frozen-router fine-tuning")

    def plan(self, step, total, domain):
        return StepPlan(frozenset(PARTS) - {"router"})


def _score_batches(data: Encoded, rows: list[int], batch_size: int):
    for start in range(0, len(rows), batch_size):
        b = data.rows(rows[start:start + batch_size], data.input_ids.device)
        yield b.input_ids, b.attention_mask


class ESFT(Method):
    """Expert-specialised fine-tuning: train only experts selected by ``score`` ('gate' or 'token') up to ``p``.

    ``selection='mixed'`` scores the pooled training data (one static mask); ``'per_domain'`` scores each domain
    and applies its mask to that domain's batches.
    """

    def __init__(self, score: str = "gate", p: float | None = None, selection: str = "mixed"):
        if score not in ("gate", "token") or selection not in ("mixed", "per_domain"):
            raise ValueError("score must be 'gate' or 'token', selection 'mixed' or 'per_domain'")
        self.score, self.selection = score, selection
        self.p = p if p is not None else (0.1 if score == "gate" else 0.2)
        self.name = f"esft_{score}"
        self.masks: dict[str, torch.Tensor] = {}

    def prepare(self, model, data, batch_size):
        arch.require_moe(model, "ESFT")
        device = next(model.parameters()).device
        data = data.rows(range(len(data)), device)
        groups = {"*": list(range(len(data)))}
        if self.selection == "per_domain":
            groups = {d: [i for i, x in enumerate(data.domains) if x == d] for d in sorted(set(data.domains))}
        for key, rows in groups.items():
            rel = esft.relevance(model, _score_batches(data, rows, batch_size))
            self.masks[key] = esft.select_top_p(getattr(rel, self.score), self.p)

    def plan(self, step, total, domain):
        return StepPlan(frozenset({"experts"}), self.masks.get(domain, self.masks.get("*")))

    def summary(self):
        return {"experts_per_layer": {k: m.sum(1).tolist() for k, m in self.masks.items()}}


class DESMoE(Method):
    """DES-MoE: ALR router with distillation, DGES per-domain expert masks, three-phase schedule.

    ``alr=False``: no ALR and no distillation, the original router trains on the task loss in phases I-II.
    ``dges=False``: no expert-domain masks (all routed experts train in phases II-III).
    ``warmup_experts``: routed experts also train in phase I (Fig. 1 caption) instead of staying frozen (eq. 11).
    ``routing``/``reserved``: reuse an earlier stage's ALR, and keep experts reserved by earlier domains frozen
    (sequential adaptation; a layer whose mask would become empty keeps its own mask).
    """

    name = "desmoe"

    def __init__(self, alr: bool = True, dges: bool = True, warmup_experts: bool = False, t1: float = 0.2,
                 t2: float = 0.7, tau: float = 0.7, momentum: float = 0.9, phi: float = 0.6, t_update: int = 25,
                 routing: desmoe.AdaptiveRouting | None = None, reserved: torch.Tensor | None = None):
        self.alr, self.dges, self.warmup_experts = alr, dges, warmup_experts
        self.t1, self.t2, self.tau, self.momentum, self.phi, self.t_update = t1, t2, tau, momentum, phi, t_update
        self.routing, self.reserved = routing, reserved
        self.affinity: desmoe.Affinity | None = None
        self.snapshots: dict[str, list] = {}
        self._index: list[torch.Tensor | None] = []

    def prepare(self, model, data, batch_size):
        arch.require_moe(model, "DES-MoE")
        routers = [p.router for p in arch.layers(model) if p.is_moe]
        if self.alr and self.routing is None:
            self.routing = desmoe.AdaptiveRouting(model)
        self._routers = routers
        self._index = [None] * len(routers)
        self.affinity = desmoe.Affinity(sorted(set(data.domains)), len(routers), arch.num_experts(model),
                                        self.momentum, self.phi)

    def _recorder(self, row: int):
        def hook(module, args, output):
            self._index[row] = output[2].detach()
        return hook

    def hooks(self):
        own = [(r, "forward", self._recorder(i)) for i, r in enumerate(self._routers)]
        return (self.routing.hooks() if self.alr else []) + own

    def extra_parameters(self):
        return list(self.routing.heads.parameters()) if self.alr else []

    def _router_trains(self, ph: str) -> bool:
        return ph != desmoe.CONSOLIDATE

    def _expert_mask(self, domain: str) -> torch.Tensor | None:
        if not self.dges:
            return None
        mask = self.affinity.masks()[self.affinity.domains.index(domain)]
        if self.reserved is not None:
            free = mask & ~self.reserved
            mask = torch.where(free.any(1, keepdim=True), free, mask)
        return mask

    def plan(self, step, total, domain):
        ph = desmoe.phase(step, total, self.t1, self.t2)
        router_trains = self._router_trains(ph)
        if self.alr:
            self.routing.heads.requires_grad_(router_trains)
        parts = {"router"} if router_trains and not self.alr else set()
        if ph == desmoe.WARMUP:
            parts |= set(BACKBONE) | ({"experts"} if self.warmup_experts else set())
            return StepPlan(frozenset(parts), None)
        return StepPlan(frozenset(parts | {"experts"}), self._expert_mask(domain))

    def backward(self, loss, batch, step, total):
        if not (self.alr and self._router_trains(desmoe.phase(step, total, self.t1, self.t2))):
            loss.backward()
            return
        lam = desmoe.distillation_weight(step / total)
        heads = [p for p in self.routing.heads.parameters()]
        kd = self.routing.kd_loss(batch.attention_mask, self.tau)
        kd_grads = torch.autograd.grad(kd, heads, retain_graph=True, allow_unused=True)
        loss.backward()
        for p, g_kd in zip(heads, kd_grads):
            g_task = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = (1 - lam) * g_task + (lam * g_kd if g_kd is not None else 0)

    def after_step(self, step, total, domain, batch):
        self.affinity.observe(domain, self._index, batch.attention_mask)
        boundary = {int(self.t1 * total): "t1", int(self.t2 * total): "t2", total: "T"}.get(step + 1)
        periodic = step + 1 > self.t1 * total and (step + 1 - int(self.t1 * total)) % self.t_update == 0
        if boundary or periodic:
            self.affinity.refresh()
        if boundary:
            self.snapshots[boundary] = {"affinity": self.affinity.value.tolist(),
                                        "masks": self.affinity.masks().tolist()}

    def summary(self):
        return {"domains": self.affinity.domains, "snapshots": self.snapshots}
