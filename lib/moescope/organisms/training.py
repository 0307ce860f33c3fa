"""Training an organism: the corpus, the training loop (hooks, an extra loss, a per-step callback), its card, saving.

Each organism is saved in Hugging Face format (config + safetensors + tokenizer) under ``organisms/<name>`` and
carries a card (``card.json``): architecture, parameter count, data hash, steps, accuracy per relation, and a
check of the first ``PREFIX_STEPS`` steps (the weights' hash at that step of the full run, and a sketch of the
update for other CPU kinds: :func:`verify_prefix`), which a test can repeat in seconds where the full run takes minutes.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import arch, configs, data, fingerprint, metrics, numerics, paths
from .. import determinism
from ..determinism import EXPERTS_IMPLEMENTATION, adamw, deterministic_kernels, set_determinism
from ..hooks import hooked
from ..results import write_json_atomic
from ..vocab import word_tokenizer

#: steps of the training prefix whose weights' hash each card records
PREFIX_STEPS = 20


@dataclass(frozen=True)
class OrganismSpec:
    """How to build and train one organism."""

    name: str
    family: str
    shape: configs.Shape
    mirrors: str
    seed: int = 0
    lr: float = 3e-3
    batch: int = 128
    max_steps: int = 3000
    eval_every: int = 100
    target_accuracy: float = 0.99


@dataclass
class Corpus:
    """Training texts ``prompt + " " + object`` and the prompts/objects/relations to evaluate them."""

    relations: list[data.Relation]
    facts: pd.DataFrame = field(init=False)

    def __post_init__(self):
        self.facts = data.facts_frame(self.relations, template=None)

    @property
    def texts(self) -> list[str]:
        return [f"{p} {o}" for p, o in zip(self.facts.prompt, self.facts.object)]


def _lm_batches(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """<bos> text <eos>, right-padded ids and labels (-100 on padding)."""
    rows = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.where(ids == tokenizer.pad_token_id, -100, ids)
    return ids, labels


def fact_accuracy(model: nn.Module, tokenizer, facts: pd.DataFrame) -> pd.Series:
    """Share of facts whose gold object's first token is the top-1 prediction, per relation."""
    scores = metrics.score_prompts(model, tokenizer, list(facts.prompt), list(facts.object))
    return (scores["rank"] == 1).groupby(facts["relation"].values).mean()


def state_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


#: Gaussian projections of each tensor's update that a card's prefix check records
SKETCH_DIMS = 4
#: Random square roots per calibration (:func:`calibrate_prefix`), besides the correctly rounded one
CALIBRATION_SEEDS = (0, 1, 2)
#: The real change a calibration measures against: the learning rate times this factor
CALIBRATION_LR_FACTOR = 1.001


def _projection(name: str, numel: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(SKETCH_DIMS, numel, generator=gen, dtype=torch.float64)


def update_sketch(initial: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per floating tensor t: ``S_t = R_t (final_t - initial_t)`` in float64, with ``R_t`` a [SKETCH_DIMS, numel]
    standard-normal matrix seeded by crc32 of t's name. Random projections keep distances, so
    ``||S - S'|| / ||S'||`` estimates the relative difference of two runs' updates (:func:`sketch_difference`)."""
    return {name: (_projection(name, t.numel()) @ (final[name].double() - t.double()).flatten()).tolist()
            for name, t in sorted(initial.items()) if t.is_floating_point()}


def sketch_difference(recorded: Mapping[str, list[float]], sketch: Mapping[str, list[float]]) -> tuple[float, str]:
    """``||S - S_rec|| / ||S_rec||`` over every tensor's projections, and the tensor whose own relative difference
    is largest."""
    if set(recorded) != set(sketch):
        raise ValueError(f"the sketches cover different tensors: {sorted(set(recorded) ^ set(sketch))[:4]}")
    a = {k: torch.tensor(v, dtype=torch.float64) for k, v in recorded.items()}
    b = {k: torch.tensor(v, dtype=torch.float64) for k, v in sketch.items()}
    total = float(torch.cat([b[k] - a[k] for k in a]).norm() / torch.cat(list(a.values())).norm())
    worst = max(a, key=lambda k: float((b[k] - a[k]).norm() / a[k].norm().clamp_min(1e-300)))
    return total, worst


class PrefixCheck:
    """``on_step`` callback recording, after step ``steps`` of a run from ``model``'s current weights, the weights'
    :func:`state_hash`, the AdamW kernel, the CPU kind (:func:`moescope.fingerprint.kind`) and the update's
    :func:`update_sketch`."""

    def __init__(self, model: nn.Module, steps: int = PREFIX_STEPS):
        self.steps, self.record = steps, {}
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def __call__(self, step: int, model: nn.Module) -> None:
        if step == self.steps:
            self.record = {"steps": self.steps, "sha256": state_hash(model), "optimizer": determinism.OPTIMIZER_KERNEL,
                           "kind": fingerprint.kind(), "sketch": update_sketch(self.initial, model.state_dict())}


def calibrate_prefix(prefix: Callable[[], dict], changed: Callable[[], dict]) -> dict:
    """The tolerance of a prefix check on another CPU kind, measured on this one (run with the "loop" kernel).

    ``emulated``: the largest relative update difference (:func:`sketch_difference`) between ``prefix()`` and the
    same run with another square root, the correctly rounded one (the "fused" kernel) and, for each of
    ``CALIBRATION_SEEDS``, this machine's moved by one ulp in 20% of the elements (:func:`fingerprint.other_sqrt`);
    ``real``: the difference a real change of the run makes (``changed()``: the learning rate x
    ``CALIBRATION_LR_FACTOR``); ``rtol = sqrt(emulated * real)``, their geometric midpoint, so a CPU kind's drift
    and a changed run are each separated from it by the same factor ``sqrt(real / emulated)``.
    """
    reference = prefix()["sketch"]
    variants = []
    previous, determinism.OPTIMIZER_KERNEL = determinism.OPTIMIZER_KERNEL, "fused"
    try:
        variants.append(prefix()["sketch"])
    finally:
        determinism.OPTIMIZER_KERNEL = previous
    for seed in CALIBRATION_SEEDS:
        with fingerprint.other_sqrt(seed):
            variants.append(prefix()["sketch"])
    emulated = max(sketch_difference(reference, v)[0] for v in variants)
    real = sketch_difference(reference, changed()["sketch"])[0]
    return {"emulated": emulated, "real": real, "rtol": math.sqrt(emulated * real),
            "real_change": f"lr x {CALIBRATION_LR_FACTOR:g}"}


def verify_prefix(recorded: Mapping, recomputed: Mapping) -> None:
    """Assert that a recomputed prefix check matches a card's: bit for bit where the card's kernel is "fused" or its
    CPU kind is this machine's; otherwise (the "loop" kernel on another CPU kind) the update within the card's
    calibrated ``tolerance["rtol"]`` (:func:`calibrate_prefix`)."""
    if recorded["steps"] != recomputed["steps"] or recorded["optimizer"] != recomputed["optimizer"]:
        raise AssertionError(f"recomputed {recomputed['steps']} steps with {recomputed['optimizer']!r}; the card "
                             f"recorded {recorded['steps']} with {recorded['optimizer']!r}")
    if recorded["optimizer"] == "fused" or recorded["kind"] == recomputed["kind"]:
        assert recomputed["sha256"] == recorded["sha256"], (
            f"weights after {recorded['steps']} steps differ bit for bit from the card's (recorded on "
            f"{recorded['kind']}, recomputed on {recomputed['kind']})")
        return
    rel, worst = sketch_difference(recorded["sketch"], recomputed["sketch"])
    rtol = recorded["tolerance"]["rtol"]
    assert rel <= rtol, (f"the {recorded['steps']}-step update differs from the card's (recorded on "
                         f"{recorded['kind']}) by a relative {rel:.2e} > {rtol:.2e}; most in {worst}")


def shuffled_batches(n: int, spec: OrganismSpec) -> Iterator[torch.Tensor]:
    """``spec.max_steps`` batches of ``spec.batch`` text indices: epochs of seeded random permutations of ``n`` texts."""
    gen = torch.Generator().manual_seed(spec.seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(spec.max_steps):
        if len(order) < spec.batch:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        batch, order = order[: spec.batch], order[spec.batch :]
        yield batch


def train_lm(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    spec: OrganismSpec,
    done: Callable[[nn.Module], bool],
    step_hooks: Callable[[torch.Tensor, torch.Tensor], list] | None = None,
    extra_loss: Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batches: Iterable[torch.Tensor] | None = None,
    lr_scale: Callable[[int], float] | None = None,
    trim: bool = False,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> int:
    """AdamW next-token training (loss on every token, + router aux loss for MoE) until ``done`` or the batches end.

    ``done`` is checked every ``spec.eval_every`` steps; returns the number of steps taken. For a batch of text
    indices ``rows`` with non-padding mask ``real``, ``step_hooks(rows, real)`` gives hooks active during its
    forward pass and ``extra_loss(output, rows, real)`` is added to the loss. ``batches`` (default
    :func:`shuffled_batches`) gives each step's text indices; ``lr_scale(step)`` multiplies the learning rate of the
    0-based step; ``trim`` cuts each batch to its longest text (otherwise every batch has the corpus' width);
    ``on_step(step, model)`` runs after each (1-based) step's update.
    """
    ids, labels = _lm_batches(tokenizer, texts)
    opt = adamw(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_scale) if lr_scale else None
    moe = arch.is_moe(model)
    bar = tqdm(batches if batches is not None else shuffled_batches(len(ids), spec), total=spec.max_steps,
               desc=f"train {spec.name}", leave=False, mininterval=2)
    step = 0
    for step, batch in enumerate(bar, start=1):
        real = ids[batch] != tokenizer.pad_token_id
        width = int(real.sum(1).max()) if trim else ids.shape[1]
        real = real[:, :width]
        model.train()
        with deterministic_kernels():
            with hooked(step_hooks(batch, real) if step_hooks else []):
                out = model(input_ids=ids[batch, :width], attention_mask=real.long(), labels=labels[batch, :width],
                            output_router_logits=moe, use_cache=False)
            loss = out.loss + (extra_loss(out, batch, real) if extra_loss else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule:
            schedule.step()
        if on_step:
            on_step(step, model)
        if step % spec.eval_every == 0:
            model.eval()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if done(model):
                return step
    return step


def _card(spec: OrganismSpec, model, corpus: Corpus, steps: int, seconds: float, acc: pd.Series) -> dict:
    return {
        "name": spec.name, "mirrors": spec.mirrors, "family": spec.family, "architecture": arch.describe(model),
        "shape": asdict(spec.shape), "seed": spec.seed, "lr": spec.lr, "batch": spec.batch,
        "experts_implementation": EXPERTS_IMPLEMENTATION, "numerics": numerics.describe(),
        "data_hash": data.data_hash(corpus.relations), "n_train_prompts": len(corpus.facts),
        "training_steps": steps, "training_seconds": round(seconds, 1),
        "accuracy": round(float(acc.mean()), 4), "accuracy_per_relation": acc.round(4).to_dict(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }


def _setup(spec: OrganismSpec, relations: list[data.Relation] | None) -> tuple[Corpus, object, nn.Module]:
    """The corpus, its word tokenizer and the freshly initialised model (seeded) of ``spec``."""
    set_determinism(spec.seed)
    corpus = Corpus(relations or data.load_relations())
    tokenizer = word_tokenizer(corpus.texts)
    shape = configs.Shape(**{**asdict(spec.shape), "vocab": len(tokenizer)})
    return corpus, tokenizer, configs.build(configs.tiny_config(spec.family, shape), attn="eager")


def train_organism(spec: OrganismSpec, out_dir: Path | None = None, relations: list[data.Relation] | None = None) -> dict:
    """Train ``spec`` from its seed on the relation facts and save it (HF format + card.json); returns the card."""
    corpus, tokenizer, model = _setup(spec, relations)
    start, prefix = time.perf_counter(), PrefixCheck(model)
    done = lambda m: float(fact_accuracy(m, tokenizer, corpus.facts).mean()) >= spec.target_accuracy  # noqa: E731
    steps = train_lm(model, tokenizer, corpus.texts, spec, done, on_step=prefix)
    seconds = time.perf_counter() - start
    model.eval()
    acc = fact_accuracy(model, tokenizer, corpus.facts)
    tolerance = calibrate_prefix(lambda: prefix_check(spec, relations),
                                 lambda: prefix_check(replace(spec, lr=spec.lr * CALIBRATION_LR_FACTOR), relations))
    card = _card(spec, model, corpus, steps, seconds, acc) | {"prefix_check": prefix.record | {"tolerance": tolerance}}
    save_organism(model, tokenizer, card, out_dir or paths.ORGANISMS / spec.name)
    return card


def prefix_check(spec: OrganismSpec, relations: list[data.Relation] | None = None) -> dict:
    """The :class:`PrefixCheck` record of the first ``PREFIX_STEPS`` steps of :func:`train_organism` (same code
    path), for :func:`verify_prefix` against the card's."""
    corpus, tokenizer, model = _setup(spec, relations)
    check = PrefixCheck(model)
    batches = islice(shuffled_batches(len(corpus.texts), spec), PREFIX_STEPS)
    train_lm(model, tokenizer, corpus.texts, spec, lambda m: False, batches=batches, on_step=check)
    return check.record


def save_organism(model: nn.Module, tokenizer, card: dict, folder: Path, readme: str | None = None) -> None:
    """Write weights, tokenizer and card (card.json + a short README.md, ``readme`` if given) to ``folder``: all into
    a temporary sibling folder that then replaces ``folder``, so an interrupted save leaves the previous organism
    whole (weights and card together) or nothing."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "card.json", card)
        (tmp / "README.md").write_text(readme if readme is not None else _readme(card))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _readme(card: dict) -> str:
    per_rel = "\n".join(f"| {k} | {v:.3f} |" for k, v in card["accuracy_per_relation"].items())
    return (
        f"# {card['name']}\n\nA moescope model organism mirroring `{card['mirrors']}` "
        f"({card['family']}, {card['architecture']['params']:,} parameters), trained by "
        f"`moescope.organisms.train_organism` in {card['training_steps']} steps on data {card['data_hash']}.\n\n"
        f"Top-1 accuracy on its {card['n_train_prompts']} training prompts: {card['accuracy']:.3f}\n\n"
        f"| relation | top-1 accuracy |\n|---|---|\n{per_rel}\n"
    )
