"""One training loop for every method: AdamW on single-domain batches, the method's plan applied each step.

Per step: plan = method.plan(step, T, domain); parts outside plan.parts get requires_grad=False (AdamW skips
them); routed experts outside plan.experts are frozen exactly (:class:`.masks.ExpertFreezer`); the method's
hooks (e.g. the ALR router) are active throughout training and evaluation and removed afterwards. The parameter
map and the expert freezer are made before ``method.prepare`` (which may wrap modules, as LoRA does).
``parallel`` (:mod:`.parallel`) splits each batch over processes and synchronises the gradients before the
expert masks act; the default runs in one process.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import arch
from ..determinism import adamw, deterministic_kernels
from .domains import Example
from ..hooks import hooked
from .batches import Encoded, domain_batches, encode
from .masks import BACKBONE, BASE_PARTS, ExpertFreezer, PartMap, set_trainable
from .methods import Method
from .parallel import LOCAL, Local


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule. ``eval_every=0`` evaluates only before and after training. ``backbone_lr``: the
    rate of the backbone parts (embeddings with the LM head, attention, norms, dense FFNs: :data:`.masks.BACKBONE`)
    when set, every other parameter (router, experts, adapters, ALR heads) at ``lr``; unset, all at ``lr``."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    seed: int = 0
    eval_every: int = 0
    aux_loss: bool = False
    backbone_lr: float | None = None


@dataclass
class TrainResult:
    """Evaluation rows (step, train_seconds, metrics...), final metrics and mean trained parameters per step."""

    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    trained_params: float = 0.0
    method: dict = field(default_factory=dict)


def _trained_params(part_map: PartMap, freezer: ExpertFreezer | None, experts: torch.Tensor | None) -> int:
    parts = part_map.parts()
    dense = sum(p.numel() for name, ps in parts.items() if name != "experts" for p in ps if p.requires_grad)
    if freezer is None or not any(p.requires_grad for p in parts["experts"]):
        return dense + sum(p.numel() for p in parts["experts"] if p.requires_grad)
    return dense + freezer.trained_params(experts)


def parameter_groups(part_map: PartMap, extra: Sequence[nn.Parameter], config: TrainConfig) -> list:
    """The optimizer's parameters: one list at ``config.lr``, or with ``config.backbone_lr`` two groups (the
    backbone parts at that rate, the rest at ``config.lr``)."""
    if config.backbone_lr is None:
        return list(part_map.model.parameters()) + list(extra)
    parts = part_map.parts()
    backbone = [p for name in BACKBONE for p in parts[name]]
    chosen = {id(p) for p in backbone}
    rest = [p for p in part_map.model.parameters() if id(p) not in chosen] + list(extra)
    return [{"params": backbone, "lr": config.backbone_lr}, {"params": rest}]


def train(model: nn.Module, tokenizer, examples: Sequence[Example] | Encoded, method: Method,
          config: TrainConfig = TrainConfig(),
          evaluate: Callable[[nn.Module], dict] | None = None, parallel: Local = LOCAL,
          on_step: Callable[[int, nn.Module], None] | None = None) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples`` (prompt, answer, domain) with ``method``.

    ``evaluate(model)`` runs (under the method's hooks) before training, every ``eval_every`` steps and at the end;
    ``on_step(step, model)`` after each (1-based) step's update.
    """
    device = next(model.parameters()).device
    data = examples if isinstance(examples, Encoded) else encode(tokenizer, examples)
    part_map = PartMap(model)
    freezer = ExpertFreezer(model) if arch.is_moe(model) else None
    method.prepare(model, data, config.batch_size)
    net = parallel.wrap(model, method)
    opt = adamw(parameter_groups(part_map, method.extra_parameters(), config), lr=config.lr, betas=config.betas,
                weight_decay=config.weight_decay)
    extra = {"output_router_logits": True} if config.aux_loss and hasattr(model.config, "router_aux_loss_coef") else {}
    stream = domain_batches(data, config.batch_size, config.seed)
    result = TrainResult()
    trained = 0
    model.train()

    def evaluation(step: int) -> None:
        if evaluate is not None:
            result.history.append({"step": step, "train_seconds": result.train_seconds, **evaluate(model)})

    with hooked(method.hooks()):
        evaluation(0)
        for step in range(config.steps):
            domain, rows = next(stream)
            batch = parallel.batch(data, rows, device)
            plan = method.plan(step, config.steps, domain)
            set_trainable(part_map, plan.parts)
            start = time.perf_counter()
            if freezer is not None:
                freezer.hold(plan.experts)
            with deterministic_kernels():
                out = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels,
                          use_cache=False, **extra)
                parallel.backward(method, out.loss, batch, step, config.steps)
                if freezer is not None:
                    freezer.mask_grads()
                opt.step()
                if freezer is not None:
                    freezer.restore()
            opt.zero_grad(set_to_none=True)
            method.after_step(step, config.steps, domain, batch)
            if on_step is not None:
                on_step(step + 1, model)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.step_seconds.append(time.perf_counter() - start)
            result.train_seconds += result.step_seconds[-1]
            result.losses.append(parallel.loss_value(out.loss))
            trained += _trained_params(part_map, freezer, plan.experts)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                evaluation(step + 1)
        evaluation(config.steps)
    set_trainable(part_map, BASE_PARTS)
    result.final = result.history[-1] if result.history else {}
    result.trained_params = trained / max(config.steps, 1)
    result.method = method.summary()
    return result
