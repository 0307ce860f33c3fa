"""Relation data of the kit: LRE-format JSON files and their loader.

A relation file (format of Hernandez et al., "Linearity of Relation Decoding in
Transformer LMs", ICLR 2024) holds "name", "prompt_templates" (strings with one
"{}" for the subject), optional "prompt_templates_zs" and "properties", and
"samples" [{"subject", "object"}]. The kit keeps them under
data/relations/<relation_type>/<stem>.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paths

DATA_DIR: Path = paths.RELATIONS

PAPER_TASKS: dict[str, str] = {
    "name_birthplace": "name_birthplace",
    "country_capital": "country_capital_city",
    "country_language": "country_language",
    "fruit_inside_color": "fruit_inside_color",
    "object_superclass": "object_superclass",
}

TASK_FAMILY: dict[str, str] = {
    "country_capital": "geography (core-sensitive)",
    "country_language": "geography (core-sensitive)",
    "fruit_inside_color": "object attributes (distributed-tolerant)",
    "object_superclass": "object attributes (distributed-tolerant)",
    "name_birthplace": "general (entity)",
}

FRAME_COLUMNS = ["relation", "sample_id", "subject", "object", "template", "prompt"]


class RelationError(ValueError):
    """A relation file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Sample:
    """One (subject, object) fact."""

    subject: str
    object: str


@dataclass(frozen=True)
class Relation:
    """A relation: its prompt templates and its facts, as read from `source`."""

    name: str
    stem: str
    relation_type: str
    prompt_templates: tuple[str, ...]
    prompt_templates_zs: tuple[str, ...]
    samples: tuple[Sample, ...]
    source: Path

    def __len__(self) -> int:
        return len(self.samples)

    def prompts(self, template: int | None = 0) -> list[tuple[int, str, str]]:
        """(sample_id, prompt, object) for each sample, filled into one template.

        template=None fills every template, sample-major: sample i with template t
        gets sample_id i * len(prompt_templates) + t.
        """
        return [(sid, prompt, sample.object) for sid, _, sample, prompt in self._rows(template)]

    def _rows(self, template: int | None) -> Iterator[tuple[int, int, Sample, str]]:
        """(sample_id, template index, sample, prompt), in the order documented in `prompts`."""
        indices = self._template_indices(template)
        for i, sample in enumerate(self.samples):
            for k, t in enumerate(indices):
                sid = i * len(indices) + k
                yield sid, t, sample, self.prompt_templates[t].replace("{}", sample.subject)

    def _template_indices(self, template: int | None) -> list[int]:
        n = len(self.prompt_templates)
        if template is None:
            return list(range(n))
        if not 0 <= template < n:
            raise RelationError(f"{self.stem}: template {template} out of range 0..{n - 1}")
        return [template]


def available_relations(root: Path | None = None) -> list[str]:
    """Stems of the relation files under `root` (default DATA_DIR), sorted."""
    root = DATA_DIR if root is None else Path(root)
    return sorted(p.stem for p in root.rglob("*.json"))


def load_relation(name_or_path: str | Path) -> Relation:
    """Load a relation by stem, paper task name, or path to a JSON file."""
    return _parse(_resolve(name_or_path))


def load_relations(names: Iterable[str] | None = None) -> list[Relation]:
    """Load the named relations (None: every relation in DATA_DIR)."""
    return [load_relation(n) for n in (available_relations() if names is None else names)]


def facts_frame(relations: Iterable[Relation], template: int | None = 0) -> pd.DataFrame:
    """One row per prompt: relation, sample_id, subject, object, template, prompt."""
    rows = [
        (rel.stem, sid, sample.subject, sample.object, t, prompt)
        for rel in relations
        for sid, t, sample, prompt in rel._rows(template)
    ]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


HELD_OUT, SELECTION, TEST = "held-out", "selection", "test"
#: which held-out templates a study prompts with: every one, the selection half, the test half, or given indices
Templates = str | int | Sequence[int]


def held_out_templates(relation: Relation) -> list[str]:
    """The relation's held-out templates, numbered as :func:`prompts_frame` numbers them: prompt_templates, then _zs."""
    return [*relation.prompt_templates, *relation.prompt_templates_zs]


def template_indices(relation: Relation, templates: Templates = HELD_OUT) -> list[int]:
    """The template numbers ``templates`` names for ``relation`` (ValueError naming the range when out of it)."""
    n = len(held_out_templates(relation))
    if isinstance(templates, str):
        halves = {HELD_OUT: range(n), SELECTION: range(0, n, 2), TEST: range(1, n, 2)}
        if templates not in halves:
            raise RelationError(f"templates must be {HELD_OUT!r}, {SELECTION!r}, {TEST!r}, a number or a list of "
                             f"numbers, not {templates!r}")
        return list(halves[templates])
    out = [templates] if isinstance(templates, int) else [int(t) for t in templates]
    bad = [t for t in out if not 0 <= t < n]
    if bad or not out:
        raise RelationError(f"{relation.stem}: template numbers {bad or out} out of range 0..{n - 1} (its held-out "
                         "templates are prompt_templates then prompt_templates_zs)")
    return out


def stratified_facts(relation: Relation, n_samples: int | None, seed: int = 0) -> list[int]:
    """Indices of ``n_samples`` facts of ``relation`` (all when None or larger), stratified by object: facts
    ordered by object (seeded shuffle within each object), taken at positions floor((i + 1/2) N / n), i < n, so
    every object keeps its share of the N facts up to rounding. Returned in file order."""
    n_all = len(relation.samples)
    if n_samples is None or n_samples >= n_all:
        return list(range(n_all))
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1 (or None for every fact), not {n_samples}")
    rng = np.random.default_rng(seed)
    objects = np.array([s.object for s in relation.samples])
    order = np.lexsort((rng.permutation(n_all), objects))
    picked = order[((np.arange(n_samples) + 0.5) * n_all / n_samples).astype(int)]
    return sorted(int(i) for i in picked)


def prompts_frame(relations: Iterable[Relation], n_samples: int | None = None, templates: Templates = HELD_OUT,
                  seed: int = 0) -> pd.DataFrame:
    """Prompts of ``relations``: ``n_samples`` facts per relation (:func:`stratified_facts`; None: every fact),
    each on every template ``templates`` names (:func:`template_indices`), fact-major. Columns: relation,
    sample_id (row within the relation), fact (index in the relation file), subject, object, template (its
    number among the held-out templates), prompt."""
    rows = []
    for rel in relations:
        texts, which = held_out_templates(rel), template_indices(rel, templates)
        for fact in stratified_facts(rel, n_samples, seed):
            sample = rel.samples[fact]
            rows += [(rel.stem, fact, sample.subject, sample.object, t, texts[t].replace("{}", sample.subject))
                     for t in which]
    frame = pd.DataFrame(rows, columns=["relation", "fact", "subject", "object", "template", "prompt"])
    frame.insert(1, "sample_id", frame.groupby("relation", sort=False).cumcount())
    return frame


def data_hash(relations: Iterable[Relation]) -> str:
    """First 16 hex digits of sha256 over the relations' content (not their paths)."""
    content = sorted((_content(r) for r in relations), key=lambda c: (c["stem"], c["name"]))
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _content(rel: Relation) -> dict[str, Any]:
    return {
        "name": rel.name,
        "stem": rel.stem,
        "relation_type": rel.relation_type,
        "prompt_templates": list(rel.prompt_templates),
        "prompt_templates_zs": list(rel.prompt_templates_zs),
        "samples": [[s.subject, s.object] for s in rel.samples],
    }


def _resolve(name_or_path: str | Path) -> Path:
    """Path of the file named by a path, a stem or a paper task name."""
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.suffix == ".json":
        if not path.is_file():
            raise RelationError(f"{path}: no such relation file")
        return path
    stem = PAPER_TASKS.get(str(name_or_path), str(name_or_path))
    matches = sorted(DATA_DIR.rglob(f"{stem}.json"))
    if len(matches) != 1:
        problem = "unknown relation" if not matches else f"ambiguous relation ({len(matches)} files)"
        raise RelationError(
            f"{problem} {name_or_path!r} in {DATA_DIR}; available: "
            f"{', '.join(available_relations()) or 'none'}; paper tasks: {', '.join(PAPER_TASKS)}"
        )
    return matches[0]


def _parse(path: Path) -> Relation:
    """Read and validate one relation file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RelationError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise RelationError(f"{path}: top level must be a JSON object")
    for field in ("name", "prompt_templates", "samples"):
        if field not in doc:
            raise RelationError(f"{path}: missing field {field!r}")
    properties = doc.get("properties", {})
    if not isinstance(properties, dict):
        raise RelationError(f"{path}: field 'properties' must be an object")
    return Relation(
        name=_text(path, "name", doc["name"]),
        stem=path.stem,
        relation_type=_text(path, "properties.relation_type", properties.get("relation_type", "unknown")),
        prompt_templates=_templates(path, "prompt_templates", doc["prompt_templates"], required=True),
        prompt_templates_zs=_templates(path, "prompt_templates_zs", doc.get("prompt_templates_zs", []), required=False),
        samples=_samples(path, doc["samples"]),
        source=path,
    )


def _text(path: Path, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RelationError(f"{path}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def _templates(path: Path, field: str, value: Any, required: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or (required and not value):
        raise RelationError(f"{path}: field {field!r} must be a {'non-empty ' if required else ''}list")
    for i, t in enumerate(value):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise RelationError(f"{path}: field '{field}[{i}]' must be a string with exactly one '{{}}', got {t!r}")
    return tuple(value)


def _samples(path: Path, value: Any) -> tuple[Sample, ...]:
    if not isinstance(value, list) or not value:
        raise RelationError(f"{path}: field 'samples' must be a non-empty list")
    out = []
    for i, s in enumerate(value):
        if not isinstance(s, dict):
            raise RelationError(f"{path}: field 'samples[{i}]' must be an object")
        for key in ("subject", "object"):
            if key not in s:
                raise RelationError(f"{path}: field 'samples[{i}].{key}' is missing")
        out.append(Sample(_text(path, f"samples[{i}].subject", s["subject"]),
                          _text(path, f"samples[{i}].object", s["object"])))
    return tuple(out)
