"""The explorer of notebook 59: every level of LPI attribution for one prompt, drawn, with controls (model,
relation, prompt) only when a live front end can show them.

All scores are log-probability increases of the gold object's first token, log p(w | r + delta) - log p(w | r),
read with the final norm's scale frozen (see :mod:`moescope.attribution.lpi`). Headless (papermill, nbval,
nbconvert) only the static view is produced; the controls never draw while the cell that builds them runs, they
redraw on a change only, so no client has to stand in for an Output widget during execution
(see :mod:`moescope.frontend`).
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from ..frontend import has_frontend
from ..models import LoadedModel, available_organisms
from ..plots import PALETTE
from .lpi import attribute
from . import tasks


def prompt_views(lm: LoadedModel, prompt: str, obj: str, top: int = 10) -> dict[str, pd.DataFrame]:
    """Every level of LPI attribution for one prompt: samples, layers, heads, experts and the ``top`` neurons."""
    attr = attribute(lm.model, lm.tokenizer, [prompt], [obj], neurons=True, top_neurons=top, progress=False)
    return attr.tables()


def views(lm: LoadedModel, relation: str, index: int, top: int = 10,
          template: int = 0) -> tuple[pd.Series, dict[str, pd.DataFrame]]:
    """The ``index``-th prompt of ``relation`` (with ``template``) and its :func:`prompt_views`."""
    row = tasks.facts([relation], template=template).iloc[index]
    return row, prompt_views(lm, row.prompt, row.object, top)


def draw(row: pd.Series, v: dict[str, pd.DataFrame]) -> plt.Figure:
    """Layer gains, the head-gain heat map and the expert gains of one prompt."""
    s = v["samples"].iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    lay = v["layers"]
    axes[0].bar(lay.layer - 0.2, lay.attn_gain, 0.4, label="attention", color=PALETTE["dense"])
    axes[0].bar(lay.layer + 0.2, lay.ffn_gain, 0.4, label="FFN / MoE", color=PALETTE["moe"])
    axes[0].set(xlabel="layer", ylabel="LPI (nats)", title=f"{row.prompt!r} -> {row.object} (rank {s['rank']})")
    axes[0].legend()
    heat = v["heads"].pivot(index="layer", columns="head", values="gain")
    m = abs(heat.values).max()
    im = axes[1].imshow(heat.values, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
    axes[1].set(xlabel="head", ylabel="layer", title="head gains")
    fig.colorbar(im, ax=axes[1])
    ex = v["experts"].assign(label=lambda d: d.layer.astype(str) + ":" + d.expert.map(lambda e: "S" if e < 0 else str(e)))
    axes[2].bar(ex.label, ex.gain, color=[PALETTE["shared"] if e < 0 else PALETTE["routed"] for e in ex.expert])
    axes[2].set(xlabel="layer:expert (S = shared / dense FFN)", title="expert gains")
    axes[2].tick_params(axis="x", rotation=90)
    return fig



def show(lm: LoadedModel, relation: str, index: int, top: int = 10) -> dict[str, pd.DataFrame]:
    """Display the drawing (as a PNG, the same under every matplotlib backend) and the top neurons of one prompt."""
    from IPython.display import Image, display

    row, v = views(lm, relation, index, top)
    fig = draw(row, v)
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue()))
    display(v["neurons"].round(3))
    return v


def controls(model: str, relations: Sequence[str], relation: str, sample: int = 0, device: str = "cpu",
             dtype: str | None = None):
    """Dropdowns for model (the given one and the saved organisms) and relation, and a prompt slider, that redraw
    the views on change; None without a live front end."""
    if not has_frontend():
        return None
    import ipywidgets as widgets
    from IPython.display import clear_output

    cache: dict[str, LoadedModel] = {}
    model_w = widgets.Dropdown(options=list(dict.fromkeys([model, *available_organisms()])), value=model,
                               description="model")
    relation_w = widgets.Dropdown(options=list(relations), value=relation, description="relation")
    index_w = widgets.IntSlider(value=sample, min=0, max=len(tasks.facts([relation])) - 1, description="prompt")
    out = widgets.Output()

    def redraw(_change) -> None:
        index_w.max = len(tasks.facts([relation_w.value])) - 1
        if model_w.value not in cache:
            cache[model_w.value] = tasks.loaded(model_w.value, device, dtype)
        with out:
            clear_output(wait=True)
            show(cache[model_w.value], relation_w.value, index_w.value)

    for w in (model_w, relation_w, index_w):
        w.observe(redraw, names="value")
    note = widgets.HTML("Change a control to redraw; the default selection is drawn below.")
    return widgets.VBox([widgets.HBox([model_w, relation_w, index_w]), note, out])
