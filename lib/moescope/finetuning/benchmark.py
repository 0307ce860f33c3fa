"""Time one DES-MoE training step of a random-weight model at real size (GPU benchmark of the method's cost)."""
from __future__ import annotations

import time

import torch
from transformers import PretrainedConfig

from .. import configs
from ..determinism import set_determinism
from .batches import Encoded
from .methods import DESMoE
from .train import TrainConfig, train


def desmoe_step_benchmark(config: PretrainedConfig, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                          batch_size: int = 4, seq_len: int = 512, repeats: int = 3) -> dict:
    """Median seconds per DES-MoE training step after the first (stabilisation phase: ALR + distillation + DGES masks) and peak memory
    of a random-weight model built from ``config`` (e.g. configs.real_config('deepseek-ai/DeepSeek-V2-Lite'))."""
    set_determinism(0)
    model = configs.build(config).to(device=device, dtype=dtype)
    vocab = int(config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch_size, seq_len), generator=gen)
    data = encode_random(ids)
    method = DESMoE(t1=0.0)
    cfg = TrainConfig(steps=1 + repeats, batch_size=batch_size, lr=1e-4)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = train(model, None, data, method, cfg)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"params": sum(p.numel() for p in model.parameters()), "step_seconds": sorted(res.step_seconds[1:])[len(res.step_seconds[1:]) // 2],
            "first_step_seconds": res.step_seconds[0],
            "wall_seconds": wall, "peak_gib": peak, "loss": res.losses[-1], "device": device, "dtype": str(dtype)}


def encode_random(ids: torch.Tensor) -> Encoded:
    """Random token rows as one-domain training data (loss on every token)."""
    return Encoded(ids, torch.ones_like(ids), ids.clone(), ("random",) * ids.shape[0])
