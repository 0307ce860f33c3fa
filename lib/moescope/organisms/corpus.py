"""The gen-2 training corpus: relation facts with a Zipf-like frequency, on training templates only, plus general text.

Facts. Within each relation the samples are put in a seeded random frequency order; the fact of rank r (1-based)
occurs ``max(min_count, round(max_count * r ** -zipf))`` times, each occurrence on the next of the relation's
training templates (``data/organisms/gen2_templates.json``), so frequent facts are seen in every phrasing and the
rarest once. The relation files' own ``prompt_templates`` and ``prompt_templates_zs`` are never trained on: they
are the held-out evaluation templates (:func:`heldout_frame`), so the kit's notebooks, which prompt with
``prompt_templates[0]``, evaluate gen-2 organisms off their training prompts.

General text (no relation fact in it), three kinds:

- typing: "Japan is a country.", "What is Ottawa? It is a city." for every subject and object of every relation
  (types from the relation files' domain/range names);
- grammar: "The happy teacher saw the banana." from a small seeded grammar over the relations' words;
- copying: "copy: w1 w2 w3 w4 = w1 w2 w3 w4", words drawn from a lexicon of every word of every template (held-out
  ones included), so held-out words are trained as inputs without the held-out phrasings ever being seen. The
  draws are random: with the default 600 copies, 82 of the 93 held-out template words occur in the general text;
  the others reach the model as pieces, and the paper tasks' held-out prompts hold no untrained token (tested).

Everything is a function of :class:`CorpusSpec` (its seed included) and the relation files.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from .. import data, paths
from ..vocab import words

TEMPLATES_FILE: Path = paths.DATA / "organisms" / "gen2_templates.json"
KINDS = ("fact", "typing", "grammar", "copy")
_TYPING = ("{e} is a {t}.", "What is {e}? It is a {t}.", "We know {e} as a {t}.")


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes and frequencies of the gen-2 corpus."""

    seed: int = 0
    max_count: int = 48
    min_count: int = 2
    zipf: float = 0.6
    typing_repeats: int = 1
    grammar: int = 600
    copies: int = 600
    copy_words: tuple[int, int] = (2, 4)


def load_templates(path: Path = TEMPLATES_FILE) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({relation stem: training templates}, {domain/range name: type word}) from the templates file."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    for stem, templates in doc["templates"].items():
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"{path}: templates of {stem} need exactly one '{{}}': {bad}")
    return doc["templates"], doc["types"]


def heldout_templates(relation: data.Relation) -> list[str]:
    """The evaluation templates of ``relation``: its file's prompt_templates, then prompt_templates_zs."""
    return list(relation.prompt_templates) + list(relation.prompt_templates_zs)


def zipf_counts(n: int, spec: CorpusSpec) -> list[int]:
    """Occurrences of the facts of frequency rank 1..n: max(min_count, round(max_count * r ** -zipf))."""
    return [max(spec.min_count, round(spec.max_count * r ** -spec.zipf)) for r in range(1, n + 1)]


@dataclass
class Corpus:
    """The gen-2 corpus of ``relations`` under ``spec``: facts with frequencies, training texts, held-out prompts."""

    relations: list[data.Relation]
    spec: CorpusSpec = CorpusSpec()

    @cached_property
    def templates(self) -> dict[str, list[str]]:
        templates, _ = load_templates()
        missing = [r.stem for r in self.relations if r.stem not in templates]
        if missing:
            raise ValueError(f"{TEMPLATES_FILE}: no training templates for relations {missing}")
        overlap = {r.stem: sorted(set(templates[r.stem]) & set(heldout_templates(r))) for r in self.relations}
        if any(overlap.values()):
            raise ValueError(f"training templates must not be held-out templates: {overlap}")
        return {r.stem: templates[r.stem] for r in self.relations}

    @cached_property
    def facts(self) -> pd.DataFrame:
        """One row per fact: relation, sample_id, subject, object, rank (1 = most frequent), count."""
        rows = []
        for rel in self.relations:
            order = list(range(len(rel.samples)))
            random.Random(f"{self.spec.seed}:facts:{rel.stem}").shuffle(order)
            for rank, (sid, count) in enumerate(zip(order, zipf_counts(len(order), self.spec)), start=1):
                s = rel.samples[sid]
                rows.append((rel.stem, sid, s.subject, s.object, rank, count))
        return pd.DataFrame(rows, columns=["relation", "sample_id", "subject", "object", "rank", "count"])

    @cached_property
    def train(self) -> pd.DataFrame:
        """Training texts: kind (fact/typing/grammar/copy), relation (facts only) and text."""
        rng = random.Random(f"{self.spec.seed}:texts")
        rows = []
        for f in self.facts.itertuples():
            templates = self.templates[f.relation]
            start = rng.randrange(len(templates))
            for j in range(f.count):
                prompt = templates[(start + j) % len(templates)].replace("{}", f.subject)
                rows.append(("fact", f.relation, f"{prompt} {f.object}"))
        rows += [("typing", "", t) for t in self._typing()]
        rows += [("grammar", "", t) for t in self._grammar(rng)]
        rows += [("copy", "", t) for t in self._copies(rng)]
        return pd.DataFrame(rows, columns=["kind", "relation", "text"])

    @property
    def texts(self) -> list[str]:
        return list(self.train.text)

    def _typing(self) -> list[str]:
        _, types = load_templates()
        entities = {}
        for rel in self.relations:
            props = json.loads(rel.source.read_text(encoding="utf-8"))["properties"]
            for s in rel.samples:
                entities.setdefault(s.subject, types[props["domain_name"]])
                entities.setdefault(s.object, types[props["range_name"]])
        return [t.format(e=e, t=kind) for e, kind in sorted(entities.items()) for t in _TYPING
                for _ in range(self.spec.typing_repeats)]

    def _pool(self, stem: str, side: str) -> list[str]:
        rel = next((r for r in self.relations if r.stem == stem), None)
        return sorted({getattr(s, side) for s in rel.samples}) if rel else []

    def _grammar(self, rng: random.Random) -> list[str]:
        adjectives = self._pool("adj_antonym", "subject") or ["small"]
        nouns = (self._pool("object_superclass", "subject") + self._pool("work_location", "subject")) or ["thing"]
        verbs = self._pool("verb_past_tense", "object") or ["saw"]
        places = self._pool("work_location", "object") or ["house"]
        shapes = ("The {a} {n} {v} the {m}.", "A {n} {v} a {a} {m}.", "The {n} in the {p} was {a}.",
                  "Yesterday the {a} {n} {v} a {m} near the {p}.")
        return [rng.choice(shapes).format(a=rng.choice(adjectives), n=rng.choice(nouns), m=rng.choice(nouns),
                                          v=rng.choice(verbs), p=rng.choice(places))
                for _ in range(self.spec.grammar)]

    def lexicon(self) -> list[str]:
        """Every word of every template (training and held-out) and every entity word, sorted."""
        texts = [t for ts in self.templates.values() for t in ts]
        texts += [t for r in self.relations for t in heldout_templates(r)]
        texts += [x for r in self.relations for s in r.samples for x in (s.subject, s.object)]
        return sorted({w for t in texts for w in words(t.replace("{}", " "))})

    def _copies(self, rng: random.Random) -> list[str]:
        lexicon, (lo, hi) = self.lexicon(), self.spec.copy_words
        out = []
        for _ in range(self.spec.copies):
            seq = " ".join(rng.choice(lexicon) for _ in range(rng.randint(lo, hi)))
            out.append(f"copy: {seq} = {seq}")
        return out

    def training_prompts(self, relations: Iterable[str]) -> pd.DataFrame:
        """Every fact of ``relations`` (stems) on every one of its training templates, the prompt without the
        object (what the training texts hold before it): relation, sample_id, subject, object, prompt."""
        facts = self.facts[self.facts.relation.isin(list(relations))]
        rows = [(f.relation, f.sample_id, f.subject, f.object, t.replace("{}", f.subject))
                for f in facts.itertuples() for t in self.templates[f.relation]]
        return pd.DataFrame(rows, columns=["relation", "sample_id", "subject", "object", "prompt"])

    def heldout(self) -> pd.DataFrame:
        """Every fact on every held-out template: :func:`heldout_frame` with each fact's rank and count."""
        return heldout_frame(self.relations).merge(
            self.facts[["relation", "sample_id", "rank", "count"]], on=["relation", "sample_id"], how="left")

    def hash(self) -> str:
        """First 16 hex digits of sha256 over the spec, the relation files' content and every training text."""
        blob = json.dumps({"spec": asdict(self.spec), "relations": data.data_hash(self.relations),
                           "templates": self.templates, "texts": self.texts}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def heldout_frame(relations: list[data.Relation]) -> pd.DataFrame:
    """One row per (fact, held-out template): relation, sample_id, subject, object, template, template_set, prompt.

    ``template`` indexes :func:`heldout_templates`; ``template_set`` is 'prompt_templates' or 'prompt_templates_zs'.
    """
    rows = []
    for rel in relations:
        n_main = len(rel.prompt_templates)
        for t, template in enumerate(heldout_templates(rel)):
            kind = "prompt_templates" if t < n_main else "prompt_templates_zs"
            for sid, s in enumerate(rel.samples):
                rows.append((rel.stem, sid, s.subject, s.object, t, kind, template.replace("{}", s.subject)))
    return pd.DataFrame(rows, columns=["relation", "sample_id", "subject", "object", "template", "template_set",
                                       "prompt"])
