"""Tests of the kit's relation files and their loader (moescope.data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moescope import data
from moescope.data import (
    DATA_DIR,
    PAPER_TASKS,
    TASK_FAMILY,
    Relation,
    RelationError,
    Sample,
    available_relations,
    data_hash,
    facts_frame,
    load_relation,
    load_relations,
)

REPO = Path(__file__).resolve().parents[2]
LRE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "lre"
KIT_FILES = sorted(DATA_DIR.rglob("*.json"))

VALID = {
    "name": "toy relation",
    "prompt_templates": ["The capital of {} is", "{}'s capital is"],
    "prompt_templates_zs": ["Q: capital of {}? A:"],
    "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city", "symmetric": False},
    "samples": [{"subject": "France", "object": "Paris"}, {"subject": "Japan", "object": "Tokyo"}],
}


def write(tmp_path: Path, doc: object, name: str = "toy.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def variant(**changes: object) -> dict:
    doc = json.loads(json.dumps(VALID))
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


# --- the kit's files -------------------------------------------------------------------------


def test_data_dir_is_the_repo_data_folder():
    if os.environ.get("MOESCOPE_DATA"):
        pytest.skip("MOESCOPE_DATA is set")
    assert DATA_DIR == REPO / "data" / "relations"
    assert len(KIT_FILES) >= 11


@pytest.mark.parametrize("path", KIT_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_kit_file_loads_with_required_fields(path: Path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert set(raw) == {"name", "prompt_templates", "prompt_templates_zs", "properties", "samples"}
    assert set(raw["properties"]) == {"relation_type", "domain_name", "range_name", "symmetric"}
    assert raw["properties"]["relation_type"] == path.parent.name
    rel = load_relation(path)
    assert rel.stem == path.stem and rel.relation_type == path.parent.name
    assert 2 <= len(rel.prompt_templates) <= 3 and rel.prompt_templates_zs
    assert len(rel) >= 20
    subjects = [s.subject for s in rel.samples]
    assert len(subjects) == len(set(subjects)), "subjects must be unique within a relation"
    assert all(1 <= len(s.object.split()) <= 2 for s in rel.samples), "objects must be 1-2 words"


def test_available_relations_lists_kit_stems():
    stems = available_relations()
    assert stems == sorted(p.stem for p in KIT_FILES)
    assert set(PAPER_TASKS.values()) <= set(stems)


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_paper_task_resolves_by_paper_name(task: str):
    rel = load_relation(task)
    assert rel.stem == PAPER_TASKS[task]
    assert load_relation(PAPER_TASKS[task]) == rel
    assert task in TASK_FAMILY


def test_paper_task_contents():
    capital = load_relation("country_capital")
    assert capital.prompt_templates[:2] == ("The capital city of {} is", "The capital of {} is")
    assert Sample("Japan", "Tokyo") in capital.samples
    assert len({s.object for s in load_relation("name_birthplace").samples}) >= 6
    assert len({s.object for s in load_relation("fruit_inside_color").samples}) >= 5
    assert len({s.object for s in load_relation("object_superclass").samples}) >= 8
    assert TASK_FAMILY["country_capital"] == TASK_FAMILY["country_language"] == "geography (core-sensitive)"


def test_load_relations_all_and_named():
    assert [r.stem for r in load_relations()] == available_relations()
    assert [r.stem for r in load_relations(["country_capital", "object_superclass"])] == [
        "country_capital_city",
        "object_superclass",
    ]


def test_unknown_name_lists_available():
    with pytest.raises(RelationError, match="unknown relation 'no_such_relation'") as exc:
        load_relation("no_such_relation")
    assert "country_capital_city" in str(exc.value) and "object_superclass" in str(exc.value)


def test_data_dir_env_var(tmp_path: Path):
    code = "from moescope.data import DATA_DIR, available_relations; print(DATA_DIR); print(available_relations())"
    env = {**os.environ, "MOESCOPE_DATA": str(tmp_path)}
    write(tmp_path, VALID, "toy.json")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(tmp_path), "['toy']"]


def test_data_dir_patched(monkeypatch, tmp_path: Path):
    write(tmp_path, VALID, "toy.json")
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    assert available_relations() == ["toy"]
    assert load_relation("toy").name == "toy relation"


# --- validation --------------------------------------------------------------------------------

MALFORMED = {
    "bad_json": ('{"name": "x", ', "not valid JSON"),
    "missing_name": (variant(name=None), "'name'"),
    "missing_templates": (variant(prompt_templates=None), "'prompt_templates'"),
    "missing_samples": (variant(samples=None), "'samples'"),
    "template_no_slot": (variant(prompt_templates=["The capital is"]), "prompt_templates[0]"),
    "template_two_slots": (variant(prompt_templates=["ok {}", "{} and {}"]), "prompt_templates[1]"),
    "zs_template_no_slot": (variant(prompt_templates_zs=["no slot"]), "prompt_templates_zs[0]"),
    "empty_templates": (variant(prompt_templates=[]), "'prompt_templates'"),
    "empty_samples": (variant(samples=[]), "'samples'"),
    "sample_no_subject": (variant(samples=[{"subject": "a", "object": "b"}, {"object": "b"}]), "samples[1].subject"),
    "sample_no_object": (variant(samples=[{"subject": "a"}]), "samples[0].object"),
    "subject_not_str": (variant(samples=[{"subject": 3, "object": "b"}]), "samples[0].subject"),
    "object_empty": (variant(samples=[{"subject": "a", "object": "  "}]), "samples[0].object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_file_and_field(tmp_path: Path, case: str):
    doc, field = MALFORMED[case]
    path = write(tmp_path, doc, f"{case}.json")
    with pytest.raises(RelationError) as exc:
        load_relation(path)
    message = str(exc.value)
    assert str(path) in message
    assert field in message


def test_optional_fields_default(tmp_path: Path):
    rel = load_relation(write(tmp_path, variant(prompt_templates_zs=None, properties=None)))
    assert rel.prompt_templates_zs == ()
    assert rel.relation_type == "unknown"
    assert len(rel) == 2


def test_missing_file_is_relation_error(tmp_path: Path):
    with pytest.raises(RelationError, match="no such relation file"):
        load_relation(tmp_path / "absent.json")


# --- original LRE data -----------------------------------------------------------------------


def test_reads_original_lre_files():
    if not LRE_DIR.is_dir():
        pytest.skip(f"original LRE data not found at {LRE_DIR}")
    paths = sorted(LRE_DIR.rglob("*.json"))
    assert paths
    for path in paths:
        rel = load_relation(path)
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert len(rel) == len(raw["samples"])
        assert rel.relation_type == raw["properties"]["relation_type"]
    capital = load_relation(LRE_DIR / "factual" / "country_capital_city.json")
    assert capital.prompt_templates[0] == "The capital city of {} is"
    assert str(LRE_DIR / "factual" / "country_capital_city.json") == str(capital.source)


# --- prompts, frames, hash ---------------------------------------------------------------------


@pytest.fixture
def toy(tmp_path: Path) -> Relation:
    return load_relation(write(tmp_path, VALID))


def test_prompts_single_template(toy: Relation):
    assert toy.prompts() == [(0, "The capital of France is", "Paris"), (1, "The capital of Japan is", "Tokyo")]
    assert toy.prompts(1) == [(0, "France's capital is", "Paris"), (1, "Japan's capital is", "Tokyo")]


def test_prompts_all_templates_sample_major(toy: Relation):
    assert toy.prompts(None) == [
        (0, "The capital of France is", "Paris"),
        (1, "France's capital is", "Paris"),
        (2, "The capital of Japan is", "Tokyo"),
        (3, "Japan's capital is", "Tokyo"),
    ]


def test_prompts_subject_with_braces_is_literal(tmp_path: Path):
    rel = load_relation(write(tmp_path, variant(samples=[{"subject": "{x}", "object": "y"}])))
    assert rel.prompts() == [(0, "The capital of {x} is", "y")]


@pytest.mark.parametrize("bad", [2, -1])
def test_prompts_template_out_of_range(toy: Relation, bad: int):
    with pytest.raises(RelationError, match="out of range"):
        toy.prompts(bad)


def test_facts_frame(toy: Relation):
    capital = load_relation("country_capital")
    df = facts_frame([toy, capital], template=None)
    assert list(df.columns) == ["relation", "sample_id", "subject", "object", "template", "prompt"]
    assert len(df) == 2 * len(toy) + len(capital) * len(capital.prompt_templates)
    row = df[(df.relation == "toy") & (df.sample_id == 3)].iloc[0]
    assert (row.subject, row.object, row.template, row.prompt) == ("Japan", "Tokyo", 1, "Japan's capital is")
    one = facts_frame([toy], template=1)
    assert one.template.tolist() == [1, 1] and one.prompt.tolist() == ["France's capital is", "Japan's capital is"]
    assert list(facts_frame([]).columns) == list(df.columns)


def test_data_hash_stable_and_sensitive(tmp_path: Path, toy: Relation):
    other = write(tmp_path, VALID, "copy.json")
    h = data_hash([toy])
    assert len(h) == 16 and int(h, 16) >= 0
    assert data_hash([load_relation(toy.source)]) == h, "reloading must not change the hash"
    capital = load_relation("country_capital")
    assert data_hash([toy, capital]) == data_hash([capital, toy]), "order of relations must not matter"
    moved = load_relation(other)
    assert data_hash([moved]) != h  # different stem
    changed = variant(samples=[{"subject": "France", "object": "Paris"}, {"subject": "Japan", "object": "Kyoto"}])
    assert data_hash([load_relation(write(tmp_path, changed))]) != h, "changing one fact must change the hash"
    h_dir = tmp_path / "elsewhere"
    h_dir.mkdir()
    assert data_hash([load_relation(write(h_dir, VALID))]) == h, "the file's location must not matter"
