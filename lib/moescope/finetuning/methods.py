"""The fine-tuning methods as per-step decisions for the shared loop in :mod:`.train`.

A method says, at each step and for the batch's domain, which parameter parts train and which routed experts
(:class:`StepPlan`); it may add hooks (routing edits, logging), extra parameters (ALR heads) and its own
backward pass (router distillation).

- :class:`FullFT` : every parameter trains.
- :class:`FrozenRouterFT` : every parameter but the routers (mlp.gate) trains.
- :class:`ESFT` : only the routed experts selected by relevance (Gate score p=0.1 or Token score p=0.2) train;
  router, shared experts, attention, embeddings and norms stay frozen; routing is unchanged.
- :class:`ESFTALR` : ESFT plus the ALR router trained with distillation (Table 3's "ESFT + ALR").
- :class:`LoRA` : low-rank adapters (PEFT) on every linear layer but the LM head, on the fused routed experts
  (PEFT ``target_parameters``) and on the routers; the base weights stay frozen.
- :class:`DESMoE` : ALR + distillation, DGES masks, three-phase schedule (:mod:`.desmoe`); ``alr=False`` and
  ``dges=False`` give the paper's ablations.

General-data batches (the 1:1 mix) are batches of domain ``'general'``: ESFT trains its task-selected experts on
them, DES-MoE treats 'general' as one more domain with its own DGES mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import arch, routing
from . import desmoe, esft
from .batches import Encoded
from .domains import GENERAL
from .masks import BACKBONE, BASE_PARTS


#: DES-MoE's two readings of phase I (see :class:`DESMoE`)
WARMUP_BACKBONE, WARMUP_EXPERTS = "backbone", "experts"
WARMUPS = (WARMUP_BACKBONE, WARMUP_EXPERTS)


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
        return StepPlan(frozenset(BASE_PARTS))

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
        return StepPlan(frozenset(BASE_PARTS) - {"router"})


def _score_batches(data: Encoded, rows: list[int], batch_size: int):
    for start in range(0, len(rows), batch_size):
        b = data.rows(rows[start:start + batch_size], data.input_ids.device)
        yield b.input_ids, b.attention_mask


class ESFT(Method):
    """Expert-specialised fine-tuning: train only the experts selected by ``score`` ('gate' or 'token') up to ``p``.

    Relevance is scored on the pooled task training data (general rows excluded), with the original router, and
    gives one static mask for every batch.
    """

    def __init__(self, score: str = "gate", p: float | None = None):
        if score not in ("gate", "token"):
            raise ValueError("score must be 'gate' or 'token'")
        self.score = score
        self.p = p if p is not None else (0.1 if score == "gate" else 0.2)
        self.name = f"esft_{score}"
        self.mask: torch.Tensor | None = None

    def prepare(self, model, data, batch_size):
        arch.require_moe(model, "ESFT")
        device = next(model.parameters()).device
        rows = [i for i, d in enumerate(data.domains) if d != GENERAL]
        if not rows:
            raise ValueError("ESFT needs task (non-general) training rows to score expert relevance")
        rel = esft.relevance(model, _score_batches(data.rows(rows, device), list(range(len(rows))), batch_size))
        self.mask = esft.select_top_p(getattr(rel, self.score), self.p)

    def plan(self, step, total, domain):
        return StepPlan(frozenset({"experts"}), self.mask)

    def summary(self):
        return {"experts_per_layer": self.mask.sum(1).tolist(), "mask": self.mask.tolist()}


class ESFTALR(ESFT):
    """ESFT's expert selection plus an ALR router trained with distillation throughout (lambda = 1 - alpha)."""

    def __init__(self, score: str = "gate", p: float | None = None, tau: float = 0.7):
        super().__init__(score, p)
        self.name, self.tau = f"esft_{score}_alr", tau
        self.routing: desmoe.AdaptiveRouting | None = None

    def prepare(self, model, data, batch_size):
        super().prepare(model, data, batch_size)
        self.routing = desmoe.AdaptiveRouting(model)

    def hooks(self):
        return self.routing.hooks()

    def extra_parameters(self):
        return list(self.routing.heads.parameters())

    def backward(self, loss, batch, step, total):
        desmoe.distilled_backward(self.routing, loss, batch.attention_mask, desmoe.distillation_weight(step / total),
                                  self.tau)


class LoRA(Method):
    """LoRA (rank ``rank``, scaling alpha / rank) on every linear layer but the LM head, the fused routed experts
    and the routers, injected with PEFT (:mod:`.lora`); only the adapters train."""

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0):
        self.rank, self.alpha = rank, alpha
        self.trainable = 0

    def prepare(self, model, data, batch_size):
        from .lora import add_adapters

        self.trainable = add_adapters(model, self.rank, self.alpha)

    def plan(self, step, total, domain):
        return StepPlan(frozenset({"adapter"}))

    def summary(self):
        return {"adapter_params": self.trainable, "rank": self.rank, "alpha": self.alpha}


class DESMoE(Method):
    """DES-MoE: ALR router with distillation, DGES per-domain expert masks, three-phase schedule.

    ``alr=False``: no ALR and no distillation, the original router trains on the task loss in phases I-II.
    ``dges=False``: no expert-domain masks (all routed experts train in phases II-III).
    ``warmup``: what trains beside the router in phase I (t < t1 T): :data:`WARMUP_BACKBONE` (eq. 11: the backbone,
    i.e. embeddings, LM head, attention, norms and dense FFNs; routed experts frozen) or :data:`WARMUP_EXPERTS`
    (the Fig. 1 caption: every routed expert; backbone frozen). ``t1=0`` has no phase I (the readings coincide):
    the DGES masks then start with every expert and are refreshed every ``t_update`` steps from the first step.
    ``routing``/``reserved``: reuse an earlier stage's ALR, and keep experts reserved by earlier domains frozen
    (sequential adaptation; a layer whose mask would become empty keeps its own mask).
    """

    name = "desmoe"

    def __init__(self, alr: bool = True, dges: bool = True, warmup: str = WARMUP_BACKBONE, t1: float = 0.2,
                 t2: float = 0.7, tau: float = 0.7, momentum: float = 0.9, phi: float = 0.6, t_update: int = 25,
                 routing: desmoe.AdaptiveRouting | None = None, reserved: torch.Tensor | None = None):
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {', '.join(WARMUPS)}; got {warmup!r}")
        if not 0 <= t1 <= t2 <= 1:
            raise ValueError(f"the phase boundaries need 0 <= t1 <= t2 <= 1; got t1={t1}, t2={t2}")
        self.alr, self.dges, self.warmup = alr, dges, warmup
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
            self._index[row] = routing.decision(module, output)[2].detach()
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
            parts |= set(BACKBONE) if self.warmup == WARMUP_BACKBONE else {"experts"}
            return StepPlan(frozenset(parts), None)
        return StepPlan(frozenset(parts | {"experts"}), self._expert_mask(domain))

    def backward(self, loss, batch, step, total):
        if not (self.alr and self._router_trains(desmoe.phase(step, total, self.t1, self.t2))):
            loss.backward()
            return
        desmoe.distilled_backward(self.routing, loss, batch.attention_mask, desmoe.distillation_weight(step / total),
                                  self.tau)

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
