"""DES-MoE components (Li et al., EMNLP 2025, arXiv 2509.16882): the Adaptive Lightweight Router (ALR) with
router distillation, Domain-Guided Expert Specialization (DGES) and the three-phase schedule.

Choices where the paper is ambiguous (see /work/shared/papers/des-moe-emnlp2025.md §1):

- ALR in residual form: R_adapt(h) = R_orig(h) + W2 GELU(W1 h + b1) + b2 with W1 [4d, d] Kaiming-initialised
  and W2, b2 zero, so routing starts exactly at the pretrained router's; R_orig stays frozen.
- L_KD = mean over real tokens of KL(softmax(R_orig/tau) || softmax(R_adapt/tau)), tau = 0.7 (no tau^2 factor);
  for sigmoid routers (each expert's score an independent sigmoid) the KL of the experts' Bernoulli scores,
  sum_e KL(Bern(sigmoid(R_orig,e/tau)) || Bern(sigmoid(R_adapt,e/tau))) (:func:`router_kl`).
- Router gradient = lambda * grad L_KD + (1 - lambda) * grad L_task with lambda(alpha) = max(0, 1 - alpha),
  alpha = fraction of training done; the backbone and experts get grad L_task only.
- DGES affinity A[d,l,e] = share of domain-d tokens whose top-K in layer l holds e; M = A >= phi * max_e A,
  phi = 0.6; refreshed as A <- m * A_new + (1 - m) * A with m = 0.9 (the new statistic weighs 0.9, as printed).
- Schedule: warm-up t < 0.2T (router + backbone as eq. 11 reads it, router + routed experts as the Fig. 1 caption
  does: the ``warmup`` option of :class:`.methods.DESMoE`), stabilisation t < 0.7T (router + the batch domain's
  experts), consolidation (the batch domain's experts only). Shared experts never train (they are neither routed
  nor backbone; ESFT found training them hurts general ability).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import arch, routing

WARMUP, STABILIZE, CONSOLIDATE = "warmup", "stabilize", "consolidate"


class ALR(nn.Module):
    """Residual adaptive router head: delta(h) = W2 GELU(W1 h + b1) + b2, zero at initialisation."""

    def __init__(self, hidden: int, n_experts: int, expansion: int = 4):
        super().__init__()
        self.up = nn.Linear(hidden, expansion * hidden)
        self.down = nn.Linear(expansion * hidden, n_experts)
        nn.init.kaiming_uniform_(self.up.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(hidden)))


class AdaptiveRouting:
    """One ALR per MoE layer, applied by a forward hook on ``mlp.gate`` that reads the router's decision through
    :func:`moescope.routing.decision` and returns the router's own output convention (:func:`moescope.routing.repack`)
    for the logits R_orig(h) + ALR(h) and ``routing.route`` of them; it keeps both logits of the last forward for
    L_KD."""

    def __init__(self, model: nn.Module, expansion: int = 4):
        arch.require_moe(model, "the adaptive lightweight router")
        routers = [p.router for p in arch.layers(model) if p.is_moe]
        param = next(model.parameters())
        self.routers = routers
        self.heads = nn.ModuleList(
            ALR(r.weight.shape[1], r.weight.shape[0], expansion) for r in routers
        ).to(device=param.device, dtype=param.dtype)
        self.last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(routers)
        #: factor on L_KD in :func:`distilled_backward` (1 in one process; :mod:`.parallel` sets it per rank)
        self.kd_scale = 1.0

    def _hook(self, row: int):
        def hook(router, args, output):
            logits, weights, _ = routing.decision(router, output)
            hidden = args[0].reshape(-1, args[0].shape[-1])
            adapted = logits + self.heads[row](hidden.to(self.heads[row].up.weight.dtype)).to(logits.dtype)
            self.last[row] = (logits, adapted)
            new_w, new_idx = routing.route(router, adapted, bias=args[1] if len(args) > 1 else None)
            return routing.repack(router, adapted, new_w.to(weights.dtype), new_idx, output)
        return hook

    def hooks(self) -> list[tuple[nn.Module, str, object]]:
        """Hooks for :func:`moescope.interventions.hooked` (prepended: later hooks see the adapted routing)."""
        return [(r, "forward_prepend", self._hook(i)) for i, r in enumerate(self.routers)]

    def kd_loss(self, token_mask: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
        """mean over layers of :func:`router_kl` (teacher R_orig, detached; student R_adapt) on the real tokens."""
        keep = token_mask.reshape(-1).bool()
        losses = []
        for router, pair in zip(self.routers, self.last):
            if pair is None:
                raise RuntimeError("kd_loss needs a forward pass with the ALR hooks installed")
            orig, adapted = pair
            losses.append(router_kl(router, orig.detach()[keep], adapted[keep], tau))
        return torch.stack(losses).mean()


def router_kl(router: nn.Module, teacher: torch.Tensor, student: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher's routing || student's) from logits [T, E] at temperature ``tau``.

    Softmax routers: KL(softmax(z_t/tau) || softmax(z_s/tau)). Sigmoid routers (``routing.SIGMOID_FAMILIES``),
    whose experts' scores are independent: sum_e KL(Bern(p_e) || Bern(q_e)) with p = sigmoid(z_t/tau),
    q = sigmoid(z_s/tau), i.e. sum_e p_e (log p_e - log q_e) + (1 - p_e)(log(1 - p_e) - log(1 - q_e))."""
    t, s = teacher.float() / tau, student.float() / tau
    if routing.family(router) in routing.SIGMOID_FAMILIES:
        log_p, log_q, log_not_p, log_not_q = F.logsigmoid(t), F.logsigmoid(s), F.logsigmoid(-t), F.logsigmoid(-s)
        kl = log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)
        return kl.sum(-1).mean()
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")


def distilled_backward(routing: AdaptiveRouting, loss: torch.Tensor, token_mask: torch.Tensor, lam: float,
                       tau: float = 0.7) -> None:
    """Backward pass where the ALR heads get lam * grad L_KD + (1 - lam) * grad L_task and every other parameter
    grad L_task (the distillation loss does not reach the backbone)."""
    heads = list(routing.heads.parameters())
    kd = routing.kd_loss(token_mask, tau) * routing.kd_scale
    kd_grads = torch.autograd.grad(kd, heads, retain_graph=True, allow_unused=True)
    loss.backward()
    for p, g_kd in zip(heads, kd_grads):
        g_task = p.grad if p.grad is not None else torch.zeros_like(p)
        p.grad = (1 - lam) * g_task + (lam * g_kd if g_kd is not None else 0)


def distillation_weight(alpha: float) -> float:
    """lambda(alpha) = max(0, 1 - alpha), alpha = fraction of training completed."""
    return max(0.0, 1.0 - alpha)


def phase(step: int, total: int, t1: float = 0.2, t2: float = 0.7) -> str:
    """WARMUP for step < t1*T, STABILIZE for step < t2*T, else CONSOLIDATE."""
    if step < t1 * total:
        return WARMUP
    return STABILIZE if step < t2 * total else CONSOLIDATE


class Affinity:
    """DGES statistics: A[d, l, e] (share of domain-d tokens routing to expert e in layer l) and its masks."""

    def __init__(self, domains: list[str], n_layers: int, n_experts: int, momentum: float = 0.9, phi: float = 0.6):
        self.domains, self.momentum, self.phi = list(domains), momentum, phi
        self.counts = torch.zeros(len(domains), n_layers, n_experts)
        self.tokens = torch.zeros(len(domains))
        self.value: torch.Tensor | None = None

    def observe(self, domain: str, index: list[torch.Tensor], token_mask: torch.Tensor) -> None:
        """Add one forward's top-K indices (one [T, K] tensor per layer) for the real tokens of ``domain``."""
        d = self.domains.index(domain)
        keep = token_mask.reshape(-1).bool().cpu()
        n_experts = self.counts.shape[-1]
        for layer, idx in enumerate(index):
            chosen = idx.detach().cpu()[keep]
            self.counts[d, layer] += torch.bincount(chosen.reshape(-1), minlength=n_experts).float()
        self.tokens[d] += int(keep.sum())

    def refresh(self) -> torch.Tensor:
        """A <- counts/tokens (first time) or momentum * counts/tokens + (1 - momentum) * A; resets counts."""
        seen = self.tokens > 0
        fresh = self.counts / self.tokens.clamp(min=1)[:, None, None]
        if self.value is None:
            self.value = fresh
        else:
            blended = self.momentum * fresh + (1 - self.momentum) * self.value
            self.value = torch.where(seen[:, None, None], blended, self.value)
        self.counts.zero_()
        self.tokens.zero_()
        return self.value

    def masks(self) -> torch.Tensor:
        """M[d, l, e] = A[d, l, e] >= phi * max_e A[d, l, e] (all True before any refresh)."""
        if self.value is None:
            return torch.ones_like(self.counts, dtype=torch.bool)
        return self.value >= self.phi * self.value.amax(dim=-1, keepdim=True)
