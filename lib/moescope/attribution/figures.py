"""One figure per finding of the attribution paper (each returns a matplotlib Figure; save with plots.save_fig)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from ..plots import PALETTE, integer_ticks, legend_outside
from . import claims, paper
from .ablation import NEITHER, Ablation
from .blocking import Blocking
from .coordination import Coordination
from .depth import DepthProfile
from .efficiency import Efficiency
from .neurons import NeuronRoles


def _colors(moe: Sequence[bool]) -> list[str]:
    return [PALETTE["moe"] if m else PALETTE["dense"] for m in moe]


def _design(models: pd.Series) -> pd.Series:
    """A model's design: its name without the seed suffix ``-s<seed>``."""
    return models.str.replace(r"-s\d+$", "", regex=True)


def efficiency(eff: Efficiency) -> plt.Figure:
    """Per-layer efficiency (FFN gain / L) per design, the seeds of a design as their mean (bar), lowest to highest
    seed (line) and one dot per seed, beside the paper's Table 1."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    t, ref = eff.table.assign(design=lambda f: _design(f.model)), paper.TABLE1
    designs = list(dict.fromkeys(t.design))
    for i, design in enumerate(designs):
        g = t[t.design == design]
        color = _colors([bool(g.moe.iloc[0])])[0]
        axes[0].bar(i, g.per_layer_efficiency.mean(), color=color, alpha=0.8)
        if len(g) > 1:
            axes[0].vlines(i, g.per_layer_efficiency.min(), g.per_layer_efficiency.max(), color="black", lw=1)
        axes[0].scatter(np.full(len(g), i), g.per_layer_efficiency, s=12, color="black", zorder=3)
    seeds = t.groupby("design").size()
    axes[0].set_xticks(range(len(designs)), [f"{d}\n({seeds[d]} seed{'s' if seeds[d] > 1 else ''})" for d in designs])
    axes[0].set(ylabel="FFN gain / L (nats per layer)", title="kit: mean of the seeds, dots = seeds")
    axes[1].bar(ref.model, ref.per_layer_efficiency, color=_colors(ref.moe), alpha=0.8)
    axes[1].set(ylabel="FFN gain / L (nats per layer)", title="paper (Table 1)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.legend(handles=[Patch(color=PALETTE["moe"], alpha=0.8, label="MoE"),
                        Patch(color=PALETTE["dense"], alpha=0.8, label="dense")],
               fontsize=8, loc="outside right upper", frameon=False)
    fig.set_label("Per-layer efficiency (FFN gain / L) of each kit design, MoE and dense, seeds as their mean with "
                  "one dot per seed, beside the paper's Table 1.")
    return fig


def depth_profile(dp: DepthProfile) -> plt.Figure:
    """Mean FFN gain by relative depth per design (the seeds of a design, ``<name>-s<seed>``, drawn as their mean
    with a band from the lowest to the highest seed), with the paper's stage boundaries dotted and the span of its
    Table 1 peak gain positions shaded; the legend beside the axes."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    prof = dp.profile.assign(design=_design(dp.profile.model))
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
    peaks = paper.TABLE1.peak_position
    ax.axvspan(peaks.min(), peaks.max(), color=PALETTE["paper"], alpha=0.12, lw=0,
               label=f"paper: peak gain position {peaks.min():.3f}-{peaks.max():.3f} (Table 1)")
    ax.set(xlabel="relative depth (l+1)/L", ylabel="mean FFN gain (nats)",
           title="FFN gain by depth (dotted: the paper's stage boundaries; band: lowest to highest seed)")
    ax.title.set_fontsize(9)
    legend_outside(ax)
    fig.set_label("Mean FFN gain by relative depth per design (seeds as mean and band), with the paper's stage "
                  "boundaries and Table 1 peak positions.")
    return fig


def recovered_share(abl: Ablation) -> pd.Series:
    """Per Table 2 configuration of one model, the share of the way from 'neither' (the floor) to the default its MRR
    recovers, (MRR - MRR_neither) / (MRR_default - MRR_neither): the quantity the verdict table decides on."""
    mrr = abl.table.set_index("config").mrr
    floor, top = mrr[NEITHER], mrr[abl.table.config[abl.table.default].iloc[0]]
    return (mrr - floor) / (top - floor)


def ablation(results: Sequence[Ablation]) -> plt.Figure:
    """The share of MRR each Table 2 configuration recovers (:func:`recovered_share`; the seeds' mean, whiskers
    from the lowest to the highest seed, one dot per seed) beside the paper's (MRR / MRR of the default; the paper
    has no 'neither' row)."""
    shares = pd.concat([recovered_share(r) for r in results], axis=1)
    t = results[0].table
    mean, low, high = shares.mean(axis=1)[t.config], shares.min(axis=1)[t.config], shares.max(axis=1)[t.config]
    ref = {c.replace(" (default)", ""): claims.table2_paper_recovered(c) for c in paper.TABLE2.config}
    fig, ax = plt.subplots(figsize=(8.5, 3.4), layout="constrained")
    x = np.arange(len(t))
    colors = [PALETTE["shared"] if s else PALETTE["routed"] for s in t.shared]
    ax.bar(x - 0.2, mean.values, 0.4, color=colors, yerr=[mean - low, high - mean], capsize=3,
           error_kw={"lw": 0.8})
    for i, config in enumerate(t.config):
        ax.plot(np.full(shares.shape[1], i - 0.2), shares.loc[config], ".", color="black", ms=3)
    ax.bar(x + 0.2, [ref.get(c, np.nan) for c in t.config], 0.4, color=PALETTE["paper"])
    ax.set_xticks(x, t.config, rotation=30, ha="right")
    seeds = len(results)
    ax.set(ylabel="share of MRR recovered\n(MRR - neither) / (default - neither)",
           title=f"shared / routed ablation: {results[0].facts['model']} ({seeds} seed{'s' if seeds > 1 else ''})")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(handles=[Patch(color=PALETTE["shared"], label="kit, with the shared expert"),
                       Patch(color=PALETTE["routed"], label="kit, without it (routed only, neither)"),
                       Patch(color=PALETTE["paper"], label="paper (Table 2; no 'neither' row)")],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.set_label("Table 2: the share of MRR each shared/routed configuration recovers between 'neither' and the "
                  "default, kit seeds beside the paper.")
    return fig


def blocking(results: Sequence[Blocking]) -> plt.Figure:
    """MRR against the number of blocked pairs (re-routed; k = 0: nothing blocked): attributed (solid), the
    routing-frequency ranking (dotted) and matched random (dashed, mean of the draws), per task, with the paper's Table 5 MRR at k = 0, 1, 5, 10 (crosses) for the paper model of the same
    kind (shared expert or not) where the task is in Table 5."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 2, 3.3), squeeze=False, layout="constrained")
    ref = paper.TABLE5.set_index(["model", "task"])
    for ax, b in zip(axes[0], results):
        t = b.table()
        t = t[t.method == "reroute"]
        model = paper.TABLE5_MODEL[bool(b.facts.get("shared_expert"))]
        for i, (task, g) in enumerate(t.groupby("task", sort=False)):
            color = f"C{i}"
            start = b.facts["task_mrr"][task]
            for sel, ls in (("attributed", "-"), ("frequency", ":"), ("random", "--")):
                s = g[g.selection == sel]
                ax.plot([0, *s.k], [start, *s.mrr], ls, marker="o", color=color,
                        label=task if sel == "attributed" else None)
            if (model, task) in ref.index:
                r = ref.loc[(model, task)]
                ax.plot([0, 1, 5, 10], [r.orig, r.block1, r.block5, r.block10], "x", color=color, ms=6)
        ax.plot([], [], "k-", label="attributed pairs")
        ax.plot([], [], "k:", label="most-routed pairs")
        ax.plot([], [], "k--", label="matched random pairs")
        ax.plot([], [], "kx", label=f"paper ({model}, Table 5)")
        ax.set(xlabel="(layer, expert) pairs blocked (re-routed)", ylabel="MRR", title=b.facts["model"], ylim=(0, 1.05))
        integer_ticks(ax)
    legend_outside(axes[0][-1])
    fig.set_label("Table 5: MRR as attributed (layer, expert) pairs are blocked, against the most-routed pairs and "
                  "matched random pairs (test templates), with the paper's values.")
    return fig


def coordination(co: Coordination, within: pd.DataFrame) -> plt.Figure:
    """Within-layer head-expert r with its interval, and MRR under each intervention."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    if len(within):
        axes[0].errorbar(within.layer, within.r, yerr=[within.r - within.low, within.high - within.r], fmt="o",
                         color=PALETTE["moe"], capsize=3)
    axes[0].axhline(paper.CLAIMS["head_expert_r"], color=PALETTE["paper"], ls="--", lw=0.8, label="paper r")
    axes[0].axhline(0, color="black", lw=0.5)
    axes[0].set(xlabel="MoE layer", ylabel="r (head gain, expert gain)", title="within-layer correlation")
    integer_ticks(axes[0])
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    inter = co.interventions()
    axes[1].bar(inter.condition, inter.mrr, color=PALETTE["moe"])
    axes[1].set(ylabel="MRR", title="inhibit key heads, restore routing, force experts")
    axes[1].tick_params(axis="x", rotation=20)
    for label in axes[1].get_xticklabels():
        label.set_ha("right")
    fig.set_label("Head-expert coordination: within-layer correlation of head and expert gains, and MRR under head "
                  "inhibition and routing interventions.")
    return fig


def neuron_roles(nr: NeuronRoles, top: int) -> plt.Figure:
    """Where the per-prompt top neurons are (by kind), and the shared share of the expert gain per stage."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    counts = nr.layer_counts.pivot(index="layer", columns="kind", values="count").fillna(0)
    bottom = 0
    for kind in counts.columns:
        axes[0].bar(counts.index, counts[kind], bottom=bottom, label=kind, color=PALETTE[kind])
        bottom = bottom + counts[kind]
    axes[0].set(xlabel="layer", ylabel=f"neurons in per-prompt top {top}", title="where the top neurons are")
    integer_ticks(axes[0])
    legend_outside(axes[0])
    heat = nr.contributions.pivot(index="family", columns="stage", values="shared_share")
    heat = heat.reindex(columns=[s for s in ("early", "middle", "late") if s in heat.columns])
    im = axes[1].imshow(heat.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes[1].set_xticks(range(len(heat.columns)), heat.columns)
    axes[1].set_yticks(range(len(heat)), [f.split(" (")[0] for f in heat.index])
    axes[1].set_title("shared share of the positive expert gain")
    fig.colorbar(im, ax=axes[1], label="shared share (0-1)")
    fig.set_label("Basic-refinement neurons: where the per-prompt top neurons sit by kind, and the shared expert's "
                  "share of the expert gain per stage.")
    return fig
