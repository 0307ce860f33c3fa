"""Six synthetic adaptation domains (tiny analogues of DES-MoE/ESFT's math, code, intent, summary, law and
translation tasks) and the "general" data a base MoE organism is pre-trained on.

Every example is ``(prompt, answer, domain)``. Each domain has its own word set (``m*``, ``c*``, ``i*``, ``s*/k*``,
``l*``, ``a*/b*``) plus a few function words, so routing can specialise; the answer is a token-wise rule of the
prompt, so a held-out split of *unseen combinations* is solvable by a model that learned the rule. The metric
is exact match of the whole answer (see :mod:`moescope.finetuning.evaluate`).

General data = the kit's relation facts (``moescope.data``, template 0: memorised knowledge) and two copy tasks:
``repeat`` over the domain vocabulary (which also gives every domain word a trained embedding before adaptation,
the plan's "reserve domain tokens so they exist") and ``echo`` over the facts' objects, words no domain uses (the
domains' examples give their input embeddings no gradient). :func:`general_part` names the part of the general
score each example counts in (:data:`GENERAL_PARTS`: ``facts``, ``text``, ``text_general``).

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


#: the copy tasks of the general data: {verb: the part of the general score it counts in}
COPY_VERBS = {"repeat": "text", "echo": "text_general"}
#: the parts of the general score (:func:`general_part`)
GENERAL_PARTS = ("facts", *COPY_VERBS.values())


def text_examples(vocabulary: list[str], n: int, seed: int = 0, verb: str = "repeat") -> list[Example]:
    """General copy text: '<verb> w1 w2 :' -> 'w1 w2' over random words of ``vocabulary`` (distinct prompts)."""
    if verb not in COPY_VERBS:
        raise ValueError(f"unknown copy verb {verb!r}; known: {', '.join(COPY_VERBS)}")
    rng = random.Random(f"text-{seed}" if verb == "repeat" else f"{verb}-{seed}")
    out: dict[str, str] = {}
    while len(out) < n:
        ws = " ".join(rng.sample(vocabulary, 2))
        out.setdefault(f"{verb} {ws} :", ws)
    return [Example(p, a, GENERAL) for p, a in out.items()]


def general_part(example: Example) -> str:
    """The part of the general score ``example`` counts in: its copy verb's part, else 'facts'."""
    return COPY_VERBS.get(example.prompt.split(" ", 1)[0], "facts")


def fact_vocabulary(facts: Iterable[Example], splits: dict[str, Split]) -> list[str]:
    """The words of the facts' answers (the objects, whose output embeddings pre-training trains) that no domain
    uses, sorted."""
    domain = set(domain_vocabulary(splits))
    return sorted({w for ex in facts for w in ex.answer.split()} - domain)


@dataclass(frozen=True)
class Corpus:
    """Everything the DES-MoE experiments train and test on.

    ``general_train`` pre-trains the base organism. ``general_mix`` is the general ("alignment") data mixed 1:1
    into every fine-tuning run: half of the facts plus the copy texts. ``general_test`` measures retention on
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


def corpus(n_train: int = 192, n_val: int = 32, n_test: int = 64, n_text: int = 400, n_echo: int = 800,
           seed: int = 0) -> Corpus:
    """The six domains and the general data. ``repeat`` text (``n_text`` prompts over the domain vocabulary): 80%
    pre-trained on and replayed in the fine-tuning mix, 20% held out for the retention test. ``echo`` text
    (``n_echo`` prompts over the facts' objects, which needs more examples to be learned as a copy task): as many
    held out and as many replayed as ``repeat``, all but the held-out ones pre-trained on. Facts: all pre-trained
    on, the even-numbered replayed, the odd-numbered tested."""
    cut = (4 * n_text) // 5
    held = n_text - cut
    if n_echo <= held:
        raise ValueError(f"n_echo must exceed the {held} held-out echo prompts; got {n_echo}")
    splits = domain_splits(DOMAINS, n_train, n_val, n_test, seed)
    facts = fact_examples()
    text = text_examples(domain_vocabulary(splits), n_text, seed)
    echo = text_examples(fact_vocabulary(facts, splits), n_echo, seed, verb="echo")
    return Corpus(domains=splits, general_train=facts + text[:cut] + echo[:-held],
                  general_mix=facts[0::2] + text[:cut] + echo[:cut], general_test=facts[1::2] + text[cut:] + echo[-held:])


def save_corpus(corp: Corpus, path: Path | str) -> Path:
    """Write ``corp`` as JSON (atomically)."""
    return write_json_atomic(path, corp.to_json())


def load_corpus(path: Path | str) -> Corpus:
    """Read a corpus written by :func:`save_corpus`."""
    raw = json.loads(Path(path).read_text())
    rows = lambda items: [Example(*e) for e in items]  # noqa: E731
    splits = {d: Split(rows(s["train"]), rows(s["val"]), rows(s["test"])) for d, s in raw["domains"].items()}
    return Corpus(splits, rows(raw["general_train"]), rows(raw["general_mix"]), rows(raw["general_test"]))
