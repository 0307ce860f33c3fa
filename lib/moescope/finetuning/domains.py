"""Six synthetic adaptation domains (tiny analogues of DES-MoE/ESFT's math, code, intent, summary, law and
translation tasks) and the "general" data a base MoE organism is pre-trained on.

Every example is ``(prompt, answer, domain)``. Each domain has its own word set (``m*``, ``c*``, ``i*``, ``s*/k*``,
``l*``, ``a*/b*``) plus a few function words, so routing can specialise; the answer is a token-wise rule of the
prompt, so a held-out split of *unseen combinations* is solvable by a model that learned the rule. The metric
is exact match of the whole answer (see :mod:`moescope.finetuning.evaluate`).

General data = the kit's relation facts (``moescope.data``, template 0: memorised knowledge) + "text": a
``repeat`` copy task over the whole vocabulary, which also gives every domain word a trained embedding before
adaptation (the plan's "reserve domain tokens so they exist").

Each domain has train / validation / test splits (disjoint prompts): fine-tuning methods are tuned and their
checkpoints chosen on validation only; test and general scores are read once, at the chosen checkpoint. The
corpus of the shipped experiments is saved as JSON (``save_corpus``) so later changes to the relation files
cannot silently change what the cached results were computed on.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .. import data
from ..results import write_json_atomic

DOMAINS = ("math", "code", "intent", "summary", "law", "translation")
GENERAL = "general"


class Example(NamedTuple):
    """One supervised example: the model reads ``prompt`` and must produce ``answer`` (then <eos>)."""

    prompt: str
    answer: str
    domain: str


@dataclass(frozen=True)
class Split:
    """Train, validation and test examples of one domain (disjoint prompts)."""

    train: list[Example]
    val: list[Example]
    test: list[Example]

    def all(self) -> list[Example]:
        return self.train + self.val + self.test


def _words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _math(rng: random.Random) -> tuple[str, str]:
    """'math : dbl m3 m9 =' -> 'm6 m5': inc (x+1) or dbl (2x) mod 13, applied to each operand."""
    op = rng.choice(("inc", "dbl"))
    xs = [rng.randrange(13) for _ in range(2)]
    ys = [(x + 1) % 13 if op == "inc" else (2 * x) % 13 for x in xs]
    return f"math : {op} {' '.join(f'm{x}' for x in xs)} =", " ".join(f"m{y}" for y in ys)


def _code(rng: random.Random) -> tuple[str, str]:
    """'code : reverse c1 c4 c2 ;' -> 'c2 c4 c1'; 'rotate' moves the first item to the end."""
    op = rng.choice(("reverse", "rotate"))
    xs = rng.sample(_words("c", 12), 3)
    ys = xs[::-1] if op == "reverse" else xs[1:] + xs[:1]
    return f"code : {op} {' '.join(xs)} ;", " ".join(ys)


_INTENTS = {"reserve": "irsv", "play": "iply", "call": "ical", "order": "iord"}


def _intent(rng: random.Random) -> tuple[str, str]:
    """'intent : please play i3 with i7 now' -> 'iply i3 i7' (intent label, then the two slots in order)."""
    verb = rng.choice(sorted(_INTENTS))
    a, b = rng.sample(_words("i", 12), 2)
    polite = rng.choice(("please", "kindly", "now"))
    return f"intent : {polite} {verb} {a} with {b} ?", f"{_INTENTS[verb]} {a} {b}"


def _summary(rng: random.Random) -> tuple[str, str]:
    """'summary : s1 k3 s4 s2 k7 s0 .' -> 'k3 k7': the two key words (k*) among fillers (s*), in order."""
    filler = [rng.choice(_words("s", 10)) for _ in range(4)]
    keys = rng.sample(_words("k", 10), 2)
    slots = sorted(rng.sample(range(6), 2))
    text = []
    for pos in range(6):
        text.append(keys[slots.index(pos)] if pos in slots else filler.pop())
    return f"summary : {' '.join(text)} .", " ".join(keys)


_CRIMES = {"theft": "lfine", "fraud": "lprison", "assault": "lprobation", "libel": "lwarning"}
_RECORDS = {"first": "lreduced", "repeat": "lincreased", "minor": "lsuspended"}


def _law(rng: random.Random) -> tuple[str, str]:
    """'law : case l3 l8 fraud repeat' -> 'lprison lincreased': penalty by crime, modifier by record."""
    crime, record = rng.choice(sorted(_CRIMES)), rng.choice(sorted(_RECORDS))
    case = " ".join(rng.sample(_words("l", 10), 2))
    return f"law : case {case} {crime} {record} verdict", f"{_CRIMES[crime]} {_RECORDS[record]}"


_LEXICON = {f"a{i}": f"b{(7 * i + 3) % 12}" for i in range(12)}


def _translation(rng: random.Random) -> tuple[str, str]:
    """'translate : a3 a7 a1 ->' -> lexicon(a1) lexicon(a7) lexicon(a3): a bijective word map, reversed order."""
    xs = rng.sample(sorted(_LEXICON), 3)
    return f"translate : {' '.join(xs)} ->", " ".join(_LEXICON[x] for x in reversed(xs))


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "math": _math, "code": _code, "intent": _intent, "summary": _summary, "law": _law, "translation": _translation,
}


def domain_split(domain: str, n_train: int = 192, n_val: int = 32, n_test: int = 64, seed: int = 0) -> Split:
    """Distinct examples of ``domain``; no prompt occurs in two splits."""
    if domain not in GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; choose from {DOMAINS}")
    rng = random.Random(f"{domain}-{seed}")
    seen: dict[str, str] = {}
    total = n_train + n_val + n_test
    for _ in range(100 * total):
        prompt, answer = GENERATORS[domain](rng)
        seen.setdefault(prompt, answer)
        if len(seen) == total:
            break
    else:
        raise ValueError(f"{domain}: only {len(seen)} distinct examples exist, asked for {total}")
    rows = [Example(p, a, domain) for p, a in seen.items()]
    return Split(train=rows[:n_train], val=rows[n_train:n_train + n_val], test=rows[n_train + n_val:])


def domain_splits(domains: Iterable[str] = DOMAINS, n_train: int = 192, n_val: int = 32, n_test: int = 64,
                  seed: int = 0) -> dict[str, Split]:
    """{domain: Split} for each named domain."""
    return {d: domain_split(d, n_train, n_val, n_test, seed) for d in domains}


def fact_examples(relations: Iterable[data.Relation] | None = None) -> list[Example]:
    """The relation facts (template 0) as general examples; domain ``'general'``."""
    rels = data.load_relations() if relations is None else relations
    return [Example(prompt, obj, GENERAL) for rel in rels for _, prompt, obj in rel.prompts(0)]


def domain_vocabulary(splits: dict[str, Split]) -> list[str]:
    """Every word of the domains' prompts and answers, sorted."""
    return sorted({w for s in splits.values() for ex in s.all() for w in f"{ex.prompt} {ex.answer}".split()})


def text_examples(vocabulary: list[str], n: int, seed: int = 0) -> list[Example]:
    """General 'text': 'repeat w1 w2 :' -> 'w1 w2' over random words of ``vocabulary`` (distinct prompts)."""
    rng = random.Random(f"text-{seed}")
    out: dict[str, str] = {}
    while len(out) < n:
        ws = " ".join(rng.sample(vocabulary, 2))
        out.setdefault(f"repeat {ws} :", ws)
    return [Example(p, a, GENERAL) for p, a in out.items()]


@dataclass(frozen=True)
class Corpus:
    """Everything the DES-MoE experiments train and test on.

    ``general_train`` pre-trains the base organism. ``general_mix`` is the general ("alignment") data mixed 1:1
    into every fine-tuning run: half of the facts plus the copy text. ``general_test`` measures retention on
    general knowledge the mix does not replay: the other half of the facts (memorised in pre-training) plus
    held-out copy prompts, as ESFT's general benchmarks are not its alignment data.
    """

    domains: dict[str, Split]
    general_train: list[Example]
    general_mix: list[Example]
    general_test: list[Example]

    def texts(self) -> list[str]:
        """All prompt and answer strings (to build a tokenizer)."""
        rows = self.general_train + self.general_mix + self.general_test + [e for s in self.domains.values()
                                                                            for e in s.all()]
        return [t for e in rows for t in (e.prompt, e.answer)]

    def to_json(self) -> dict:
        return {"domains": {d: {k: [list(e) for e in getattr(s, k)] for k in ("train", "val", "test")}
                            for d, s in self.domains.items()},
                **{k: [list(e) for e in getattr(self, k)] for k in ("general_train", "general_mix", "general_test")}}

    def digest(self) -> str:
        """First 16 hex digits of sha256 over the corpus content."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corpus(n_train: int = 192, n_val: int = 32, n_test: int = 64, n_text: int = 400, seed: int = 0) -> Corpus:
    """The six domains and the general data: pre-training on all facts + 80% of the copy text; the fine-tuning
    mix replays the even-numbered facts + that text; retention is tested on the odd-numbered facts + the other
    20% of the text."""
    splits = domain_splits(DOMAINS, n_train, n_val, n_test, seed)
    facts = fact_examples()
    text = text_examples(domain_vocabulary(splits), n_text, seed)
    cut = (4 * len(text)) // 5
    return Corpus(domains=splits, general_train=facts + text[:cut], general_mix=facts[0::2] + text[:cut],
                  general_test=facts[1::2] + text[cut:])


def save_corpus(corp: Corpus, path: Path | str) -> Path:
    """Write ``corp`` as JSON (atomically)."""
    return write_json_atomic(path, corp.to_json())


def load_corpus(path: Path | str) -> Corpus:
    """Read a corpus written by :func:`save_corpus`."""
    raw = json.loads(Path(path).read_text())
    rows = lambda items: [Example(*e) for e in items]  # noqa: E731
    splits = {d: Split(rows(s["train"]), rows(s["val"]), rows(s["test"])) for d, s in raw["domains"].items()}
    return Corpus(splits, rows(raw["general_train"]), rows(raw["general_mix"]), rows(raw["general_test"]))
