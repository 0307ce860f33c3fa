"""Your own fine-tuning data: each domain from a JSONL file or from a table with 'prompt' and 'answer' columns.

- JSONL: one JSON object per line with string fields ``prompt`` and ``answer`` (other fields are ignored, blank
  lines are skipped), e.g. ``{"prompt": "Paris is the capital of", "answer": "France"}``.
- A table: any object with column access ``table["prompt"]``, ``table["answer"]`` (a ``datasets.Dataset``, a
  pandas DataFrame, a dict of lists); nothing is imported to read it.

The model is trained on prompt + " " + answer + <eos> with the loss on the answer (:mod:`.batches`), so both
strings are stripped of surrounding whitespace. Every problem raises :class:`UserDataError` with a one-line message
naming the file and line (or table and row) and the field.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .domains import DOMAINS, GENERAL, Example

FIELDS = ("prompt", "answer")
FORMAT = "one JSON object per line with string fields 'prompt' and 'answer'"


class UserDataError(ValueError):
    """Fine-tuning data that cannot be used; the message names where (file:line or table[row]) and what."""


def _kind(value: Any) -> str:
    """The JSON name of a value's type (Python's for anything JSON has no name for)."""
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", list: "array", dict: "object",
             str: "string"}
    return names.get(type(value), type(value).__name__)


def to_example(record: Any, domain: str, where: str) -> Example:
    """The example of one record {'prompt': str, 'answer': str}; ``where`` names it in errors."""
    if not isinstance(record, dict):
        raise UserDataError(f"{where}: expected an object with 'prompt' and 'answer', got {_kind(record)}")
    values = []
    for name in FIELDS:
        if name not in record:
            raise UserDataError(f"{where}: missing field {name!r}")
        value = record[name]
        if not isinstance(value, str):
            raise UserDataError(f"{where}: field {name!r} must be a string, got {_kind(value)}")
        if not value.strip():
            raise UserDataError(f"{where}: field {name!r} is empty")
        values.append(value.strip())
    return Example(values[0], values[1], domain)


def read_jsonl(path: Path | str, domain: str) -> list[Example]:
    """The examples of a JSONL file, all of ``domain``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserDataError(f"{path}: is a folder, expected a JSONL file ({FORMAT})") from None
    except UnicodeDecodeError as err:
        raise UserDataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UserDataError(f"{path}: cannot be read ({err.strerror or err})") from None
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserDataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
        examples.append(to_example(record, domain, f"{path}:{number}"))
    if not examples:
        raise UserDataError(f"{path}: empty file; expected {FORMAT}")
    return examples


def _columns(table: Any) -> list[str] | None:
    for attr in ("column_names", "columns"):
        names = getattr(table, attr, None)
        if names is not None:
            return [str(n) for n in names]
    return [str(k) for k in table] if isinstance(table, dict) else None


def read_table(table: Any, domain: str, name: str | None = None) -> list[Example]:
    """The examples of a table with 'prompt' and 'answer' columns (``datasets.Dataset``, DataFrame, dict of lists)."""
    name = name or f"dataset {domain!r}"
    columns = {}
    for field in FIELDS:
        try:
            columns[field] = list(table[field])
        except (KeyError, IndexError, TypeError, ValueError):
            known = _columns(table)
            raise UserDataError(f"{name}: no column {field!r}" + (f" (columns: {', '.join(known)})" if known else "")
                                ) from None
    prompts, answers = columns["prompt"], columns["answer"]
    if len(prompts) != len(answers):
        raise UserDataError(f"{name}: columns 'prompt' and 'answer' differ in length ({len(prompts)} vs {len(answers)})")
    if not prompts:
        raise UserDataError(f"{name}: no rows")
    return [to_example({"prompt": p, "answer": a}, domain, f"{name}[{row}]")
            for row, (p, a) in enumerate(zip(prompts, answers))]


def read_source(domain: str, source: Any) -> list[Example]:
    """Examples of ``domain`` from a JSONL path or a table."""
    if isinstance(source, (str, Path)):
        return read_jsonl(source, domain)
    return read_table(source, domain)


def parse_domain(spec: str, option: str = "--domain") -> tuple[str, str | None]:
    """'name=path.jsonl' -> (name, path); 'name' -> (name, None), a built-in domain (checked here)."""
    name, sep, path = spec.partition("=")
    name = name.strip()
    if not name:
        raise UserDataError(f"{option} {spec!r}: no domain name; write name=path.jsonl")
    if name == GENERAL:
        raise UserDataError(f"{option} {spec!r}: the name {GENERAL!r} is reserved for the general mix (--general)")
    if sep:
        if not path.strip():
            raise UserDataError(f"{option} {spec!r}: no file after '='; write {name}=path.jsonl")
        return name, path.strip()
    if name not in DOMAINS:
        raise UserDataError(f"unknown domain {name!r}: the built-in domains are {', '.join(DOMAINS)}; "
                            f"give your own data as {option} {name}=path.jsonl")
    return name, None


def unique(names: Iterable[str], option: str = "--domain") -> None:
    """UserDataError if a domain is named twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserDataError(f"{option}: domain {name!r} is given twice")
        seen.add(name)
