"""Training an organism: the corpus, the training loop (hooks, an extra loss, a per-step callback), its card, saving.

Each organism is saved in Hugging Face format (config + safetensors + tokenizer) under ``organisms/<name>`` and
carries a card (``card.json``): architecture, parameter count, data hash, steps, accuracy per relation, and a
bit-for-bit check of the first ``PREFIX_STEPS`` steps (the weights' hash at that step of the full run), which a
test can repeat in seconds where the full run takes minutes.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import arch, configs, data, metrics, numerics, paths
from ..determinism import EXPERTS_IMPLEMENTATION, deterministic_kernels, set_determinism
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


class PrefixCheck:
    """``on_step`` callback recording ``{"steps": n, "sha256": state_hash(model)}`` after step ``n`` of a run."""

    def __init__(self, steps: int = PREFIX_STEPS):
        self.steps, self.record = steps, {}

    def __call__(self, step: int, model: nn.Module) -> None:
        if step == self.steps:
            self.record = {"steps": self.steps, "sha256": state_hash(model)}


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
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
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
    start, prefix = time.perf_counter(), PrefixCheck()
    done = lambda m: float(fact_accuracy(m, tokenizer, corpus.facts).mean()) >= spec.target_accuracy  # noqa: E731
    steps = train_lm(model, tokenizer, corpus.texts, spec, done, on_step=prefix)
    seconds = time.perf_counter() - start
    model.eval()
    acc = fact_accuracy(model, tokenizer, corpus.facts)
    card = _card(spec, model, corpus, steps, seconds, acc) | {"prefix_check": prefix.record}
    save_organism(model, tokenizer, card, out_dir or paths.ORGANISMS / spec.name)
    return card


def prefix_hash(spec: OrganismSpec, relations: list[data.Relation] | None = None) -> str:
    """:func:`state_hash` after the first ``PREFIX_STEPS`` steps of :func:`train_organism` (same code path)."""
    corpus, tokenizer, model = _setup(spec, relations)
    batches = islice(shuffled_batches(len(corpus.texts), spec), PREFIX_STEPS)
    train_lm(model, tokenizer, corpus.texts, spec, lambda m: False, batches=batches)
    return state_hash(model)


def save_organism(model: nn.Module, tokenizer, card: dict, folder: Path, readme: str | None = None) -> None:
    """Write weights, tokenizer and card (card.json + a short README.md, ``readme`` if given) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json_atomic(folder / "card.json", card)
    if readme is not None:
        (folder / "README.md").write_text(readme)
        return
    per_rel = "\n".join(f"| {k} | {v:.3f} |" for k, v in card["accuracy_per_relation"].items())
    (folder / "README.md").write_text(
        f"# {card['name']}\n\nA moescope model organism mirroring `{card['mirrors']}` "
        f"({card['family']}, {card['architecture']['params']:,} parameters), trained by "
        f"`moescope.organisms.train_organism` in {card['training_steps']} steps on data {card['data_hash']}.\n\n"
        f"Top-1 accuracy on its {card['n_train_prompts']} training prompts: {card['accuracy']:.3f}\n\n"
        f"| relation | top-1 accuracy |\n|---|---|\n{per_rel}\n"
    )
