"""One report for both papers: every claim row the notebooks of a run recorded, grouped by paper.

Each notebook records its rows with ``results.record(name, {"claims": rows, "figures": [...], ...}, out_dir)``;
a row is :func:`moescope.verdicts.decide`'s (paper, where, claim, model, statement, paper value, statistic, kit
value and interval, control, rule, verdict, note). :func:`write` collects them from ``runs/<run>/**`` and writes

    runs/<run>/claims.csv   every row (the data the two documents and the README table are made from)
    runs/<run>/report.md    the tallies by claim, then per paper every row; notebooks that recorded no rows
    runs/<run>/report.html  the same with each notebook's figures inline (captioned) and a link to its executed copy
    runs/<run>/<folder>/<notebook>.html   each executed notebook rendered to HTML, to browse without a Jupyter server

Rows are grouped by paper section (:data:`SECTIONS`: ESFT's premise and the sequential extension sit under DES-MoE);
a notebook with more than :data:`LONG` rows gets a summary per claim family and model, its rows below (collapsed).

:func:`update_readme` writes the README's claim table (between ``<!-- claims:start -->`` and
``<!-- claims:end -->``) from a run's claims.csv: ``python -m moescope.kit.report readme [--run default]``.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from .. import paths
from ..tables import OUTCOME_COLOURS
from ..finetuning.paper import DES_MOE, ESFT
from ..results import write_csv_atomic, write_text_atomic
from ..verdicts import COLUMNS, NOT_TESTABLE, OUTCOMES, PAPER_READING, kind, reading_labels, survival
from .runner import folder_label, render_html

START, END = "<!-- claims:start -->", "<!-- claims:end -->"
README = paths.ROOT / "README.md"
KINDS = OUTCOMES
#: a claim whose testable rows (models) reach different outcomes
MIXED = "differs by model"
#: how the tallies name each role of a claim row (verdicts.ROLES)
ROLE_NAMES = {"claim": "claims", "control": "controls", "self-check": "method self-checks"}
#: the report section of a row's paper, where it is not the paper itself (DES-MoE's notebooks test ESFT's premise)
SECTIONS = {ESFT: DES_MOE, f"{DES_MOE}, extension": DES_MOE}
#: a notebook with more rows than this gets a summary table, its rows collapsed below
LONG = 20
#: what a control without a value of its own is called (a fixed reference such as 'the base model (F = 0)')
REFERENCE = "fixed reference"


class ReportError(ValueError):
    """A run or README cannot be reported (no metrics, missing markers)."""


# ---------------------------------------------------------------------------------------------------- collect
#: what each paper's readings are, for the report's readings section ({paper: text}; a paper not named gets
#: :data:`OTHER_READINGS`)
READINGS_TEXT = {
    DES_MOE: (
        "The DES-MoE claims, by the same rules, under the paper's reading of its phase I (eq. 11: the router and the "
        "backbone train for the first 0.2T steps, one learning rate) and its other readings, each run through the "
        "whole protocol (four-rate sweep on validation, 3 seeds, N = 2, 4, 6 in two orders): phase I trains the "
        "routed experts with the backbone frozen (the Fig. 1 caption); the backbone at full FT's chosen rate; "
        "t1 = 0.1; no phase I. A claim survives when it is reproduced under all of them. The tallies count the "
        "paper's reading only."),
}
OTHER_READINGS = ("The same claims, by the same rules, under the paper's reading (LPI through the final norm's "
                  "frozen scale, every layer) and its variants: each layer at its own scale, the gold against the "
                  "relation's other objects, layer 0 set apart. A claim survives when it is reproduced under all of "
                  "them. The tallies count the paper's reading only.")


def readings_sections(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(paper, what its readings are, :func:`readings` of its rows) for each paper with rows under a variant."""
    out = []
    for paper in dict.fromkeys(rows.paper):
        varied = readings(rows[rows.paper == paper])
        if len(varied):
            out.append((paper, READINGS_TEXT.get(paper, OTHER_READINGS), varied))
    return out


def metrics_files(run_dir: Path) -> list[Path]:
    """Every ``<notebook>.metrics.json`` of a run, in notebook order, then folder order."""
    return sorted(Path(run_dir).glob("*/*.metrics.json"), key=lambda p: (p.name, p.parent.name))


def collect(run_dir: Path) -> pd.DataFrame:
    """Every claim row of the run, with the notebook, the model (as given to the run) and the numerics (pinned or
    native, as the notebook recorded them) that produced it."""
    frames = []
    for f in metrics_files(run_dir):
        doc = json.loads(f.read_text())
        if doc.get("claims"):
            frame = pd.DataFrame(doc["claims"]).reindex(columns=COLUMNS)
            frames.append(frame.assign(notebook=f.name.removesuffix(".metrics.json"), folder=folder_label(f.parent),
                                       numerics=doc.get("numerics", "not recorded")))
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "notebook", "folder", "numerics"])
    return pd.concat(frames, ignore_index=True)


def numerics_line(rows: pd.DataFrame) -> str:
    """Which numerics produced the run's rows: one choice for all, or each choice with its notebooks."""
    if not len(rows):
        return "Numerics: no claim rows were recorded."
    used = rows.groupby("numerics", sort=False).notebook.unique()
    if len(used) == 1:
        return f"Numerics: {used.index[0]} for every notebook (`moescope numerics` explains the choice)."
    return "Numerics: " + "; ".join(f"{k} for {', '.join(v)}" for k, v in used.items()) + \
        " (`moescope numerics` explains the choice)."


def missing_claims(run_dir: Path) -> list[str]:
    """'<folder>/<notebook>' for each notebook of the run that recorded no claim rows."""
    return [f"{folder_label(f.parent)}/{f.name.removesuffix('.metrics.json')}" for f in metrics_files(run_dir)
            if not json.loads(f.read_text()).get("claims")]


def claim_outcome(verdicts: pd.Series) -> str:
    """One claim's outcome over its rows (one per model): not testable when no row is testable, else the outcome
    its testable rows share, else :data:`MIXED`."""
    tested = {kind(x) for x in verdicts} - {NOT_TESTABLE}
    if not tested:
        return NOT_TESTABLE
    return tested.pop() if len(tested) == 1 else MIXED


def paper_reading(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows decided under the paper's own reading (the variants of a claim under other lenses are apart)."""
    reading = rows.get("reading", pd.Series("", index=rows.index)).fillna("")
    return rows[reading == PAPER_READING]


def readings(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`moescope.verdicts.survival` of the rows, shown against the paper: the paper's value, then under each
    reading the outcome with the kit's value ("not reproduced (-0.09)"), and ``survives`` as yes / no."""
    wide = survival(rows)
    if wide.empty:
        return wide
    label = rows.assign(reading=reading_labels(rows))
    kit = label.set_index(["claim", "model", "reading"]).kit
    kit = kit[~kit.index.duplicated()]
    for column in [c for c in wide.columns if c not in ("claim", "model", "survives")]:
        values = [kit.get((c, m, column)) for c, m in zip(wide.claim, wide.model)]
        wide[column] = [f"{v} ({x:.3g})" if isinstance(x, (int, float)) and math.isfinite(x) else v
                        for v, x in zip(wide[column], values)]
    value = label.drop_duplicates("claim").set_index("claim").paper_value
    wide.insert(2, "paper value", wide.claim.map(value))
    return wide.assign(survives=wide.survives.map({True: "yes", False: "no"}))


def counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Claims (not rows) of each outcome per paper and role (papers in order of first appearance; the papers'
    claims, then their control families, then method self-checks), with the number of rows they come from; only
    the rows decided under the paper's own reading (:func:`paper_reading`)."""
    rows = paper_reading(rows)
    r = rows.assign(role=rows.get("role", pd.Series("claim", index=rows.index)).replace("", "claim").fillna("claim"))
    out = []
    for paper in dict.fromkeys(r.paper):
        for role, name in ROLE_NAMES.items():
            g = r[(r.paper == paper) & (r.role == role)]
            if not len(g):
                continue
            per_claim = g.groupby("claim", sort=False).verdict.apply(claim_outcome)
            out.append({"paper": paper, "kind": name, "claims": len(per_claim),
                        **{k: int((per_claim == k).sum()) for k in (*KINDS, MIXED)}, "rows": len(g)})
    return pd.DataFrame(out, columns=["paper", "kind", "claims", *KINDS, MIXED, "rows"])


# ---------------------------------------------------------------------------------------------------- formatting
def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def interval(value, low, high, n=None, over: str = "") -> str:
    """'value [low, high]' (with 'over n <what>' when known); '' for no value."""
    text = _num(value)
    if text and _num(low) and _num(high):
        text += f" [{_num(low)}, {_num(high)}]"
    if text and over and n:
        text += f" ({int(n)} {over})"
    return text


def _text(text) -> str:
    return str(text).replace("\n", " ") if text is not None and text == text else ""


def _cell(text) -> str:
    """A Markdown table cell ('|' escaped)."""
    return _text(text).replace("|", "\\|")


def _control(r) -> str:
    """'control: value [interval]' ('control (fixed reference)' for a control without a value of its own), then
    'kit - control: value [interval]' when the row has the difference."""
    value = interval(r.control_value, r.control_low, r.control_high)
    text = (f"{r.control}: {value}" if value else f"{r.control} ({REFERENCE})") if _text(r.control) else ""
    diff = interval(getattr(r, "diff", math.nan), getattr(r, "diff_low", math.nan), getattr(r, "diff_high", math.nan))
    return f"{text}; kit - control: {diff}" if text and diff else text


def markdown_table(rows: pd.DataFrame, compact: bool = False) -> list[str]:
    """Rows as a Markdown table (``compact``: the README's columns)."""
    if compact:
        head = ["claim", "model", "paper", "kit [95% interval]", "verdict"]
    else:
        head = ["claim", "where", "model", "paper", "kit [95% interval]", "control", "rule", "verdict", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.itertuples():
        kit = interval(r.kit, r.kit_low, r.kit_high, r.n, r.over)
        cells = [r.claim, r.model, r.paper_value, kit, r.verdict]
        if not compact:
            control = _control(r)
            cells = [r.claim, r.where, r.model, r.paper_value, kit, control, r.rule, r.verdict, r.note]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _frame_lines(frame: pd.DataFrame) -> list[str]:
    head = list(frame.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_cell(x) for x in r) + " |" for r in frame.itertuples(index=False)]


def _count_lines(rows: pd.DataFrame) -> list[str]:
    return _frame_lines(counts(rows))


def family_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per claim family (a claim name of three or more parts without its last part, e.g. 'T5.OLMoE.name_birthplace'
    for its top1, top5, top10 and share rows; a shorter name is its own family) and model, in order of appearance:
    the number of rows of each outcome."""
    family = rows.claim.where(rows.claim.str.count(r"\.") < 2, rows.claim.str.rsplit(".", n=1).str[0])
    r = rows.assign(family=family, outcome=rows.verdict.map(kind))
    table = (r.groupby(["family", "model"], sort=False).outcome.value_counts().unstack(fill_value=0)
             .reindex(columns=list(KINDS), fill_value=0))
    return table.assign(rows=table.sum(axis=1)).reset_index().rename(columns={"family": "claims"})


def sections(rows: pd.DataFrame) -> dict[str, list[tuple[str, str, pd.DataFrame]]]:
    """Rows by report section (the row's paper, or its :data:`SECTIONS` entry), then by (notebook, folder), both in
    order of appearance."""
    out: dict[str, list[tuple[str, str, pd.DataFrame]]] = {}
    section = rows.paper.map(lambda p: SECTIONS.get(p, p))
    for (name, notebook, folder), g in rows.groupby([section, "notebook", "folder"], sort=False):
        out.setdefault(name, []).append((notebook, folder, g))
    return out


OUTCOME_TEXT = ("Counts are of claims, not rows: a claim tested on several models counts once, under the outcome its "
                "testable rows share (or 'differs by model'); control families (attributed vs random units, one per "
                "task and method) and method self-checks (the telescoping identity, the planted ground truth) are "
                "counted apart from the papers' claims. A verdict is `reproduced` (the 95% interval inside the "
                "paper's band, or on the claimed side of the threshold), `not reproduced` (disjoint from the band, or "
                "wholly on the wrong side), `inconclusive` (it straddles; the note gives the half-width that would "
                "decide it) or `not testable: <the unmet precondition>`; a baseline gate (a ceiling) turns only an "
                "inconclusive result into not testable.")


def _status_lines(status: pd.DataFrame | None) -> list[str]:
    if status is None:
        return []
    lines = ["## Notebook runs", "", "| notebook | model | status | seconds |", "|---|---|---|---|"]
    rows = [f"| {str(r.notebook).removesuffix('.ipynb')} | {r.model} | {_cell(r.status)} | {_num(r.seconds)} |"
            for r in status.itertuples()]
    return lines + rows + [""]


def markdown(rows: pd.DataFrame, missing: Sequence[str], run: str, status: pd.DataFrame | None = None) -> str:
    """The report as Markdown: verdict counts, the status of every notebook run (when known), then every row,
    per paper."""
    lines = [f"# moescope: paper vs kit ({run})", "",
             "Every kit value is computed by the executed notebook that recorded it; paper values come from the "
             "papers' tables (`moescope.attribution.paper`, `moescope.finetuning`); rules are fixed in advance.",
             "", OUTCOME_TEXT, "", numerics_line(rows), ""]
    lines += _count_lines(rows) + [""]
    if missing:
        lines += ["**Notebooks that recorded no claim rows:** " + ", ".join(f"`{m}`" for m in missing), ""]
    lines += _status_lines(status)
    for paper, text, varied in readings_sections(rows):
        lines += [f"## {paper}: claims under each reading", "", text, "", *_frame_lines(varied), ""]
    for name, notebooks in sections(rows).items():
        lines += [f"## {name}", ""]
        for notebook, folder, h in notebooks:
            lines += [f"### {notebook} ({folder})", ""]
            if len(h) > LONG:
                lines += ["Summary (rows per outcome):", "", *_frame_lines(family_summary(h)), "",
                          f"<details><summary>all {len(h)} rows</summary>", "", *markdown_table(h), "", "</details>"]
            else:
                lines += markdown_table(h)
            lines += [""]
    return "\n".join(lines) + "\n"


def caption(png: Path) -> str:
    """A figure's caption: the ``Description`` that :func:`moescope.plots.save_fig` writes into the PNG ('' for a
    PNG written without one)."""
    with Image.open(png) as image:
        return image.info.get("Description", "")


def _figure_tags(names: Sequence[str], folders: Sequence[Path]) -> list[str]:
    tags = []
    for name in names:
        found = next((d / f"{name}.png" for d in folders if (d / f"{name}.png").is_file()), None)
        if found is not None:
            data, text = base64.b64encode(found.read_bytes()).decode(), html.escape(caption(found))
            under = f"{text} <small>({html.escape(name)})</small>" if text else html.escape(name)
            tags.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{under}</figcaption></figure>")
    return tags


CSS = """body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;
font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
img{max-width:100%}figure{margin:.5em 0}figcaption{font-style:italic}summary{cursor:pointer;margin:.5em 0}
""" + "".join(f".{k.replace(' ', '-')}{{background:{c}}}" for k, c in OUTCOME_COLOURS.items())


def _html_rows(rows: pd.DataFrame) -> str:
    head = ["claim", "where", "model", "paper", "kit [95% interval]", "control", "rule", "verdict", "note"]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows.itertuples():
        control = _control(r)
        cells = [r.claim, r.where, r.model, r.paper_value, interval(r.kit, r.kit_low, r.kit_high, r.n, r.over),
                 control, r.rule, r.verdict, r.note]
        css = kind(r.verdict).replace(" ", "-")
        out.append(f'<tr class="{css}">' + "".join(f"<td>{html.escape(_text(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _html_frame(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in frame.columns)
    body = ["<tr>" + "".join(f"<td>{html.escape(_text(x))}</td>" for x in r) + "</tr>"
            for r in frame.itertuples(index=False)]
    return "\n".join([f"<table><tr>{head}</tr>", *body, "</table>"])


def _link(page: str | None, text: str) -> str:
    return f'<a href="{html.escape(page)}">{html.escape(text)}</a>' if page else html.escape(text)


def html_report(rows: pd.DataFrame, missing: Sequence[str], run: str, figures: dict[tuple[str, str], list[str]],
                pages: dict[tuple[str, str], str] | None = None) -> str:
    """The report as one HTML page with the figures inline (``figures``: (notebook, folder) -> img tags) and each
    notebook's heading linking to its executed copy rendered to HTML (``pages``: (notebook, folder) -> a path
    relative to the report)."""
    pages = pages or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>moescope: {html.escape(run)}</title>"
             f"<style>{CSS}</style></head><body><h1>moescope: paper vs kit ({html.escape(run)})</h1>",
             _html_frame(counts(rows)), f"<p>{html.escape(OUTCOME_TEXT)}</p>",
             f"<p>{html.escape(numerics_line(rows))}</p>"]
    if missing:
        parts.append("<p><b>Notebooks that recorded no claim rows:</b> " + html.escape(", ".join(missing)) + "</p>")
    if pages:
        parts.append("<p><b>Executed notebooks:</b> " +
                     ", ".join(_link(page, f"{folder}/{nb}") for (nb, folder), page in pages.items()) + "</p>")
    for paper, text, varied in readings_sections(rows):
        parts += [f"<h2>{html.escape(paper)}: claims under each reading</h2>", f"<p>{html.escape(text)}</p>",
                  _html_frame(varied)]
    for name, notebooks in sections(rows).items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for notebook, folder, h in notebooks:
            parts.append(f"<h3>{_link(pages.get((notebook, folder)), notebook)} ({html.escape(folder)})</h3>")
            if len(h) > LONG:
                parts += ["<p>Summary (rows per outcome):</p>", _html_frame(family_summary(h)),
                          f"<details><summary>all {len(h)} rows</summary>", _html_rows(h), "</details>"]
            else:
                parts.append(_html_rows(h))
            parts += figures.get((notebook, folder), [])
    return "\n".join(parts + ["</body></html>"])


# ---------------------------------------------------------------------------------------------------- write
def write(run_dir: Path, figure_dirs: Sequence[Path] = (paths.FIGURES,)) -> tuple[Path, Path]:
    """claims.csv, report.md and report.html of the run in ``run_dir``, and each executed notebook of the run as
    HTML beside it (:func:`.runner.render_html`; nothing is written outside ``run_dir``); returns (report.md,
    report.html)."""
    run_dir = Path(run_dir)
    if not metrics_files(run_dir):
        raise ReportError(f"{run_dir} holds no <notebook>.metrics.json: run the notebooks first")
    rows, missing = collect(run_dir), missing_claims(run_dir)
    write_csv_atomic(run_dir / "claims.csv", rows)
    figures, pages = {}, {}
    for f in metrics_files(run_dir):
        key = (f.name.removesuffix(".metrics.json"), folder_label(f.parent))
        names = json.loads(f.read_text()).get("figures") or []
        figures[key] = _figure_tags(names, [f.parent / "figures", *map(Path, figure_dirs)])
        executed = f.with_name(f"{key[0]}.ipynb")
        if executed.is_file():
            pages[key] = render_html(executed).relative_to(run_dir).as_posix()
    status = pd.read_csv(run_dir / "status.csv") if (run_dir / "status.csv").is_file() else None
    md = write_text_atomic(run_dir / "report.md", markdown(rows, missing, run_dir.name, status))
    page = write_text_atomic(run_dir / "report.html", html_report(rows, missing, run_dir.name, figures, pages))
    return md, page


# ---------------------------------------------------------------------------------------------------- README
def readme_section(rows: pd.DataFrame, run: str) -> str:
    """The README's claim table: the tallies by claim, then per paper every testable row (reproduced, not
    reproduced, inconclusive) and the not testable rows with their reasons (collapsed)."""
    lines = [f"Generated from `runs/{run}/claims.csv` by `python -m moescope.kit.report readme --run {run}`; "
             "do not edit by hand.", "", OUTCOME_TEXT, "", *_count_lines(rows)]
    for paper_name, g in rows.groupby("paper", sort=False):
        decided, untestable = g[g.verdict.map(kind) != NOT_TESTABLE], g[g.verdict.map(kind) == NOT_TESTABLE]
        lines += ["", f"**{paper_name}**", ""]
        lines += markdown_table(decided, compact=True) if len(decided) else ["(no claim was testable in this run)"]
        if len(untestable):
            lines += ["", f"<details><summary>{len(untestable)} rows not testable on these models (why)</summary>",
                      "", *markdown_table(untestable, compact=True), "", "</details>"]
    return "\n".join(lines)


def update_readme(run_dir: Path, readme: Path = README) -> Path:
    """Replace the README's text between the claim markers by :func:`readme_section` of the run's claims.csv."""
    run_dir, readme = Path(run_dir), Path(readme)
    rows = read_claims(run_dir)
    text = readme.read_text()
    if START not in text or END not in text:
        raise ReportError(f"{readme} lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return write_text_atomic(readme, f"{head}{START}\n{readme_section(rows, run_dir.name)}\n{END}{tail}")


def readme_block(readme: Path = README) -> str:
    """The text between the README's claim markers."""
    text = Path(readme).read_text()
    if START not in text or END not in text:
        raise ReportError(f"{readme} lacks the markers {START} ... {END}")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def read_claims(run_dir: Path) -> pd.DataFrame:
    """The rows :func:`write` saved in ``run_dir/claims.csv``."""
    path = Path(run_dir) / "claims.csv"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: write the run's report first")
    numeric = {"kit", "kit_low", "kit_high", "n", "control_value", "control_low", "control_high", "diff", "diff_low",
               "diff_high"}
    text = {c: str for c in [*COLUMNS, "notebook", "folder"] if c not in numeric}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values={c: [""] for c in numeric})


def compare(runs: dict[str, Path]) -> pd.DataFrame:
    """Claim by claim, each run's 'model: kit [interval] -> verdict' side by side (e.g. old and new organisms)."""
    def cell(g: pd.DataFrame) -> str:
        return "; ".join(f"{r.model}: {interval(r.kit, r.kit_low, r.kit_high, r.n, r.over)} -> {r.verdict}"
                         for r in g.itertuples())

    frames = []
    for label, run_dir in runs.items():
        rows = read_claims(run_dir)
        frames.append(rows.groupby(["paper", "claim", "paper_value"], sort=False).apply(cell, include_groups=False)
                      .rename(label))
    return pd.concat(frames, axis=1).reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moescope.kit.report", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["write", "readme", "compare"],
                        help="write a run's report, the README's table, or compare runs claim by claim")
    parser.add_argument("--run", nargs="+", default=["default"], help="run folder(s) under --out")
    parser.add_argument("--out", default=str(paths.RUNS))
    args = parser.parse_args(argv)
    dirs = [Path(args.out) / r for r in args.run]
    if args.what == "compare":
        table = compare(dict(zip(args.run, dirs)))
        print("\n".join(["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)] +
                        ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.itertuples(index=False)]))
    else:
        print(*(write(dirs[0]) if args.what == "write" else [update_readme(dirs[0])]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
