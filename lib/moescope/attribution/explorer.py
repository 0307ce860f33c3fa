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
    row = tasks.facts([relation], templates=template).iloc[index]
    return row, prompt_views(lm, row.prompt, row.object, top)


SHARED = "S"


def _expert_label(expert: int) -> str:
    """``S`` for the shared expert or dense FFN (expert -1 in the tables), else the expert's index."""
    return SHARED if expert < 0 else str(expert)


def readable(v: dict[str, pd.DataFrame], tokenizer) -> dict[str, pd.DataFrame]:
    """The views as a reader sees them: the target token decoded (no tokenizer space marker such as ``Ġ``), the
    expert -1 written ``S`` (shared expert / dense FFN, as in the figure), the one-prompt ``sample_id`` dropped."""
    out = {}
    for name, table in v.items():
        t = table.drop(columns=["sample_id"], errors="ignore")
        if "expert" in t:
            t = t.assign(expert=t.expert.map(_expert_label))
        if "target" in t:
            t = t.assign(target=[tokenizer.convert_tokens_to_string([tok]).strip() for tok in t.target])
        out[name] = t
    return out


def draw(row: pd.Series, v: dict[str, pd.DataFrame]) -> plt.Figure:
    """Layer gains, the head-gain heat map and the expert-gain heat map (layer x expert, ``S`` = shared expert or
    dense FFN) of one prompt, in nats of log-probability increase."""
    from matplotlib.ticker import MaxNLocator

    s = v["samples"].iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1.1, 1, 1.3]}, layout="constrained")
    lay = v["layers"]
    axes[0].bar(lay.layer - 0.2, lay.attn_gain, 0.4, label="attention", color=PALETTE["dense"])
    axes[0].bar(lay.layer + 0.2, lay.ffn_gain, 0.4, label="FFN / MoE", color=PALETTE["moe"])
    axes[0].set(xlabel="layer", ylabel="LPI (nats)", title=f"{row.prompt!r} -> {row.object} (rank {s['rank']})")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    heat = v["heads"].pivot(index="layer", columns="head", values="gain")
    m = abs(heat.values).max() or 1.0
    im = axes[1].imshow(heat.values, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto",
                        extent=(-0.5, heat.shape[1] - 0.5, heat.index.max() + 0.5, heat.index.min() - 0.5))
    axes[1].set(xlabel="head", ylabel="layer", title="head gains")
    fig.colorbar(im, ax=axes[1], label="LPI (nats)")
    ex = v["experts"]
    columns = sorted(set(ex.expert), key=lambda e: (e < 0, e))
    grid = ex.pivot_table(index="layer", columns="expert", values="gain", aggfunc="sum").reindex(
        index=range(int(lay.layer.min()), int(lay.layer.max()) + 1), columns=columns)
    m = float(abs(grid).max().max()) or 1.0
    im = axes[2].imshow(grid.values, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
    axes[2].set_xticks(range(len(columns)), [_expert_label(e) for e in columns], fontsize=7)
    axes[2].set_yticks(range(len(grid.index)), [str(i) for i in grid.index], fontsize=7)
    axes[2].set(xlabel=f"expert ({SHARED} = shared expert / dense FFN; blank: not routed)", ylabel="layer",
                title="expert gains")
    fig.colorbar(im, ax=axes[2], label="LPI (nats)")
    for axis in (axes[1].xaxis, axes[1].yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    fig.set_label(f"Explorer: layer, head and expert LPI gains of {row.prompt!r} -> {row.object}.")
    return fig


def _png(fig: plt.Figure) -> bytes:
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    plt.close(fig)
    return png.getvalue()


def show(lm: LoadedModel, relation: str, index: int, top: int = 10) -> dict[str, pd.DataFrame]:
    """Display the drawing (as a PNG, the same under every matplotlib backend) and the top neurons of one prompt."""
    from IPython.display import Image, display

    row, v = views(lm, relation, index, top)
    display(Image(_png(draw(row, v))))
    display(readable(v, lm.tokenizer)["neurons"].round(3))
    return v


def prompt_options(relation: str, template: int = 0) -> list[tuple[str, int]]:
    """(``prompt -> object``, index) for every fact of ``relation`` on held-out template ``template`` (the
    prompts :func:`views` indexes), the prompt dropdown's options."""
    facts = tasks.facts([relation], templates=template)
    return [(f"{p} -> {o}", i) for i, (p, o) in enumerate(zip(facts.prompt, facts.object))]


def controls(model: str, relations: Sequence[str], relation: str, sample: int = 0, device: str = "cpu",
             dtype: str | None = None, lm: LoadedModel | None = None):
    """Dropdowns for model (the given one and the saved organisms), relation and prompt (shown as text) that redraw
    the views on change, with the default selection (``lm``, loaded if not given) drawn in place from the start;
    None without a live front end. Nothing is displayed while the cell runs: the first view is put into the
    output area as data (``Output.append_display_data``), so no client has to stand in for an Output widget."""
    if not has_frontend():
        return None
    import ipywidgets as widgets
    from IPython.display import Image, clear_output

    cache: dict[str, LoadedModel] = {model: lm or tasks.loaded(model, device, dtype)}
    wide = widgets.Layout(width="auto")
    model_w = widgets.Dropdown(options=list(dict.fromkeys([model, *available_organisms()])), value=model,
                               description="model", layout=wide)
    relation_w = widgets.Dropdown(options=list(relations), value=relation, description="relation", layout=wide)
    index_w = widgets.Dropdown(options=prompt_options(relation), value=sample, description="prompt",
                               layout=widgets.Layout(width="95%"))
    out = widgets.Output()
    row, v = views(cache[model], relation, sample)
    out.append_display_data(Image(_png(draw(row, v))))
    out.append_display_data(readable(v, cache[model].tokenizer)["neurons"].round(3))

    def redraw(_change) -> None:
        if model_w.value not in cache:
            cache[model_w.value] = tasks.loaded(model_w.value, device, dtype)
        with out:
            clear_output(wait=True)
            show(cache[model_w.value], relation_w.value, index_w.value)

    def new_relation(change) -> None:
        index_w.unobserve(redraw, names="value")
        index_w.options, index_w.value = prompt_options(change["new"]), 0
        index_w.observe(redraw, names="value")
        redraw(change)

    model_w.observe(redraw, names="value")
    relation_w.observe(new_relation, names="value")
    index_w.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([model_w, relation_w]), index_w, out])
