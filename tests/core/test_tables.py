"""Verdict tables that read well in JupyterLab (HTML) and as stable text (moescope.tables, verdicts.show)."""
import re

import pandas as pd

from moescope import tables, verdicts as v

CLAIM = v.Claim("X.1", "attribution (ACL 2025)", "Table 9", "blocking lowers MRR", "0.43", "drop", v.above(0.0),
                preconditions=(v.minimum("layers", 8, "depth (layers)"),))


def _rows():
    return [v.decide(CLAIM, {"layers": 16}, v.Estimate(0.4, 0.3, 0.5), model="deep"),
            v.decide(CLAIM, {"layers": 16}, v.Estimate(-0.4, -0.5, -0.3), model="wrong"),
            v.decide(CLAIM, {"layers": 3}, v.Estimate(0.9), model="shallow")]


def test_show_is_a_table_whose_text_is_stable_and_whose_html_wraps_and_emphasises_the_verdict():
    t = v.show(_rows())
    assert isinstance(t, tables.Table) and list(t.columns) == ["claim", "model", "paper", "kit", "control", "verdict"]
    assert repr(t) == pd.DataFrame(t).to_string(index=False) and repr(t) == repr(v.show(_rows()))
    page = t._repr_html_()
    assert page == v.show(_rows())._repr_html_()  # no random ids: committed outputs stay the same
    assert "table-layout:auto" in page and page.count("white-space:normal") == 6 * 4  # header and 3 rows
    verdict_cells = re.findall(r'<td style="[^"]*font-weight:bold;background:(#\w+)">([^<]*)</td>', page)
    assert [c for c, _ in verdict_cells] == [tables.OUTCOME_COLOURS[k] for k in
                                             ("reproduced", "not reproduced", "not testable")]
    assert verdict_cells[2][1] == "not testable: depth (layers) is 3, needs at least 8"
    assert "opacity" not in page and "color:" not in page  # rows against the paper are as prominent as the others


def test_derived_frames_are_plain_and_html_escapes_text():
    t = tables.table(pd.DataFrame({"claim": ["a<b"], "verdict": ["reproduced"]}))
    assert type(t[["claim"]]) is pd.DataFrame and "a&lt;b" in t._repr_html_()


def test_notebooks_display_verdict_tables_instead_of_printing_them():
    """A verdict table printed with to_string loses the HTML display (JupyterLab wraps it mid-word)."""
    import nbformat

    from moescope import paths

    printed = [p.stem for p in sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb"))
               if re.search(r"(verdicts\.show|claims\.summary)\(.*\)\.to_string",
                            "\n".join(c.source for c in nbformat.read(p, as_version=4).cells))]
    assert not printed
