"""Data-parallel fine-tuning: one global batch split over processes, equal to the single-process run.

:func:`.train.train` takes a ``parallel`` strategy. :data:`LOCAL` (one process) leaves the loop exactly as it was
(bit-identical). :class:`DataParallel` runs the same loop in each of W processes of a ``torch.distributed`` group
(gloo on CPU, NCCL on GPUs; started by ``accelerate launch`` or ``torchrun``):

- every rank draws the same global batch from the shared batch stream and keeps rows ``rank::W`` of it;
- the model is wrapped in ``DistributedDataParallel`` (``find_unused_parameters``: the parts that train change from
  step to step), which averages its gradients over the ranks during the backward pass;
- per-token means become means over the global batch: rank r's task loss is multiplied by n_r W / N (n_r label
  tokens in its rows, N in the global batch) and its router-distillation loss L_KD by m_r W / M (real tokens), so
  the average over ranks of the gradients is the gradient of the single-process loss on the global batch;
- parameters outside the model (the ALR heads of DES-MoE and ESFT+ALR) start from rank 0's values and their
  gradients are averaged explicitly after the backward pass;
- ESFT's expert selection is rank 0's; DGES token counts are summed over the ranks before each refresh (integer
  counts: exact), so every rank holds the single-process masks;
- expert masks act on the synchronised gradients: the loop's :class:`.masks.ExpertFreezer` zeroes the frozen rows
  of the averaged gradients and restores the frozen slices after AdamW's step (undoing momentum and weight decay),
  with the same masks on every rank, so frozen experts stay bit-identical and the ranks stay identical.

Not bit-identical to one process: the global sums are added in a different order (per-rank partial sums, then
the all-reduce) and the shards have their own padding width, so results agree to rounding (see the tests).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import desmoe
from .batches import IGNORE, Encoded
from .methods import Method


def label_tokens(batch: Encoded) -> int:
    """Tokens the causal-LM loss averages over: labels after the one-position shift that are not IGNORE."""
    return int((batch.labels[:, 1:] != IGNORE).sum())


def real_tokens(batch: Encoded) -> int:
    """Tokens L_KD averages over: the attention mask's ones."""
    return int(batch.attention_mask.sum())


class Local:
    """One process: the batch as drawn, the method's own backward pass, the loss as computed."""

    rank, world = 0, 1

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        """The module the loop calls for the forward pass (after ``method.prepare``)."""
        return model

    def batch(self, data: Encoded, rows: torch.Tensor, device: torch.device) -> Encoded:
        """This process's rows of the global batch ``rows``, on ``device``."""
        return data.rows(rows, device)

    def backward(self, method: Method, loss: torch.Tensor, batch: Encoded, step: int, total: int) -> None:
        """Gradients of this step, as the single-process run would have them on every process."""
        method.backward(loss, batch, step, total)

    def loss_value(self, loss: torch.Tensor) -> float:
        """The loss of the global batch (mean over its label tokens)."""
        return loss.item()


LOCAL = Local()


class SyncedAffinity(desmoe.Affinity):
    """DGES affinity whose token counts are summed over the ranks before each refresh."""

    def __init__(self, like: desmoe.Affinity, all_reduce: Callable[[torch.Tensor], None]):
        if like.value is not None or like.tokens.any():
            raise ValueError("only a fresh affinity (before any batch) can be synchronised")
        n_domains, n_layers, n_experts = like.counts.shape
        super().__init__(like.domains, n_layers, n_experts, like.momentum, like.phi)
        self._all_reduce = all_reduce

    def refresh(self) -> torch.Tensor:
        self._all_reduce(self.counts)
        self._all_reduce(self.tokens)
        return super().refresh()


class DataParallel(Local):
    """Data parallelism over the default ``torch.distributed`` process group (initialised by the caller)."""

    def __init__(self):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group: start the "
                               "script with `accelerate launch` or `torchrun` (see docs/multi_gpu_finetuning.md)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) \
            else torch.device("cpu")
        self._model: nn.Module | None = None
        self._registered: set[int] = set()
        self._global = (1, 1)
        self._local_labels = 1

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place (through the backend's device)."""
        moved = tensor.to(self.comm_device)
        dist.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's ``tensor`` on every rank, in place."""
        moved = tensor.to(self.comm_device)
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)

    @torch.no_grad()
    def wrap(self, model, method):
        for param in method.extra_parameters():
            self._broadcast(param.data)
        mask = getattr(method, "mask", None)
        if isinstance(mask, torch.Tensor):
            shared = mask.to(torch.uint8)
            self._broadcast(shared)
            method.mask = shared.bool()
        affinity = getattr(method, "affinity", None)
        if isinstance(affinity, desmoe.Affinity) and not isinstance(affinity, SyncedAffinity):
            method.affinity = SyncedAffinity(affinity, self._all_reduce)
        self._model = model
        self._registered = {id(p) for p in model.parameters() if p.requires_grad}
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True, forward_sync_buffers=False)

    def batch(self, data, rows, device):
        if len(rows) < self.world:
            raise ValueError(f"a batch of {len(rows)} rows cannot be split over {self.world} processes: use a batch "
                             f"size of at least {self.world} and at least {self.world} examples per domain")
        whole = data.rows(rows)
        self._global = (label_tokens(whole), real_tokens(whole))
        local = data.rows(rows[self.rank::self.world], device)
        self._local_labels = label_tokens(local)
        return local

    def _check_registered(self) -> None:
        late = [n for n, p in self._model.named_parameters() if p.requires_grad and id(p) not in self._registered]
        if late:
            raise RuntimeError(f"{len(late)} parameters train but were frozen when the model was wrapped for data "
                               f"parallelism (e.g. {late[0]}); DDP would not synchronise them")

    def backward(self, method, loss, batch, step, total):
        self._check_registered()
        labels, tokens = self._global
        routing = getattr(method, "routing", None)
        if isinstance(routing, desmoe.AdaptiveRouting):
            routing.kd_scale = real_tokens(batch) * self.world / tokens
        try:
            method.backward(loss * (self._local_labels * self.world / labels), batch, step, total)
        finally:
            if isinstance(routing, desmoe.AdaptiveRouting):
                routing.kd_scale = 1.0
        self._average(method.extra_parameters())

    @torch.no_grad()
    def _average(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of parameters DDP does not see; None stays None only where it is None on all ranks."""
        if not params:
            return
        has = torch.tensor([float(p.grad is not None) for p in params])
        self._all_reduce(has)
        for param, flag in zip(params, has.tolist()):
            if flag:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                self._all_reduce(param.grad)
                param.grad.div_(self.world)

    def loss_value(self, loss):
        total = loss.detach().double().reshape(1) * self._local_labels
        self._all_reduce(total)
        return float(total) / self._global[0]
