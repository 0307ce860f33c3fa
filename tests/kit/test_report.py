"""One report for both papers (moescope.kit.report) and the README's claim table generated from it."""
import json
import math
import re

import nbformat
import pandas as pd
import pytest

from moescope import paths, verdicts as v
from moescope.kit import report

CLAIM = v.Claim("X.1", "attribution (ACL 2025)", "Table 9", "blocking lowers MRR", "0.43", "drop",
                v.exceeds_control(), "random experts", (v.minimum("layers", 8, "depth (layers)"),))
OTHER = v.Claim("D.1", "DES-MoE (EMNLP 2025)", "Fig. 2", "forgets less", "89%", "reduction", v.at_least(0.5))
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8"
                    "cfc0f01f0005000201ffa65fdbb10000000049454e44ae426082")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "default"
    rows_a = [v.decide(CLAIM, {"layers": 16}, v.Estimate(0.4, 0.3, 0.5, 20, "prompts"), v.Estimate(0.1, 0.0, 0.2),
                       model="m1"),
              v.decide(CLAIM, {"layers": 16}, v.Estimate(0.1, 0.0, 0.2), v.Estimate(0.1, 0.0, 0.2), model="m2"),
              v.decide(CLAIM, {"layers": 3}, v.Estimate(0.9), v.Estimate(0.0), model="m3")]
    rows_b = [v.decide(OTHER, {}, v.Estimate(0.59, 0.5, 0.7, 3, "seeds"), model="olmoe")]
    (run / "default" / "figures").mkdir(parents=True)
    (run / "default" / "figures" / "fig_a.png").write_bytes(PNG)
    for name, payload in (("40_blocking", {"claims": rows_a, "figures": ["fig_a"]}),
                          ("62_forgetting", {"claims": rows_b}), ("99_empty", {"table": []})):
        (run / "default" / f"{name}.metrics.json").write_text(json.dumps(payload, default=lambda x: None))
    return run


def test_report_groups_both_papers_and_keeps_every_verdict(run_dir):
    md_path, html_path = report.write(run_dir)
    md = md_path.read_text()
    assert md.index("## attribution (ACL 2025)") < md.index("## DES-MoE (EMNLP 2025)")
    # by claim: X.1 is reproduced on m1, inconclusive on m2 (not testable on m3): one claim that differs by model
    assert "| paper | kind | claims | reproduced | not reproduced | inconclusive | not testable | differs by model | rows |" in md
    assert "| attribution (ACL 2025) | claims | 1 | 0 | 0 | 0 | 0 | 1 | 3 |" in md
    assert "| DES-MoE (EMNLP 2025) | claims | 1 | 1 | 0 | 0 | 0 | 0 | 1 |" in md
    assert "| X.1 | Table 9 | m2 | 0.43 | 0.1 [0, 0.2] | random experts: 0.1 [0, 0.2]; kit - control: 0 [-0.2, 0.2] |" in md
    assert "not testable: depth (layers) is 3, needs at least 8" in md and "0.59 [0.5, 0.7] (3 seeds)" in md
    assert "recorded no claim rows:** `default/99_empty`" in md
    page = html_path.read_text()
    assert page.count('class="inconclusive"') == 1 and "data:image/png;base64," in page and "DES-MoE" in page
    rows = pd.read_csv(run_dir / "claims.csv")
    assert len(rows) == 4 and set(rows.notebook) == {"40_blocking", "62_forgetting"}


def test_missing_claims_and_empty_runs(run_dir, tmp_path):
    assert report.missing_claims(run_dir) == ["default/99_empty"]
    with pytest.raises(report.ReportError, match="no <notebook>.metrics.json"):
        report.write(tmp_path / "nothing")


def test_readme_table_is_written_between_the_markers(run_dir, tmp_path):
    report.write(run_dir)
    readme = tmp_path / "README.md"
    readme.write_text(f"# kit\n\nintro\n\n{report.START}\nold table\n{report.END}\n\nafter\n")
    report.update_readme(run_dir, readme)
    text = readme.read_text()
    assert text.startswith("# kit\n\nintro\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    block = report.readme_block(readme)
    assert block == report.readme_section(report.read_claims(run_dir), "default")
    assert "| X.1 | m2 | 0.43 | 0.1 [0, 0.2] | inconclusive |" in block  # every testable row is shown
    assert "<summary>1 rows not testable" in block
    (tmp_path / "bad.md").write_text("no markers")
    with pytest.raises(report.ReportError, match="markers"):
        report.update_readme(run_dir, tmp_path / "bad.md")


def test_tallies_count_claims_and_keep_controls_and_self_checks_apart():
    check = v.Claim("S.1", "P", "method", "identity", "exact", "error", v.at_most(1e-3), role="self-check")
    control = v.Claim("C.1", "P", "control", "beats random", "-", "drop", v.exceeds_control(), "random", role="control")
    claim = v.Claim("A.1", "P", "T", "a claim", "0", "x", v.above(0.0))
    rows = pd.DataFrame([v.decide(check, {}, v.Estimate(0.0), model=m) for m in ("a", "b")] +
                        [v.decide(control, {}, v.Estimate(0.5, 0.4, 0.6), v.Estimate(0.0), model=m) for m in "ab"] +
                        [v.decide(claim, {}, v.Estimate(-1.0, -1.5, -0.5), model="a")])
    c = report.counts(rows).set_index("kind")
    assert c.loc["claims", "claims"] == 1 and c.loc["claims", "not reproduced"] == 1
    assert c.loc["method self-checks", "reproduced"] == 1 and c.loc["method self-checks", "rows"] == 2
    assert c.loc["controls", "claims"] == 1
    assert report.claim_outcome(pd.Series(["reproduced", "not testable: x"])) == "reproduced"
    assert report.claim_outcome(pd.Series(["not testable: x"])) == "not testable"


def test_interval_formatting():
    assert report.interval(0.5, 0.25, 0.75, 20, "prompts") == "0.5 [0.25, 0.75] (20 prompts)"
    assert report.interval(0.5, math.nan, math.nan) == "0.5" and report.interval(math.nan, 0, 1) == ""


def test_readme_agrees_with_the_default_runs_report():
    """The committed README's claim table is exactly what the committed default run's claims.csv generates."""
    rows = report.read_claims(paths.RUNS / "default")
    assert report.readme_block() == report.readme_section(rows, "default")
    assert len(rows) and rows.verdict.map(v.is_verdict).all()


def test_compare_puts_two_runs_side_by_side(run_dir, tmp_path):
    report.write(run_dir)
    other = tmp_path / "gen2"
    (other / "default").mkdir(parents=True)
    row = v.decide(CLAIM, {"layers": 16}, v.Estimate(0.6, 0.5, 0.7), v.Estimate(0.1, 0.0, 0.2), model="deep")
    (other / "default" / "40_blocking.metrics.json").write_text(json.dumps({"claims": [row]}))
    report.write(other)
    table = report.compare({"gen1": run_dir, "gen2": other}).set_index("claim")
    assert "m3: 0.9 -> not testable: depth (layers) is 3" in table.loc["X.1", "gen1"]
    assert table.loc["X.1", "gen2"] == "deep: 0.6 [0.5, 0.7] -> reproduced"
    assert pd.isna(table.loc["D.1", "gen2"])


@pytest.mark.parametrize("path", sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_every_saved_figure_is_recorded_for_the_report(path):
    """A committed notebook lists in its `results.record(..., {"figures": [...]})` every figure it saves, so that
    report.html shows the figures of both papers."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    saved = set(re.findall(r'save_fig\(.*?"(\w+)"\)', source))
    listed = re.search(r'"figures": \[([^\]]*)\]', source)
    recorded = set(re.findall(r'"(\w+)"', listed.group(1))) if listed else set()
    assert saved and saved <= recorded, f"figures saved but not recorded: {sorted(saved - recorded)}"


def test_the_report_says_which_numerics_produced_the_rows(run_dir):
    """Each metrics file records its numerics; the report says one choice for all, or which notebooks used which."""
    assert "Numerics: not recorded for every notebook" in report.write(run_dir)[0].read_text()
    for name, numerics in (("40_blocking", "pinned"), ("62_forgetting", "native")):
        path = run_dir / "default" / f"{name}.metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"numerics": numerics}))
    md, page = (p.read_text() for p in report.write(run_dir))
    assert "Numerics: pinned for 40_blocking; native for 62_forgetting" in md and "native for 62_forgetting" in page
    assert set(pd.read_csv(run_dir / "claims.csv").numerics) == {"pinned", "native"}


def test_controls_without_a_value_say_so_and_html_cells_are_not_markdown_escaped(tmp_path):
    """A control that is a fixed reference ('the base model (F = 0)') never ends in a bare ':'; HTML cells keep '|'."""
    claim = v.Claim("F.1", "DES-MoE (EMNLP 2025)", "Table 1", "forgets", "62 -> 55", "F", v.above(0.0),
                    "the base model (F = 0)")
    row = v.decide(claim, {}, v.Estimate(0.09, 0.08, 0.1, 3, "seeds"), model="m") | {"note": "max |planted|"}
    (tmp_path / "r" / "m").mkdir(parents=True)
    (tmp_path / "r" / "m" / "61_t.metrics.json").write_text(json.dumps({"claims": [row]}, default=lambda x: None))
    md, page = (p.read_text() for p in report.write(tmp_path / "r"))
    assert "| the base model (F = 0) (fixed reference) |" in md and "(F = 0): |" not in md
    assert "max |planted|" in page and "\\|planted" not in page and "max \\|planted\\|" in md


def test_sections_put_esft_premise_under_des_moe_and_long_notebooks_get_a_summary(tmp_path):
    esft = v.Claim("E.1", "ESFT (EMNLP 2024)", "Fig. 1", "experts specialise", "yes", "x", v.above(0.0))
    t5 = [v.Claim(f"T5.M.task{t}.top{k}", "attribution (ACL 2025)", "Table 5", "drop", "0.1", "x", v.above(0.0))
          for t in range(3) for k in (1, 5, 10)]
    run = tmp_path / "r"
    (run / "m").mkdir(parents=True)
    rows = [v.decide(c, {}, v.Estimate(1.0, 0.5, 1.5), model=m) for c in t5 for m in ("a", "b", "c")]
    for name, claims in (("40_t5", rows), ("60_premise", [v.decide(esft, {}, v.Estimate(1.0), model="a")]),
                         ("61_t1", [v.decide(OTHER, {}, v.Estimate(0.6), model="a")])):
        (run / "m" / f"{name}.metrics.json").write_text(json.dumps({"claims": claims}, default=lambda x: None))
    md = report.write(run)[0].read_text()
    des = md.index("## DES-MoE (EMNLP 2025)")
    assert "## ESFT" not in md and des < md.index("### 60_premise") < md.index("### 61_t1")
    whole = v.decide(v.Claim("T5.core", "attribution (ACL 2025)", "Sec. 5", "core", "0.1", "x", v.above(0.0)), {},
                     v.Estimate(1.0), model="a")
    summary = report.family_summary(pd.DataFrame([*rows, whole]))
    assert len(summary) == 10 and summary.claims.iloc[-1] == "T5.core" and list(summary.iloc[0][["claims", "model", "reproduced", "rows"]]) == ["T5.M.task0", "a", 3, 3]
    assert "| T5.M.task0 | a | 3 | 0 | 0 | 0 | 3 |" in md and "<details><summary>all 27 rows</summary>" in md


def test_figures_are_captioned_from_what_save_fig_wrote(run_dir):
    import matplotlib.pyplot as plt

    from moescope import plots

    assert "<figcaption>fig_a</figcaption>" in report.write(run_dir)[1].read_text()  # a PNG without a caption
    fig, ax = plt.subplots()
    fig.suptitle("Blocking the attributed experts lowers MRR")
    plots.save_fig(fig, "fig_a", run_dir / "default" / "figures")
    page = report.write(run_dir)[1].read_text()
    assert "<figcaption>Blocking the attributed experts lowers MRR <small>(fig_a)</small></figcaption>" in page
    fig.set_label("Table 9: MRR falls as attributed experts are blocked.")  # a figure function's caption wins
    plots.save_fig(fig, "fig_a", run_dir / "default" / "figures")
    page = report.write(run_dir)[1].read_text()
    assert 'alt="fig_a"' in page  # the figure's name, as the browser test reads it
    assert "<figcaption>Table 9: MRR falls as attributed experts are blocked. <small>(fig_a)</small></figcaption>" \
        in page


def test_executed_notebooks_are_rendered_beside_the_report_and_linked(run_dir, tmp_path):
    """Each executed notebook of the run becomes <folder>/<notebook>.html, linked from report.html; nothing is
    written outside the run folder."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Table 9"),
                                         nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
                                             "execute_result", {"text/plain": "2"}, execution_count=1)])])
    nbformat.write(nb, run_dir / "default" / "40_blocking.ipynb")
    outside = {p for p in tmp_path.rglob("*") if not p.is_relative_to(run_dir)}
    page = report.write(run_dir)[1].read_text()
    rendered = run_dir / "default" / "40_blocking.html"
    assert rendered.is_file() and "Table 9" in rendered.read_text()
    assert '<a href="default/40_blocking.html">40_blocking</a>' in page
    assert not (run_dir / "default" / "62_forgetting.html").exists()  # no executed copy, no page
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(run_dir)} == outside
    assert not list(run_dir.rglob("*.tmp"))


def test_tallies_count_the_papers_reading_and_the_variants_have_their_own_table():
    base = {"paper": "p", "where": "w", "statement": "s", "paper_value": "1", "statistic": "x", "rule": "r",
            "note": "", "role": "claim", "notebook": "20_depth_profile", "folder": "default", "numerics": "pinned",
            "n": 3, "over": "seeds"}
    rows = pd.DataFrame([base | {"claim": "c1", "model": "m", "reading": "", "verdict": "reproduced", "kit": 0.5},
                         base | {"claim": "c1", "model": "m", "reading": "without layer 0", "verdict": "not reproduced",
                                 "kit": -0.2},
                         base | {"claim": "c2", "model": "m", "reading": "", "verdict": "reproduced", "kit": 0.1}])
    rows = rows.reindex(columns=[*report.COLUMNS, "notebook", "folder", "numerics"])
    t = report.counts(rows)
    assert int(t.claims.sum()) == 2 and int(t.rows.sum()) == 2  # the variant row is not a claim of its own
    varied = report.readings(rows)
    assert list(varied.columns) == ["claim", "model", "paper value", "paper", "without layer 0", "survives"]
    assert varied.iloc[0].tolist() == ["c1", "m", "1", "reproduced (0.5)", "not reproduced (-0.2)", "no"]
    assert "## p: claims under each reading" in report.markdown(rows, [], "r")
