"""Tables that read well both in JupyterLab and as plain text (nbval compares the text).

:class:`Table` is a DataFrame whose HTML has text cells that wrap between words, left-aligned, with the
``verdict`` column in bold on its outcome's colour (:data:`OUTCOME_COLOURS`; every outcome as prominent as the others),
and whose text is ``to_string(index=False)``: stable, with no index and no truncation. Derived frames (a selection,
``round``) are plain DataFrames again. The HTML is built here, not by pandas' Styler, whose element ids are random.
"""
from __future__ import annotations

import html

import pandas as pd

from .verdicts import OUTCOMES, kind

#: background of a verdict cell per outcome, in the order of verdicts.OUTCOMES (the report uses the same colours)
OUTCOME_COLOURS = dict(zip(OUTCOMES, ("#cdeccd", "#f6caca", "#f8e7b0", "#dcdcdc")))
#: the column shown in bold on its outcome's colour
VERDICT = "verdict"
TABLE_STYLE = "border-collapse:collapse;table-layout:auto;font-size:12px;width:auto"
CELL_STYLE = ("text-align:left;vertical-align:top;white-space:normal;word-break:normal;overflow-wrap:normal;"
              "padding:2px 6px;border:1px solid #ccc;max-width:36em")


class Table(pd.DataFrame):
    """A DataFrame displayed as a readable table (see the module's docstring)."""

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def __repr__(self) -> str:
        return self.to_string(index=False)

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="{CELL_STYLE}">{html.escape(str(c))}</th>' for c in self.columns)
        rows = []
        for values in self.itertuples(index=False):
            cells = []
            for column, value in zip(self.columns, values):
                text = "" if value is None or value != value else str(value)
                style = CELL_STYLE
                if column == VERDICT:
                    style += f";font-weight:bold;background:{OUTCOME_COLOURS.get(kind(text), 'transparent')}"
                cells.append(f'<td style="{style}">{html.escape(text)}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return f'<table style="{TABLE_STYLE}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def table(frame: pd.DataFrame) -> Table:
    """``frame`` as a :class:`Table` (for a notebook's last expression, or ``display(...)``)."""
    return Table(frame)
