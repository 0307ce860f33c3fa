"""User fine-tuning data: JSONL files and column tables, with one-line errors naming file, line and field."""
from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from moescope.finetuning import launch
from moescope.finetuning.domains import DOMAINS, Example
from moescope.finetuning.userdata import UserDataError, parse_domain, read_jsonl, read_source, read_table


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_reads_prompt_and_answer(tmp_path):
    file = write(tmp_path / "qa.jsonl", [json.dumps({"prompt": "capital of France ", "answer": " Paris", "id": 7}),
                                          "", json.dumps({"prompt": "2 + 2 =", "answer": "4"}), "   "])
    assert read_jsonl(file, "qa") == [Example("capital of France", "Paris", "qa"), Example("2 + 2 =", "4", "qa")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a b"}', "bad.jsonl:2: missing field 'answer'"),
    ('{"answer": "a b"}', "bad.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "a b", "answer": 3}', "bad.jsonl:2: field 'answer' must be a string, got number"),
    ('{"prompt": null, "answer": "x"}', "bad.jsonl:2: field 'prompt' must be a string, got null"),
    ('{"prompt": "a", "answer": "  "}', "bad.jsonl:2: field 'answer' is empty"),
    ('{"prompt": "a", "answer": "b",}', "bad.jsonl:2: invalid JSON (Expecting property name enclosed in double "
                                        "quotes at column 31)"),
    ('["a", "b"]', "bad.jsonl:2: expected an object with 'prompt' and 'answer', got array"),
])
def test_malformed_line_is_named_with_its_field(tmp_path, line, message):
    file = write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": "fine"}), line])
    with pytest.raises(UserDataError) as err:
        read_jsonl(file, "d")
    assert str(err.value) == f"{tmp_path}/{message}"


@pytest.mark.parametrize("lines", [[], ["", "  "]])
def test_empty_file_is_refused(tmp_path, lines):
    file = write(tmp_path / "empty.jsonl", lines)
    with pytest.raises(UserDataError, match=r"empty\.jsonl: empty file; expected one JSON object per line"):
        read_jsonl(file, "d")


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(UserDataError, match=r"nope\.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl", "d")
    with pytest.raises(UserDataError, match="is a folder"):
        read_jsonl(tmp_path, "d")


def test_domain_specs_and_unknown_domain():
    assert parse_domain("mine=data/x.jsonl") == ("mine", "data/x.jsonl")
    assert parse_domain("math") == ("math", None)
    with pytest.raises(UserDataError, match=r"unknown domain 'nosuch': the built-in domains are math, code"):
        parse_domain("nosuch")
    with pytest.raises(UserDataError, match="reserved"):
        parse_domain("general=x.jsonl")
    with pytest.raises(UserDataError, match="no file after '='"):
        parse_domain("mine=")
    assert set(DOMAINS) >= {"math", "law"}


def test_datasets_dataset_and_other_tables():
    ds = datasets.Dataset.from_dict({"prompt": ["p one", "p two"], "answer": ["a1", "a2"], "extra": [1, 2]})
    expected = [Example("p one", "a1", "d"), Example("p two", "a2", "d")]
    assert read_source("d", ds) == expected
    assert read_source("d", ds.to_pandas()) == expected
    assert read_source("d", {"prompt": ["p one", "p two"], "answer": ["a1", "a2"]}) == expected


@pytest.mark.parametrize("table, message", [
    (datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}),
     "dataset 'd': no column 'prompt' (columns: question, answer)"),
    (datasets.Dataset.from_dict({"prompt": ["q", "r"], "answer": ["a", None]}),
     "dataset 'd'[1]: field 'answer' must be a string, got null"),
    (pd.DataFrame({"prompt": ["q"], "answer": [1.5]}), "dataset 'd'[0]: field 'answer' must be a string, got number"),
    ({"prompt": ["q", "r"], "answer": ["a"]}, "dataset 'd': columns 'prompt' and 'answer' differ in length (2 vs 1)"),
    (datasets.Dataset.from_dict({"prompt": [], "answer": []}), "dataset 'd': no rows"),
])
def test_malformed_tables_are_named(table, message):
    with pytest.raises(UserDataError) as err:
        read_table(table, "d")
    assert str(err.value) == message


def cli(tmp_path, *extra):
    return ["--model", "desmoe-base", "--method", "fft", "--out", str(tmp_path / "out"), "--steps", "1", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--domain", "BAD"], "bad.jsonl:2: field 'prompt' must be a string, got number"),
    (["--domain", "nosuch"], "unknown domain 'nosuch'"),
    (["--domain", "math", "--eval", "law"], "--eval 'law': unknown domain; the training domains are math"),
    (["--domain", "math", "--domain", "math=x.jsonl"], "--domain: domain 'math' is given twice"),
    (["--domain", "math", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--domain", "WORDS"], "maps 2 corpus words to its unknown token"),
])
def test_cli_errors_are_one_line_before_training(tmp_path, capsys, extra, message):
    write(tmp_path / "bad.jsonl", ['{"prompt": "math : inc m1 m2 =", "answer": "m2 m3"}', '{"prompt": 5, "answer": "m1"}'])
    write(tmp_path / "words.jsonl", ['{"prompt": "zebra quux", "answer": "m1"}'])
    extra = [{"BAD": f"mine={tmp_path}/bad.jsonl", "WORDS": f"mine={tmp_path}/words.jsonl"}.get(x, x) for x in extra]
    assert launch.main(cli(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moescope.finetuning.launch: error: ") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_cli_refuses_sharded_training(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.setenv(flag, "true")
    assert launch.main(cli(tmp_path, "--domain", "math")) == 2
    assert f"{flag} is set: this entry point trains with DDP only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
