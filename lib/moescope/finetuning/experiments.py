"""Experiment grids of the DES-MoE notebooks, cached on disk as JSON (reruns are instant; an interrupted grid
resumes where it stopped).

A :class:`Setup` fixes the base organism (an MoE pre-trained on the general data of :mod:`moescope.domains`);
each run starts from a fresh copy of it, fine-tunes one method on the mixture of some domains, and stores the
evaluation history. The cache key is a hash of every argument that changes the result.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from .. import configs
from . import domains
from ..determinism import set_determinism
from ..models import load_model, load_tokenizer
from ..results import write_json_atomic
from ..vocab import word_tokenizer
from .batches import Encoded
from .evaluate import Evaluator
from .methods import DESMoE, ESFT, FrozenRouterFT, FullFT
from .train import TrainConfig, train

CACHE_VERSION = 1

#: name -> (constructor, learning rate): 1e-3 (3e-3 for ESFT, which trains only a few experts; the papers also
#: give ESFT its own rate). At 3e-3 the DES-MoE warm-up (backbone training) erased a third of the general facts.
METHODS: dict[str, tuple] = {
    "fft": (FullFT, 1e-3),
    "frozen_router": (FrozenRouterFT, 1e-3),
    "esft_gate": (lambda: ESFT("gate", 0.1), 3e-3),
    "esft_token": (lambda: ESFT("token", 0.2), 3e-3),
    "desmoe": (DESMoE, 1e-3),
    "desmoe_no_alr": (lambda: DESMoE(alr=False), 1e-3),
    "desmoe_no_dges": (lambda: DESMoE(dges=False), 1e-3),
    "desmoe_warmup_experts": (lambda: DESMoE(warmup_experts=True), 1e-3),
}


@dataclass(frozen=True)
class Setup:
    """The base organism: model family and sizes, pre-training budget, data sizes."""

    family: str = "olmoe"
    hidden: int = 64
    layers: int = 2
    experts: int = 16
    top_k: int = 2
    expert_width: int = 64
    pretrain_steps: int = 500
    pretrain_lr: float = 3e-3
    n_train: int = 256
    n_test: int = 64
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def key(self) -> str:
        return _hash(asdict(self))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, obj], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Organism:
    """A pre-trained base model on disk, its tokenizer, the corpus and its base scores."""

    path: Path
    tokenizer: object
    corpus: domains.Corpus
    base_scores: dict
    setup: Setup = field(default_factory=Setup)

    def load(self) -> nn.Module:
        """A fresh copy of the base model, on the setup's device and dtype."""
        return load_model(str(self.path), device=self.setup.device, dtype=self.setup.dtype).model

    def evaluator(self, names) -> Evaluator:
        return Evaluator(self.tokenizer, [e for d in names for e in self.corpus.domains[d].test],
                         self.corpus.general_test)


def base_organism(setup: Setup, out_dir: Path | str) -> Organism:
    """Pre-train (or load from ``out_dir``) the base MoE on the general data, with the load-balancing loss."""
    corpus = domains.corpus(setup.n_train, setup.n_test, seed=setup.seed)
    path = Path(out_dir) / f"base-{setup.key()}"
    scores_file = path / "base_scores.json"
    if not scores_file.exists():
        set_determinism(setup.seed)
        tok = word_tokenizer(corpus.texts())
        shape = configs.Shape(vocab=len(tok), hidden=setup.hidden, layers=setup.layers, heads=4,
                              experts=setup.experts, top_k=setup.top_k, expert_width=setup.expert_width)
        model = configs.build(configs.tiny_config(setup.family, shape)).to(setup.device)
        ev = Evaluator(tok, [e for s in corpus.domains.values() for e in s.test], corpus.general_test)
        res = train(model, tok, corpus.general_train, FullFT(),
                    TrainConfig(steps=setup.pretrain_steps, batch_size=64, lr=setup.pretrain_lr, aux_loss=True,
                                seed=setup.seed), ev)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        write_json_atomic(scores_file, {"scores": res.final, "train_seconds": res.train_seconds})
    scores = json.loads(scores_file.read_text())["scores"]
    return Organism(path, load_tokenizer(str(path)), corpus, scores, setup)


@dataclass(frozen=True)
class Run:
    """One fine-tuning run: ``method`` (a METHODS key) on the mixture of ``domains``."""

    method: str
    domains: tuple[str, ...]
    seed: int = 0
    steps: int = 300
    eval_every: int = 25
    batch_size: int = 32


def run(org: Organism, spec: Run, out_dir: Path | str) -> dict:
    """Result of ``spec`` from cache, or train it and cache it: history, final scores, method summary."""
    file = Path(out_dir) / "runs" / f"{spec.method}-{len(spec.domains)}d-s{spec.seed}-{_hash([org.setup.key(), asdict(spec)])}.json"
    if file.exists():
        return json.loads(file.read_text())
    factory, lr = METHODS[spec.method]
    set_determinism(spec.seed)
    model = org.load()
    examples = [e for d in spec.domains for e in org.corpus.domains[d].train]
    cfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=lr, seed=spec.seed, eval_every=spec.eval_every)
    res = train(model, org.tokenizer, examples, factory(), cfg, org.evaluator(spec.domains))
    out = {"spec": asdict(spec), "lr": lr, "history": res.history, "final": res.final, "losses": res.losses,
           "train_seconds": res.train_seconds, "trained_params": res.trained_params, "method": res.method,
           "base": org.base_scores}
    return json.loads(write_json_atomic(file, out).read_text())


def summary_row(result: dict) -> dict:
    """Flat row: method, N, seed, domain_avg, general, retention = general / base general, forgetting."""
    spec, final, base = result["spec"], result["final"], result["base"]
    return {"method": spec["method"], "n_domains": len(spec["domains"]), "domains": "+".join(spec["domains"]),
            "seed": spec["seed"], "domain_avg": final["domain_avg"], "general": final["general"],
            "retention": final["general"] / base["general"], "forgetting": base["general"] - final["general"],
            "train_seconds": result["train_seconds"], "trained_params": result["trained_params"],
            **{f"acc_{d}": final[d] for d in spec["domains"]}}


def grid(org: Organism, specs: list[Run], out_dir: Path | str) -> pd.DataFrame:
    """Run (or read) every spec with a progress bar; one summary row per run."""
    return pd.DataFrame([summary_row(run(org, s, out_dir)) for s in tqdm(specs, desc="runs", leave=False)])


def sequential(org: Organism, method: str, order: tuple[str, ...], steps: int, out_dir: Path | str,
               seed: int = 0) -> pd.DataFrame:
    """Adapt to ``order`` one domain after another; after each stage score every domain so far and general.

    DES-MoE stages reuse the ALR heads and keep the experts of earlier domains' final masks frozen.
    """
    file = Path(out_dir) / "runs" / f"seq-{method}-{_hash([org.setup.key(), method, order, steps, seed])}.json"
    if file.exists():
        return pd.DataFrame(json.loads(file.read_text()))
    factory, lr = METHODS[method]
    set_determinism(seed)
    model = org.load()
    rows, routing, reserved = [], None, None
    for stage, domain in enumerate(order):
        m = factory()
        if isinstance(m, DESMoE):
            m.routing, m.reserved = routing, reserved
        cfg = TrainConfig(steps=steps, batch_size=32, lr=lr, seed=seed + stage)
        res = train(model, org.tokenizer, org.corpus.domains[domain].train, m, cfg, org.evaluator(order[: stage + 1]))
        if isinstance(m, DESMoE):
            routing = m.routing
            final_mask = torch.tensor(m.snapshots["T"]["masks"][0], dtype=torch.bool)
            reserved = final_mask if reserved is None else reserved | final_mask
        rows += [{"method": method, "stage": stage + 1, "trained": domain, "domain": d, "acc": res.final[d]}
                 for d in order[: stage + 1]]
        rows.append({"method": method, "stage": stage + 1, "trained": domain, "domain": "general",
                     "acc": res.final["general"]})
    return pd.DataFrame(json.loads(write_json_atomic(file, rows).read_text()))


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
