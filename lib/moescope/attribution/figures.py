"""One figure per finding of the attribution paper (each returns a matplotlib Figure; save with plots.save_fig)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from ..plots import PALETTE
from . import paper
from .ablation import Ablation
from .blocking import Blocking
from .coordination import Coordination
from .depth import DepthProfile
from .efficiency import Efficiency
from .neurons import NeuronRoles


def _colors(moe: Sequence[bool]) -> list[str]:
    return [PALETTE["moe"] if m else PALETTE["dense"] for m in moe]


def efficiency(eff: Efficiency) -> plt.Figure:
    """Per-layer efficiency of each model beside the paper's Table 1."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    t, ref = eff.table, paper.TABLE1
    axes[0].bar(t.model, t.per_layer_efficiency, color=_colors(t.moe))
    axes[0].set(ylabel="FFN gain / L", title="kit (blue: MoE, orange: dense)")
    axes[1].bar(ref.model, ref.per_layer_efficiency, color=_colors(ref.moe))
    axes[1].set(ylabel="FFN gain / L", title="paper (Table 1)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    return fig


def depth_profile(dp: DepthProfile) -> plt.Figure:
    """Mean FFN gain by relative depth per design (the seeds of a design, ``<name>-s<seed>``, drawn as their mean
    with a band from the lowest to the highest seed), with the paper's stage boundaries dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    prof = dp.profile.assign(design=dp.profile.model.str.replace(r"-s\d+$", "", regex=True))
    for design, g in prof.groupby("design", sort=False):
        by = g.groupby("depth").ffn_gain
        mean, low, high = by.mean(), by.min(), by.max()
        seeds = g.model.nunique()
        color = PALETTE["shared"] if "qwen" in design else PALETTE["dense"] if "dense" in design else PALETTE["moe"]
        style = "--" if "l16" in design else "-"
        ax.plot(mean.index, mean.values, ls=style, marker="o", ms=3, color=color,
                label=f"{design} ({seeds} seed{'s' if seeds > 1 else ''})")
        if seeds > 1:
            ax.fill_between(mean.index, low.values, high.values, color=color, alpha=0.15, lw=0)
    for b in paper.STAGE_BOUNDS:
        ax.axvline(b, color=PALETTE["paper"], ls=":", lw=0.9)
    ax.set(xlabel="relative depth (l+1)/L", ylabel="mean FFN gain (nats)",
           title="FFN gain by depth (dotted: the paper's stage boundaries; band: lowest to highest seed)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def ablation(abl: Ablation) -> plt.Figure:
    """MRR of each Table 2 configuration beside the paper's (the 'neither' control has no paper value)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.3))
    t = abl.table
    ref = paper.TABLE2.assign(config=paper.TABLE2.config.str.replace(" (default)", "", regex=False)).set_index("config").mrr
    x = range(len(t))
    ax.bar([i - 0.2 for i in x], t.mrr, 0.4, label="kit", color=[PALETTE["shared"] if s else PALETTE["routed"] for s in t.shared])
    ax.bar([i + 0.2 for i in x], [ref.get(c, float("nan")) for c in t.config], 0.4, label="paper", color=PALETTE["paper"])
    ax.set_xticks(list(x), t.config, rotation=30, ha="right")
    ax.set(ylabel="MRR", title=f"shared / routed ablation: {abl.facts['model']}")
    ax.legend()
    return fig


def blocking(results: Sequence[Blocking]) -> plt.Figure:
    """MRR against the number of blocked pairs (re-routed): attributed (solid) and random (dashed), per task."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.3), squeeze=False)
    for ax, b in zip(axes[0], results):
        t = b.table()
        t = t[t.method == "reroute"]
        for i, (task, g) in enumerate(t.groupby("task", sort=False)):
            color = f"C{i}"
            for sel, ls in (("attributed", "-"), ("random", "--")):
                s = g[g.selection == sel]
                ax.plot(s.k, s.mrr, ls, marker="o", color=color, label=task if sel == "attributed" else None)
        ax.set(xlabel="(layer, expert) pairs blocked (re-routed)", ylabel="MRR", title=b.facts["model"], ylim=(0, 1.05))
    axes[0][0].legend(fontsize=7)
    return fig


def coordination(co: Coordination, within: pd.DataFrame) -> plt.Figure:
    """Within-layer head-expert r with its interval, and MRR under each intervention."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    if len(within):
        axes[0].errorbar(within.layer, within.r, yerr=[within.r - within.low, within.high - within.r], fmt="o",
                         color=PALETTE["moe"], capsize=3)
    axes[0].axhline(paper.CLAIMS["head_expert_r"], color=PALETTE["paper"], ls="--", lw=0.8, label="paper r")
    axes[0].axhline(0, color="black", lw=0.5)
    axes[0].set(xlabel="MoE layer", ylabel="r (head gain, expert gain)", title="within-layer correlation")
    axes[0].legend()
    inter = co.interventions()
    axes[1].bar(inter.condition, inter.mrr, color=PALETTE["moe"])
    axes[1].set(ylabel="MRR", title="inhibit key heads, restore routing, force experts")
    axes[1].tick_params(axis="x", rotation=20)
    for label in axes[1].get_xticklabels():
        label.set_ha("right")
    return fig


def neuron_roles(nr: NeuronRoles, top: int) -> plt.Figure:
    """Where the per-prompt top neurons are (by kind), and the shared share of the expert gain per stage."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    counts = nr.layer_counts.pivot(index="layer", columns="kind", values="count").fillna(0)
    bottom = 0
    for kind in counts.columns:
        axes[0].bar(counts.index, counts[kind], bottom=bottom, label=kind, color=PALETTE[kind])
        bottom = bottom + counts[kind]
    axes[0].set(xlabel="layer", ylabel=f"neurons in per-prompt top {top}", title="where the top neurons are")
    axes[0].legend()
    heat = nr.contributions.pivot(index="family", columns="stage", values="shared_share")
    heat = heat.reindex(columns=[s for s in ("early", "middle", "late") if s in heat.columns])
    im = axes[1].imshow(heat.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes[1].set_xticks(range(len(heat.columns)), heat.columns)
    axes[1].set_yticks(range(len(heat)), [f.split(" (")[0] for f in heat.index])
    axes[1].set_title("shared share of the positive expert gain")
    fig.colorbar(im, ax=axes[1])
    return fig
