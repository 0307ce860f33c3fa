"""One figure style and one way to save figures (PNG + SVG under ``figures/``)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import paths  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False,
    "svg.hashsalt": "moescope", "svg.fonttype": "none",
}
#: Colours per model family, shared by every figure.
PALETTE = {"moe": "#1f77b4", "dense": "#ff7f0e", "shared": "#2ca02c", "routed": "#9467bd", "paper": "#7f7f7f"}


def use_style() -> None:
    """Apply the kit's matplotlib style."""
    plt.rcParams.update(STYLE)


def legend_outside(ax: plt.Axes, **kw) -> None:
    """The axes' legend to their right, off the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, **kw)


def integer_ticks(ax: plt.Axes) -> None:
    """Integer ticks on the x axis (layers, counts, stages), never 0.5 or -0.25."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def caption(fig: plt.Figure) -> str:
    """A figure's caption: its label (``fig.set_label(...)``, set by the figure functions), else its suptitle, else
    its axes' titles joined by '; ' ('' when it has none of them)."""
    return fig.get_label() or fig.get_suptitle() or "; ".join(t for t in (ax.get_title() for ax in fig.axes) if t)


def save_fig(fig: plt.Figure, name: str, folder: Path | str | None = None) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` and ``.svg`` (default folder: paths.FIGURES), each through a temporary
    file and a rename (an interrupted write leaves the previous file whole); returns the paths. Both files carry
    :func:`caption` as their ``Description``, which the report shows under the figure."""
    folder = Path(folder) if folder is not None else paths.FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{name}.{ext}" for ext in ("png", "svg")]
    text = caption(fig)
    for path in files:
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        try:
            fig.savefig(tmp, bbox_inches="tight", format=path.suffix[1:],
                        metadata={"Date": None, "Description": text} if path.suffix == ".svg" else
                        {"Software": None, "Description": text})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return files


use_style()
