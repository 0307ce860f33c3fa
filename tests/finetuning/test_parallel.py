"""Data-parallel fine-tuning over 2 gloo processes on CPU equals the one-process run; frozen experts stay exact.

Two forked processes (one thread each) train the methods from the same tiny DeepSeek-V2-like model (shared and
routed experts) through :class:`.parallel.DataParallel`, on data whose rows differ in length, so the two shards of
a batch hold different token counts; the test process trains the same runs with one process. Each run is probed
at every step: the experts its plan freezes must be bit-identical after the step (weight decay 0.1 and AdamW
momentum from earlier steps would move them). Fork, not spawn: the children inherit the imported kit (spawn
re-imports torch and transformers in each, about 2x the test's time); they set one thread before any torch op,
so no OpenMP pool crosses the fork.

Tolerances, and why the runs are not bit-identical: data parallelism adds each global sum as two per-rank
partial sums and shards have their own padding width, so gradients differ from one process's by rounding.
- float64 (experts through transformers' eager loop; grouped_mm has no float64 kernel): every weight, ALR head and
  step loss within TOL64 = 1e-5 after 6 AdamW steps at lr 1e-2 (measured: weights <= 3.2e-7, losses <= 6e-7, as
  transformers computes the LM loss in float32 even for a float64 model). Training moved the weights by 0.04-0.06,
  so a missing or mis-weighted synchronisation fails by orders of magnitude.
- float32, methods without ALR heads (full FT, ESFT): within TOL32 = 1e-4 (measured <= 9.3e-6).
- float32, methods with ALR heads (ESFT+ALR, DES-MoE): not compared. The ALR starts equal to the router, so the
  first step's distillation gradient is analytically zero and numerically rounding noise (~2e-9); AdamW divides
  it by its own magnitude (+eps 1e-8) into a step of ~lr/6 in a noise direction, and any change of summation
  order changes that noise. Their float64 runs carry the comparison.
"""
from __future__ import annotations

import os
import random
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moescope import configs
from moescope.determinism import set_determinism
from moescope.finetuning import masks
from moescope.finetuning.domains import Example, domain_split
from moescope.finetuning.methods import DESMoE, ESFT, ESFTALR, FullFT, Method
from moescope.finetuning.parallel import LOCAL, DataParallel
from moescope.finetuning.train import TrainConfig, train
from moescope.vocab import word_tokenizer

WORLD = 2
TOL64, TOL32 = 1e-5, 1e-4
STEPS = 6
METHODS: dict[str, tuple[type[Method], dict]] = {
    "fft": (FullFT, {}), "esft": (ESFT, dict(score="token", p=0.3)), "esft_alr": (ESFTALR, dict(score="gate", p=0.1)),
    "desmoe": (DESMoE, dict(t_update=2)),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: (dtype, method, tolerance): every method in float64; in float32 the methods without ALR heads (see above)
RUNS = [("float64", name, TOL64) for name in METHODS] + [("float32", name, TOL32) for name in ("fft", "esft")]
TIMEOUT = 300  # seconds for both processes; a loaded 2-core machine needs ~25 s


def corpus() -> tuple[object, list[Example]]:
    """Math (fixed length) and 'echo' rows of 1-5 words (variable length)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(12)]
    echo = []
    for _ in range(32):
        picked = rng.sample(words, rng.randint(1, 5))
        echo.append(Example("echo " + " ".join(picked) + " :", " ".join(picked[::-1]), "echo"))
    examples = domain_split("math", n_train=32, n_val=0, n_test=0).train + echo
    return word_tokenizer([t for e in examples for t in (e.prompt, e.answer)]), examples


def probed(cls: type[Method], **kwargs) -> Method:
    """A ``cls`` method that checks after every step that the experts its plan froze did not change at all."""

    class Probe(cls):
        def prepare(self, model, data, batch_size):
            super().prepare(model, data, batch_size)
            self.experts, self.checks = masks.moe_experts(model), []

        def plan(self, step, total, domain):
            self.step_plan = super().plan(step, total, domain)
            self.before = [(m.gate_up_proj.detach().clone(), m.down_proj.detach().clone()) for m in self.experts]
            return self.step_plan

        def after_step(self, step, total, domain, batch):
            super().after_step(step, total, domain, batch)
            plan, n_experts = self.step_plan, self.experts[0].gate_up_proj.shape[0]
            trains = torch.full((len(self.experts), n_experts), "experts" in plan.parts)
            if "experts" in plan.parts and plan.experts is not None:
                trains = plan.experts
            for row, (mod, old) in enumerate(zip(self.experts, self.before)):
                for now, was in zip((mod.gate_up_proj, mod.down_proj), old):
                    frozen = ~trains[row]
                    self.checks.append({"frozen": int(frozen.sum()), "kept": torch.equal(now[frozen], was[frozen]),
                                        "moved": bool((now[~frozen] != was[~frozen]).any(-1).any(-1).all())})

    return Probe(**kwargs)


def train_all(parallel) -> dict:
    tok, examples = corpus()
    out = {}
    for dname, name, _ in RUNS:
        dtype, (cls, kwargs) = DTYPES[dname], METHODS[name]
        set_determinism(0, threads=1)
        shape = configs.Shape(vocab=len(tok), hidden=32, layers=2, heads=4, experts=8, top_k=2, expert_width=16)
        model = configs.build(configs.tiny_config("deepseek_v2", shape),
                              experts="eager" if dtype == torch.float64 else "grouped_mm").to(dtype)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        method = probed(cls, **kwargs)
        res = train(model, tok, examples, method, TrainConfig(steps=STEPS, batch_size=8, lr=1e-2,
                                                             weight_decay=0.1), parallel=parallel)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        out[dname, name] = {"weights": weights, "moved": max_diff(weights, start),
                            "heads": [p.detach().clone() for p in method.extra_parameters()],
                            "losses": res.losses, "summary": res.method, "checks": method.checks}
    return out


def _worker(rank: int, init: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT))
    try:
        torch.save(train_all(DataParallel()), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    start = time.perf_counter()
    ctx = mp.start_processes(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=False,
                             start_method="fork")
    while not ctx.join(timeout=5):
        if time.perf_counter() - start > TIMEOUT:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the {WORLD} training processes did not finish in {TIMEOUT} s")
    ranks = [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]
    threads = torch.get_num_threads()
    local = train_all(LOCAL)
    torch.set_num_threads(threads)
    return ranks, local


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def test_ranks_stay_bit_identical(runs):
    (rank0, rank1), _ = runs
    for key in rank0:
        assert all(torch.equal(rank0[key]["weights"][n], rank1[key]["weights"][n]) for n in rank0[key]["weights"]), key
        assert all(torch.equal(a, b) for a, b in zip(rank0[key]["heads"], rank1[key]["heads"])), key


@pytest.mark.parametrize("dtype, name, tol", RUNS)
def test_two_processes_equal_one(runs, dtype, name, tol):
    (rank0, _), local = runs
    two, one = rank0[dtype, name], local[dtype, name]
    assert one["moved"] > 100 * tol  # training moved the weights by far more than the tolerance
    assert max(abs(a - b) for a, b in zip(two["losses"], one["losses"])) < tol
    assert max_diff(two["weights"], one["weights"]) < tol
    assert max([float((a - b).abs().max()) for a, b in zip(two["heads"], one["heads"])] or [0.0]) < tol
    assert two["summary"] == one["summary"]  # ESFT selection and DGES affinity/masks: exactly the same


@pytest.mark.parametrize("dtype, name", [(d, n) for d, n, _ in RUNS if n != "fft"])
def test_frozen_experts_stay_bit_identical_under_data_parallelism(runs, dtype, name):
    (rank0, _), _ = runs
    checks = rank0[dtype, name]["checks"]
    assert all(c["kept"] for c in checks)
    assert any(0 < c["frozen"] < 8 for c in checks)  # some steps froze a subset of a layer's experts
    assert all(c["moved"] for c in checks)  # and the experts that trained did move

