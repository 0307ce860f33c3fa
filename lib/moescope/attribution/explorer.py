"""The explorer of notebook 59: every attribution level for one prompt, drawn as one static figure plus the top
neurons, with controls (model, relation, prompt) only when a live front end can show them.

Headless (papermill, nbval, nbconvert) nothing but the static view is produced. The controls never draw while
the cell that builds them runs: they redraw on a change only, so no client has to stand in for an Output widget
during execution (see :mod:`moescope.frontend`).
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from .. import data
from ..frontend import has_frontend
from ..models import LoadedModel, load_model
from ..plots import PALETTE
from .lpi import attribute


class Explorer:
    """Loaded models (each loaded once) and the attribution views of one selected fact."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", top: int = 10):
        self.device, self.dtype, self.top = device, dtype, top
        self._models: dict[str, LoadedModel] = {}

    def model(self, name: str) -> LoadedModel:
        if name not in self._models:
            self._models[name] = load_model(name, self.device, self.dtype)
        return self._models[name]

    def views(self, model: str, relation: str, index: int) -> tuple[pd.Series, dict[str, pd.DataFrame]]:
        """The fact (relation, sample ``index``, template 0) and its tables: samples, layers, heads, experts and
        the ``top`` neurons."""
        fact = data.facts_frame([data.load_relation(relation)]).iloc[index]
        lm = self.model(model)
        attr = attribute(lm.model, lm.tokenizer, [fact.prompt], [fact.object], neurons=True, top_neurons=self.top,
                         progress=False)
        return fact, attr.tables()

    def show(self, model: str, relation: str, index: int) -> tuple[plt.Figure, dict[str, pd.DataFrame]]:
        """Draw and display the views of one fact (figure, then the top neurons); returns them."""
        from IPython.display import Image, display

        fact, views = self.views(model, relation, index)
        fig = figure(fact, views)
        png = io.BytesIO()
        fig.savefig(png, format="png", bbox_inches="tight")  # shown the same under every matplotlib backend
        display(Image(png.getvalue()))
        plt.close(fig)
        display(views["neurons"].round(3))
        return fig, views

    def controls(self, models: Sequence[str], relations: Sequence[str], model: str, relation: str, index: int):
        """Dropdowns for model and relation and a prompt slider that redraw the views on change; None without a
        live front end."""
        if not has_frontend():
            return None
        import ipywidgets as widgets
        from IPython.display import clear_output

        model_w = widgets.Dropdown(options=list(models), value=model, description="model")
        relation_w = widgets.Dropdown(options=list(relations), value=relation, description="relation")
        index_w = widgets.IntSlider(value=index, min=0, max=len(data.load_relation(relation)) - 1, description="prompt")
        out = widgets.Output()

        def redraw(_change) -> None:
            index_w.max = len(data.load_relation(relation_w.value)) - 1
            with out:
                clear_output(wait=True)
                self.show(model_w.value, relation_w.value, index_w.value)

        for w in (model_w, relation_w, index_w):
            w.observe(redraw, names="value")
        note = widgets.HTML("Change a control to redraw; the default selection is drawn below.")
        return widgets.VBox([widgets.HBox([model_w, relation_w, index_w]), note, out])


def figure(fact: pd.Series, views: dict[str, pd.DataFrame]) -> plt.Figure:
    """Layer gains (attention vs FFN/MoE), the head-gain heat map and each selected expert's gain, for one fact."""
    sample = views["samples"].iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    lay = views["layers"]
    axes[0].bar(lay.layer - 0.2, lay.attn_gain, 0.4, label="attention", color=PALETTE["dense"])
    axes[0].bar(lay.layer + 0.2, lay.ffn_gain, 0.4, label="FFN / MoE", color=PALETTE["moe"])
    axes[0].set(xlabel="layer", ylabel="LPI (nats)", title=f"{fact.prompt!r} -> {fact.object} (rank {sample['rank']})")
    axes[0].legend()
    heat = views["heads"].pivot(index="layer", columns="head", values="gain")
    bound = abs(heat.values).max()
    im = axes[1].imshow(heat.values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    axes[1].set(xlabel="head", ylabel="layer", title="head gains")
    fig.colorbar(im, ax=axes[1])
    ex = views["experts"]
    labels = ex.layer.astype(str) + ":" + ex.expert.map(lambda e: "S" if e < 0 else str(e))
    axes[2].bar(labels, ex.gain, color=[PALETTE["shared"] if e < 0 else PALETTE["routed"] for e in ex.expert])
    axes[2].set(xlabel="layer:expert (S = shared / dense FFN)", title="expert gains")
    axes[2].tick_params(axis="x", rotation=90)
    return fig
