"""The explorer: every level of LPI attribution for one prompt, drawn, and a widget to pick model, relation, prompt.

All scores are log-probability increases of the gold object's first token, log p(w | r + delta) - log p(w | r),
read with the final norm's scale frozen (see :mod:`moescope.attribution.lpi`).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

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


def widget(model: str, relations: Sequence[str], relation: str, sample: int = 0, device: str = "cpu",
           dtype: str | None = None):
    """An interactive explorer (ipywidgets): model (the given one and the saved organisms), relation, prompt."""
    import ipywidgets as widgets
    from IPython.display import display

    cache: dict[str, LoadedModel] = {}

    def show(model: str, relation: str, index: int) -> None:
        if model not in cache:
            cache[model] = tasks.loaded(model, device, dtype)
        row, v = views(cache[model], relation, index)
        draw(row, v)
        plt.show()
        display(v["neurons"].round(3))

    choices = list(dict.fromkeys([model, *available_organisms()]))
    model_w = widgets.Dropdown(options=choices, value=model, description="model")
    relation_w = widgets.Dropdown(options=list(relations), value=relation, description="relation")
    sample_w = widgets.IntSlider(value=sample, min=0, max=len(tasks.facts([relation])) - 1, description="prompt")

    def sync(change) -> None:
        sample_w.max = len(tasks.facts([relation_w.value])) - 1

    relation_w.observe(sync, names="value")
    return widgets.interactive(show, model=model_w, relation=relation_w, index=sample_w)
