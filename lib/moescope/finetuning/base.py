"""The base model every DES-MoE experiment fine-tunes: the shipped DeepSeek-V2-like organism, or any model.

The organism (``organisms/desmoe-base``) mirrors DeepSeek-V2-Lite's layout at toy size: the first layer dense,
then MoE layers with always-on shared experts plus fine-grained routed experts (2 shared + 16 routed, top-2; the
real model has 2 + 64, top-6). It is pre-trained on the general data only (relation facts + two copy tasks, see
:mod:`.domains`), with a switch-style load-balancing loss (DeepSeek-V2's classes in transformers compute none), so
all six domains are new to it, as math and code are new to ESFT's "vanilla" model. ESFT's extra alignment pass in
a chat format is left out: here every example is already a prompt/answer pair and the base model has seen none
of the domain tasks, which is what the alignment pass secured.

Training runs on one thread (``threads=1``): bit-identical on every run of the same code, and independent of how
many cores the machine has (the grid runs several one-thread workers side by side).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .. import arch, configs, numerics, paths, routing
from ..determinism import EXPERTS_IMPLEMENTATION, TRAIN_THREADS, set_determinism
from ..models import load_model, load_tokenizer
from ..organisms.training import CALIBRATION_LR_FACTOR, PREFIX_STEPS, PrefixCheck, calibrate_prefix, save_organism
from ..vocab import word_tokenizer
from . import domains
from .evaluate import Evaluator
from .methods import Method
from .train import TrainConfig, TrainResult, train

NAME = "desmoe-base"
CORPUS_FILE = paths.DATA / "desmoe" / "corpus.json"
THREADS = TRAIN_THREADS  # training and evaluation of the grid on one thread (see determinism.TRAIN_THREADS)
#: attention kernel for training and fine-tuning (SDPA: ~20% faster than eager on these models)
ATTENTION = "sdpa"


@dataclass(frozen=True)
class BaseSpec:
    """Sizes and pre-training budget of the DES-MoE base organism."""

    hidden: int = 64
    layers: int = 3
    heads: int = 4
    routed_experts: int = 16
    top_k: int = 2
    expert_width: int = 32
    shared_experts: int = 2
    dense_width: int = 128
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    balance: float = 0.01
    seed: int = 0


def deepseek_config(spec: BaseSpec, vocab: int):
    """DeepSeek-V2 config: layer 0 dense (``dense_width``), then MoE layers with shared + routed experts."""
    shape = configs.Shape(vocab=vocab, hidden=spec.hidden, layers=spec.layers, heads=spec.heads,
                          experts=spec.routed_experts, top_k=spec.top_k, expert_width=spec.expert_width)
    cfg = configs.tiny_config("deepseek_v2", shape)
    cfg.first_k_dense_replace = 1
    cfg.n_shared_experts = spec.shared_experts
    cfg.intermediate_size = spec.dense_width
    return cfg


class BalancedPretraining(Method):
    """Full training plus ``coef`` * the switch load-balancing loss per MoE layer, E * sum_e f_e * P_e, where
    f_e = share of (token, slot) assignments to expert e and P_e = mean over real tokens of the router's score of e
    (:func:`moescope.routing.probabilities`: softmax over experts, or the sigmoid of sigmoid routers). The router's
    output is read through :func:`moescope.routing.decision`."""

    name = "pretrain"

    def __init__(self, coef: float = 0.01):
        self.coef = coef
        self._logits: list[torch.Tensor] = []

    def prepare(self, model, data, batch_size):
        self.routers = [p.router for p in arch.layers(model) if p.is_moe]
        self._logits = [None] * len(self.routers)
        self._index = [None] * len(self.routers)

    def _recorder(self, row: int):
        def hook(module, args, output):
            self._logits[row], _, self._index[row] = routing.decision(module, output)
        return hook

    def hooks(self):
        return [(r, "forward", self._recorder(i)) for i, r in enumerate(self.routers)]

    def balance_loss(self, token_mask: torch.Tensor) -> torch.Tensor:
        keep = token_mask.reshape(-1).bool()
        losses = []
        for router, logits, index in zip(self.routers, self._logits, self._index):
            probs = routing.probabilities(router, logits[keep])
            n_experts = probs.shape[-1]
            share = torch.bincount(index[keep].reshape(-1), minlength=n_experts).float() / index[keep].numel()
            losses.append(n_experts * (share * probs.mean(0)).sum())
        return torch.stack(losses).mean()

    def backward(self, loss, batch, step, total):
        (loss + self.coef * self.balance_loss(batch.attention_mask)).backward()


def shipped_corpus() -> domains.Corpus:
    """The corpus the shipped base and grid were made with (written on first use, then read)."""
    if not CORPUS_FILE.is_file():
        domains.save_corpus(domains.corpus(), CORPUS_FILE)
    return domains.load_corpus(CORPUS_FILE)


def is_current() -> bool:
    """Whether the base organism exists and was pre-trained on the shipped corpus (its card's ``data_hash``)."""
    card = paths.ORGANISMS / NAME / "card.json"
    return card.is_file() and json.loads(card.read_text()).get("data_hash") == shipped_corpus().digest()


def _setup(spec: BaseSpec) -> tuple[domains.Corpus, object, nn.Module]:
    """The shipped corpus, its word tokenizer and the freshly initialised base model (seeded, one thread)."""
    set_determinism(spec.seed, threads=THREADS)
    corpus = shipped_corpus()
    tok = word_tokenizer(corpus.texts())
    return corpus, tok, configs.build(deepseek_config(spec, len(tok)), attn=ATTENTION)


def _pretrain(spec: BaseSpec, corpus: domains.Corpus, tok, model: nn.Module,
              on_step: PrefixCheck | None = None) -> TrainResult:
    return train(model, tok, corpus.general_train, BalancedPretraining(spec.balance),
                 TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed),
                 on_step=on_step)


def prefix_check(spec: BaseSpec = BaseSpec()) -> dict:
    """The :class:`PrefixCheck` record of the first ``PREFIX_STEPS`` steps of :func:`train_base` (same code path),
    for :func:`moescope.organisms.training.verify_prefix` against the card's."""
    corpus, tok, model = _setup(spec)
    check = PrefixCheck(model)
    _pretrain(replace(spec, steps=PREFIX_STEPS), corpus, tok, model, on_step=check)
    return check.record


def train_base(spec: BaseSpec = BaseSpec(), folder: Path | None = None) -> dict:
    """Pre-train the base organism on the general data and save it (HF format + card.json); returns the card."""
    corpus, tok, model = _setup(spec)
    start, prefix = time.perf_counter(), PrefixCheck(model)
    res = _pretrain(spec, corpus, tok, model, on_step=prefix)
    seconds = time.perf_counter() - start
    scores = evaluator(tok, corpus, domains.DOMAINS)(model.eval())
    tolerance = calibrate_prefix(lambda: prefix_check(spec),
                                 lambda: prefix_check(replace(spec, lr=spec.lr * CALIBRATION_LR_FACTOR)))
    card = {
        "name": NAME, "mirrors": "deepseek-ai/DeepSeek-V2-Lite (ESFT vanilla)", "family": "deepseek_v2",
        "architecture": arch.describe(model), "spec": asdict(spec), "threads": THREADS,
        "experts_implementation": EXPERTS_IMPLEMENTATION, "numerics": numerics.describe(),
        "data_hash": corpus.digest(), "n_train_prompts": len(corpus.general_train),
        "training_steps": spec.steps, "training_seconds": round(seconds, 1), "final_loss": res.losses[-1],
        "accuracy": scores["general"]["all"],
        "accuracy_per_relation": {"general facts": scores["general"]["facts"],
                                  "general copy text": scores["general"]["text"],
                                  "general copy text, facts' vocabulary": scores["general"]["text_general"]},
        "base_scores": scores, "prefix_check": prefix.record | {"tolerance": tolerance},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    save_organism(model, tok, card, folder or paths.ORGANISMS / NAME)
    return card


def evaluator(tokenizer, corpus: domains.Corpus, names) -> Evaluator:
    """Validation, test and general scorer for the domains ``names``."""
    pick = lambda split: [e for d in names for e in getattr(corpus.domains[d], split)]  # noqa: E731
    return Evaluator(tokenizer, pick("val"), pick("test"), corpus.general_test)


@dataclass
class Base:
    """A model to fine-tune (organism name, local folder or hub id) with the corpus and its tokenizer."""

    model: str
    corpus: domains.Corpus
    device: str = "cpu"
    dtype: str | None = None

    def __post_init__(self):
        self.tokenizer = load_model_tokenizer(self.model)
        check_vocabulary(self.tokenizer, self.corpus, self.model)
        self._evaluators: dict[tuple[str, ...], Evaluator] = {}

    def load(self) -> nn.Module:
        """A fresh copy of the model (weights as saved), on the chosen device and dtype, with SDPA attention."""
        model = load_model(self.model, device=self.device, dtype=self.dtype).model
        model.set_attn_implementation(ATTENTION)
        return model

    def evaluator(self, names) -> Evaluator:
        """The scorer of the domains ``names`` (encoded once per process)."""
        key = tuple(names)
        if key not in self._evaluators:
            self._evaluators[key] = evaluator(self.tokenizer, self.corpus, key)
        return self._evaluators[key]


def load_model_tokenizer(name: str):
    from ..models import resolve

    target, _ = resolve(name)
    return load_tokenizer(target)


def check_vocabulary(tokenizer, corpus: domains.Corpus, name: str) -> None:
    """Raise a clear error when the tokenizer maps corpus words to its unknown token or lacks an eos token."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} has no eos token, needed to mark the end of answers")
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    words = sorted({w for t in corpus.texts() for w in t.split()})
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if unk in ids:
        lost = [w for w in words if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
        raise ValueError(f"the tokenizer of {name!r} maps {len(lost)} corpus words to its unknown token "
                         f"(e.g. {lost[:5]}); the domain tasks cannot be learned with it")

