"""The fair DES-MoE protocol as a grid of runs: methods x learning rates x domain counts x orders x seeds.

Every run starts from a fresh copy of the base model and fine-tunes one method jointly on N domains mixed 1:1
with general data (ESFT's mix, for every method). It is evaluated every ``eval_every`` steps on the domains'
validation and test sets and on the general set; the checkpoint kept is the one with the best *validation*
domain average (earliest on ties), and its test and general scores are what the tables report.

Stages (each run is one atomic JSON file under ``folder``; a finished run is never redone, so an interrupted
grid resumes):

1. sweep: every method at N=6 (first order) for the ``sweep_seeds`` at each of its learning rates (a method of
   :data:`BACKBONE_RATE` is swept once the rate its backbone borrows has been chosen);
2. the rate of each method is fixed as the one with the best mean validation score in the sweep (never the
   general score), then every method runs at that rate for the remaining seeds at N=6 and, for the methods of the
   forgetting curve, at N in ``n_domains`` for both domain orders;
3. sequential adaptation (an extension beyond the paper) for ``sequential_methods`` at their chosen rates;
4. single-domain runs (the papers' "single" rows): each of ``single_methods`` at its chosen rate on each of the
   N_max domains alone (mixed 1:1 with general data, the same steps), every seed; a single run's ``order`` is its
   domain, so its id names it (``fft-n1-math-s0-lr0.001``).

Runs use one thread each (bit-identical whatever the machine's core count) and can run in parallel processes.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import arch
from ..determinism import set_determinism
from ..results import write_json_atomic
from . import domains
from .base import THREADS, Base
from .methods import WARMUP_EXPERTS, DESMoE, ESFT, ESFTALR, FrozenRouterFT, FullFT, LoRA, Method
from .train import TrainConfig, train

#: 2: evaluations record the routing of the test tokens (:mod:`.routing_eval`), runs may carry a backbone rate
VERSION = 2

#: every method of the protocol, by name
METHODS: dict[str, Callable[[], Method]] = {
    "fft": FullFT,
    "frozen_router": FrozenRouterFT,
    "lora": LoRA,
    "esft_gate": lambda: ESFT("gate", 0.1),
    "esft_token": lambda: ESFT("token", 0.2),
    "esft_gate_alr": lambda: ESFTALR("gate", 0.1),
    "desmoe": DESMoE,
    "desmoe_no_alr": lambda: DESMoE(alr=False),
    "desmoe_no_dges": lambda: DESMoE(dges=False),
    # DES-MoE's readings of its phase I (issue: both readings and the warm-up's length)
    "desmoe_caption": lambda: DESMoE(warmup=WARMUP_EXPERTS),
    "desmoe_split_lr": DESMoE,
    "desmoe_short_warmup": lambda: DESMoE(t1=0.1),
    "desmoe_no_warmup": lambda: DESMoE(t1=0.0),
}
#: methods whose backbone trains at another method's chosen rate ({method: whose rate}); their own swept rate
#: applies to the rest (router and ALR, experts). desmoe_split_lr: the backbone at full FT's rate.
BACKBONE_RATE: dict[str, str] = {"desmoe_split_lr": "fft"}
#: learning rates swept per method: four values over a decade and a half, as the papers' own searches (four values,
#: one set for all methods, picked per method); the methods that train fewer parameters get a grid shifted up by
#: one step. findings.sweep_table flags a chosen rate at the edge of its sweep.
LOW, HIGH = (3e-4, 1e-3, 3e-3, 1e-2), (1e-3, 3e-3, 1e-2, 3e-2)
LEARNING_RATES: dict[str, tuple[float, ...]] = {
    "fft": LOW, "frozen_router": LOW, "lora": HIGH, "esft_gate": HIGH, "esft_token": HIGH, "esft_gate_alr": HIGH,
    "desmoe": HIGH, "desmoe_no_alr": HIGH, "desmoe_no_dges": HIGH, "desmoe_caption": HIGH, "desmoe_split_lr": HIGH,
    "desmoe_short_warmup": HIGH, "desmoe_no_warmup": HIGH,
}
#: DES-MoE's readings of its phase I, each run on the whole protocol as its own method: {reading: method}; the
#: paper's reading ('': eq. 11, t1 = 0.2, one rate) first
DESMOE_READINGS: dict[str, str] = {
    "": "desmoe",
    "phase I trains the experts (Fig. 1 caption)": "desmoe_caption",
    "backbone at full FT's rate": "desmoe_split_lr",
    "t1 = 0.1": "desmoe_short_warmup",
    "t1 = 0 (no phase I)": "desmoe_no_warmup",
}
CURVE_METHODS = ("fft", "lora", "esft_gate", "esft_token", *DESMOE_READINGS.values())
ORDERS = {"a": domains.DOMAINS, "b": ("translation", "law", "summary", "intent", "code", "math")}


@dataclass(frozen=True)
class GridSpec:
    """What the grid runs. ``FULL`` is the shipped grid; :meth:`reduced` a quick one for any model."""

    methods: tuple[str, ...] = tuple(METHODS)
    curve_methods: tuple[str, ...] = CURVE_METHODS
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = tuple(LEARNING_RATES.items())
    n_domains: tuple[int, ...] = (2, 4, 6)
    orders: tuple[str, ...] = ("a", "b")
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep_seeds: tuple[int, ...] = (0,)
    steps: int = 160
    eval_every: int = 40
    batch_size: int = 32
    sequential_methods: tuple[str, ...] = ("fft", "desmoe")
    sequential_steps: int = 30
    single_methods: tuple[str, ...] = ("fft", "esft_gate")

    def rates(self, method: str) -> tuple[float, ...]:
        return dict(self.learning_rates)[method]

    def reduced(self, steps: int = 60, seeds: Sequence[int] = (0, 1)) -> "GridSpec":
        """One rate per method (the middle of its sweep), N in {2, 6}, one order, ``seeds``; curves of full FT and
        DES-MoE only; DES-MoE under the paper's reading only; no single-domain runs."""
        middle = tuple((m, (lrs[len(lrs) // 2],)) for m, lrs in self.learning_rates)
        methods = tuple(m for m in self.methods if m not in list(DESMOE_READINGS.values())[1:])
        return replace(self, methods=methods, learning_rates=middle, n_domains=(2, 6), orders=("a",),
                       seeds=tuple(seeds),
                       curve_methods=("fft", "desmoe"), single_methods=(),
                       sweep_seeds=(seeds[0],), steps=steps, eval_every=max(1, steps // 4),
                       sequential_steps=max(1, steps // 4))


FULL = GridSpec()


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run; ``domains`` in the order they were added (N = len)."""

    method: str
    lr: float
    domains: tuple[str, ...]
    order: str
    seed: int
    steps: int
    eval_every: int
    batch_size: int
    stage: str = "joint"
    backbone_lr: float | None = None

    @property
    def id(self) -> str:
        kind = "seq" if self.stage == "sequential" else f"n{len(self.domains)}"
        backbone = "" if self.backbone_lr is None else f"-blr{self.backbone_lr:g}"
        return f"{self.method}-{kind}-{self.order}-s{self.seed}-lr{self.lr:g}{backbone}"


def _key(spec: RunSpec, base: Base) -> str:
    blob = json.dumps([VERSION, asdict(spec), base.model, base.corpus.digest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_file(folder: Path, spec: RunSpec) -> Path:
    return Path(folder) / f"{spec.id}.json"


def is_done(folder: Path, spec: RunSpec, base: Base) -> bool:
    file = run_file(folder, spec)
    return file.is_file() and json.loads(file.read_text()).get("key") == _key(spec, base)


def best_checkpoint(val_scores: Sequence[float]) -> int:
    """Index of the checkpoint with the best validation score (the earliest among ties).

    Takes validation scores only, so no test or general score can influence which checkpoint is kept.
    """
    if not len(val_scores):
        raise ValueError("no checkpoints to choose from")
    best = max(val_scores)
    return next(i for i, v in enumerate(val_scores) if v == best)


def choose_rate(sweep: dict[float, Sequence[float]]) -> float:
    """The learning rate whose runs reach the best mean validation score ({lr: best validation per seed});
    the smallest rate among ties."""
    if not sweep:
        raise ValueError("no sweep runs to choose a learning rate from")
    means = {lr: sum(v) / len(v) for lr, v in sweep.items()}
    best = max(means.values())
    return min(lr for lr, m in means.items() if m == best)


def _compact(result) -> dict:
    losses = [round(x, 4) for x in result.losses[::10]]
    steps = sorted(result.step_seconds)
    return {"history": result.history, "losses_every_10": losses, "train_seconds": round(result.train_seconds, 3),
            "median_step_seconds": steps[len(steps) // 2] if steps else None,
            "trained_params": result.trained_params, "method": result.method}


def run_joint(base: Base, spec: RunSpec) -> dict:
    """Train ``spec`` from a fresh copy of the base model; evaluation history and method summary."""
    set_determinism(spec.seed, threads=THREADS)
    model = base.load()
    examples = [e for d in spec.domains for e in base.corpus.domains[d].train] + list(base.corpus.general_mix)
    cfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                      eval_every=spec.eval_every, backbone_lr=spec.backbone_lr)
    return _compact(train(model, base.tokenizer, examples, METHODS[spec.method](), cfg, base.evaluator(spec.domains)))


def run_sequential(base: Base, spec: RunSpec) -> dict:
    """Adapt to ``spec.domains`` one after another (each stage mixed 1:1 with general data); after each stage
    every domain so far is scored. DES-MoE stages reuse the ALR heads and keep the experts of earlier domains'
    final DGES masks frozen."""
    set_determinism(spec.seed, threads=THREADS)
    model = base.load()
    stages, routing, reserved = [], None, None
    for stage, domain in enumerate(spec.domains):
        method = METHODS[spec.method]()
        if isinstance(method, DESMoE):
            method.routing, method.reserved = routing, reserved
        cfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed + stage)
        examples = list(base.corpus.domains[domain].train) + list(base.corpus.general_mix)
        res = train(model, base.tokenizer, examples, method, cfg, base.evaluator(spec.domains[: stage + 1]))
        if isinstance(method, DESMoE):
            routing = method.routing
            names = method.affinity.domains
            final = torch.tensor(method.snapshots["T"]["masks"][names.index(domain)], dtype=torch.bool)
            reserved = final if reserved is None else reserved | final
        stages.append({"stage": stage + 1, "trained": domain, "scores": res.final})
    return {"stages": stages}


def execute(base: Base, spec: RunSpec, folder: Path) -> Path:
    """Run ``spec`` and write its JSON atomically (spec, key, results)."""
    body = run_sequential(base, spec) if spec.stage == "sequential" else run_joint(base, spec)
    return write_json_atomic(run_file(folder, spec), {"spec": asdict(spec), "id": spec.id, "key": _key(spec, base),
                                                      "base_model": base.model, **body})


_WORKER_BASE: Base | None = None


def _worker_init(base: Base) -> None:
    global _WORKER_BASE
    _WORKER_BASE = base


def _worker(args: tuple[RunSpec, Path]) -> str:
    spec, folder = args
    execute(_WORKER_BASE, spec, folder)
    return spec.id


def run_all(base: Base, specs: Sequence[RunSpec], folder: Path, jobs: int = 1, desc: str = "runs") -> None:
    """Run the specs not done yet, ``jobs`` processes in parallel, with a progress bar."""
    todo = [s for s in specs if not is_done(folder, s, base)]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=desc)
    if jobs <= 1 or len(todo) <= 1:
        for spec in todo:
            bar.set_postfix_str(spec.id)
            execute(base, spec, folder)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs, initializer=_worker_init, initargs=(base,)) as pool:
            for done in pool.imap_unordered(_worker, [(s, folder) for s in todo]):
                bar.set_postfix_str(done)
                bar.update()
    bar.close()


def _backbone_rate(method: str, rates: dict[str, float] | None) -> float | None:
    """The chosen rate (in ``rates``) of the method whose rate ``method``'s backbone borrows (:data:`BACKBONE_RATE`);
    None for a method that trains at one rate."""
    lender = BACKBONE_RATE.get(method)
    return None if lender is None else rates[lender]


def _joint(grid: GridSpec, method: str, lr: float, n: int, order: str, seed: int,
           rates: dict[str, float] | None = None) -> RunSpec:
    """One joint run; a method of :data:`BACKBONE_RATE` takes its backbone rate from ``rates``."""
    return RunSpec(method, lr, tuple(ORDERS[order][:n]), order, seed, grid.steps, grid.eval_every, grid.batch_size,
                   backbone_lr=_backbone_rate(method, rates))


def _borrows(grid: GridSpec, method: str) -> bool:
    if method in BACKBONE_RATE and BACKBONE_RATE[method] not in grid.methods:
        raise ValueError(f"{method} trains its backbone at {BACKBONE_RATE[method]}'s chosen rate; the grid must "
                         f"include {BACKBONE_RATE[method]}")
    return method in BACKBONE_RATE


def sweep_specs(grid: GridSpec, rates: dict[str, float] | None = None) -> list[RunSpec]:
    """Stage 1: every method's rates at N_max, first order, ``sweep_seeds``. Without ``rates``, the methods that
    borrow a backbone rate (:data:`BACKBONE_RATE`) are left out; with chosen ``rates`` (at least of the methods
    they borrow from), only those are given."""
    n, order = max(grid.n_domains), grid.orders[0]
    methods = [m for m in grid.methods if _borrows(grid, m) == (rates is not None)]
    return [_joint(grid, m, lr, n, order, s, rates) for m in methods for lr in grid.rates(m) for s in grid.sweep_seeds]


def _choose(folder: Path, specs: Sequence[RunSpec]) -> dict[str, float]:
    sweep: dict[str, dict[float, list[float]]] = {}
    for spec in specs:
        history = json.loads(run_file(folder, spec).read_text())["history"]
        best = max(h["val"]["avg"] for h in history)
        sweep.setdefault(spec.method, {}).setdefault(spec.lr, []).append(best)
    return {m: choose_rate(v) for m, v in sweep.items()}


def chosen_rates(grid: GridSpec, folder: Path) -> dict[str, float]:
    """{method: learning rate} chosen on the sweep runs' validation scores (the borrowing methods' sweeps read
    the first methods' chosen rates)."""
    first = _choose(folder, sweep_specs(grid))
    return first | _choose(folder, sweep_specs(grid, first))


def main_specs(grid: GridSpec, rates: dict[str, float]) -> list[RunSpec]:
    """Stage 2: the chosen rates at N=6 for every seed, and the curve methods at every N and order."""
    top = max(grid.n_domains)
    curve = [m for m in grid.curve_methods if m in grid.methods]
    specs = [_joint(grid, m, rates[m], top, grid.orders[0], s, rates) for m in grid.methods for s in grid.seeds]
    specs += [_joint(grid, m, rates[m], n, o, s, rates) for m in curve for n in grid.n_domains if n != top
              for o in grid.orders for s in grid.seeds]
    specs += [_joint(grid, m, rates[m], top, o, s, rates) for m in curve for o in grid.orders[1:]
              for s in grid.seeds if set(ORDERS[o][:top]) != set(ORDERS[grid.orders[0]][:top])]
    return list(dict.fromkeys(specs))


def sequential_specs(grid: GridSpec, rates: dict[str, float]) -> list[RunSpec]:
    return [RunSpec(m, rates[m], ORDERS[grid.orders[0]], grid.orders[0], s, grid.sequential_steps, 0,
                    grid.batch_size, "sequential") for m in grid.sequential_methods for s in grid.seeds]


def single_specs(grid: GridSpec, rates: dict[str, float]) -> list[RunSpec]:
    """Stage 4: each single-domain method at its chosen rate on each N_max domain alone, for every seed."""
    top = max(grid.n_domains)
    return [RunSpec(m, rates[m], (d,), d, s, grid.steps, grid.eval_every, grid.batch_size,
                    backbone_lr=_backbone_rate(m, rates))
            for m in grid.single_methods if m in grid.methods for d in ORDERS[grid.orders[0]][:top] for s in grid.seeds]


def run_grid(base: Base, folder: Path | str, grid: GridSpec = FULL, jobs: int = 1) -> dict[str, float]:
    """Run (or resume) the whole grid into ``folder``; returns the chosen learning rates."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_all(base, sweep_specs(grid), folder, jobs, "1/4 learning-rate sweep")
    run_all(base, sweep_specs(grid, _choose(folder, sweep_specs(grid))), folder, jobs,
            "1/4 sweep of the methods that borrow a backbone rate")
    rates = chosen_rates(grid, folder)
    write_json_atomic(folder / "chosen_rates.json", {"rates": rates, "grid": asdict(grid), "version": VERSION,
                                                     "base_model": base.model, "corpus": base.corpus.digest(),
                                                     "model": arch.describe(base.load())})
    run_all(base, main_specs(grid, rates), folder, jobs, "2/4 seeds, N and orders")
    run_all(base, sequential_specs(grid, rates), folder, jobs, "3/4 sequential extension")
    run_all(base, single_specs(grid, rates), folder, jobs, "4/4 single-domain runs")
    return rates


def all_specs(grid: GridSpec, folder: Path | str) -> list[RunSpec]:
    """Every run of a finished grid (the sweep, the main runs, the sequential and the single-domain runs)."""
    rates = chosen_rates(grid, Path(folder))
    return list(dict.fromkeys(sweep_specs(grid) + sweep_specs(grid, rates) + main_specs(grid, rates)
                              + sequential_specs(grid, rates) + single_specs(grid, rates)))

