"""Plot functions of the DES-MoE notebooks (each returns a matplotlib figure; save with ``plots.save_fig``).

Every figure draws seeds as a mean with a band (lowest to highest seed) or an interval, keeps its legend off the
data, labels its axes with units, and draws the paper's value beside the kit's where the paper gives one (on its
own axes: the papers score real benchmarks on a 0-100 scale, the kit exact match as a share).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from ..plots import PALETTE, integer_ticks, legend_outside
from . import paper
from .claims import METHODS, NAMES

#: One colour per method, shared by every DES-MoE figure.
COLORS = dict(zip(METHODS, plt.get_cmap("tab10").colors))


def _label(method: str) -> str:
    return NAMES.get(method, method)


def _color(method: str) -> str:
    return COLORS.get(method, PALETTE["paper"])


def premise(table: pd.DataFrame, n_experts: int) -> plt.Figure:
    """Share of the routed experts per layer each domain needs (ESFT token score to p = 0.2, gate score to p = 0.1),
    against uniform routing (ceil(0.2 E) / E) and the ESFT paper's shares (its experts per layer / 64; the shaded
    span is the 5-15% it reports for most tasks)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["token_share"], 0.4, color=PALETTE["moe"], label="kit: token score, p = 0.2")
    ax.bar(x + 0.2, table["gate_share"], 0.4, color=PALETTE["routed"], label="kit: gate score, p = 0.1")
    ax.axhline(np.ceil(0.2 * n_experts) / n_experts, color="black", ls="--", lw=1, label="uniform routing, p = 0.2")
    low, high = paper.ESFT_SHARE_RANGE
    ax.axhspan(low, high, color=PALETTE["paper"], alpha=0.15, lw=0, label="ESFT paper: 5-15% for most tasks")
    ref = [paper.ESFT_EXPERTS_PER_LAYER.get(d, np.nan) / 64 for d in table.domain]
    ax.plot(x - 0.2, ref, "x", color=PALETTE["paper"], ms=8, mew=2, label="ESFT paper: token score, p = 0.2")
    ax.set_xticks(x, table.domain, rotation=30)
    ax.set_ylabel(f"share of the {n_experts} routed experts per layer")
    ax.set_ylim(0, max(0.3, float(np.nanmax(table[["token_share", "gate_share"]].to_numpy())) * 1.15))
    legend_outside(ax)
    return fig


def pareto(points: pd.DataFrame, chosen: pd.DataFrame, base_general: float) -> plt.Figure:
    """Left: every checkpoint at N_max (faint) and each method's chosen checkpoints (one dot per seed and order,
    bold), test domain score against general score. Right: the paper's mixed-domain rows (Table 1 downstream
    average against Table 2 general average, 0-100), the vanilla model dashed in both."""
    fig, (ax, ref) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for method, g in points.groupby("method"):
        ax.scatter(g.test, g.general, s=8, alpha=0.25, color=_color(method))
    for method, g in chosen.groupby("method"):
        ax.scatter(g.test, g.general, s=40, color=_color(method), edgecolor="black", label=_label(method))
    ax.axhline(base_general, color=PALETTE["paper"], ls="--", label="base model")
    ax.set(xlabel="domain score (test exact match, share)", ylabel="general score (held-out general set, share)",
           title="kit (faint: every checkpoint; bold: chosen)")
    for method in ("fft", "lora", "esft_gate", "desmoe"):
        ref.scatter(paper.TABLE1_DOWNSTREAM[method], paper.TABLE2_GENERAL[method], s=60, marker="s",
                    color=_color(method), edgecolor="black")
        ref.annotate(_label(method), (paper.TABLE1_DOWNSTREAM[method], paper.TABLE2_GENERAL[method]),
                     textcoords="offset points", xytext=(6, 4), fontsize=8)
    ref.scatter(paper.TABLE1_DOWNSTREAM["esft_token"], paper.TABLE2_GENERAL["esft_token"], s=60, marker="s",
                color=_color("esft_token"), edgecolor="black")
    ref.annotate(_label("esft_token"), (paper.TABLE1_DOWNSTREAM["esft_token"], paper.TABLE2_GENERAL["esft_token"]),
                 textcoords="offset points", xytext=(6, -10), fontsize=8)
    ref.axhline(paper.TABLE2_GENERAL["vanilla"], color=PALETTE["paper"], ls="--")
    ref.set(xlabel="downstream average (Table 1, 0-100)", ylabel="general average (Table 2, 0-100)",
            title="paper (mixed-domain rows; dashed: vanilla)")
    ref.margins(x=0.25, y=0.2)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5,
               frameon=False)
    fig.tight_layout()
    return fig


def forgetting_curve(curve: pd.DataFrame, base_general: float, drops: pd.DataFrame) -> plt.Figure:
    """Left: general score against the number of jointly trained domains N, each method's mean over seeds with its
    seed interval as a band (methods run at one N only: a dot with its interval). Right: the drop from the
    smallest to the largest N, kit (points of exact match, x 100, with its seed interval) beside the paper's
    Fig. 2 (points on its 0-100 general average)."""
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11.5, 4), gridspec_kw={"width_ratios": [3, 2]})
    for method, g in curve.groupby("method"):
        g = g.sort_values("n_domains")
        color = _color(method)
        if len(g) > 1:
            ax.plot(g.n_domains, g.general, marker="o", color=color, label=_label(method))
            ax.fill_between(g.n_domains, g.general_low, g.general_high, color=color, alpha=0.12, lw=0)
        else:
            ax.errorbar(g.n_domains, g.general, yerr=[g.general - g.general_low, g.general_high - g.general],
                        fmt="D", color=color, capsize=3, label=f"{_label(method)} (N = {int(g.n_domains.iloc[0])})")
    ax.axhline(base_general, color=PALETTE["paper"], ls="--", label="base model")
    ax.set(xlabel="number of domains N (joint fine-tuning)", ylabel="general score (share)",
           title="kit: mean over seeds, band = seed interval")
    ax.set_xticks(sorted(curve.n_domains.unique()))
    x = np.arange(len(drops))
    kit = 100 * drops["drop"]
    bars.bar(x - 0.2, kit, 0.4, color=[_color(m) for m in drops.method],
             yerr=[100 * (drops["drop"] - drops.low), 100 * (drops.high - drops["drop"])], capsize=3)
    bars.bar(x + 0.2, drops.paper, 0.4, color=PALETTE["paper"])
    bars.axhline(0, color="black", lw=0.8)
    bars.set_xticks(x, [_label(m) for m in drops.method], rotation=20)
    lo, hi = int(curve.n_domains.min()), int(curve.n_domains.max())
    bars.set(ylabel=f"general drop, N = {lo} to {hi} (points)", title="drop: kit (colour) vs paper Fig. 2 (grey)")
    legend_outside(ax)
    fig.tight_layout()
    return fig


def convergence(history: pd.DataFrame, goal: float, conv: pd.DataFrame) -> plt.Figure:
    """Left: validation domain score against training steps at N_max, each method's mean over seeds with a band
    from the lowest to the highest seed, and the target level. Right: training time to reach the target relative to
    full FT (mean of the seeds' ratios, bar from the lowest to the highest seed; '>=' where a seed never reached it
    and is censored at its last step) beside the paper's Fig. 3 wall-clock minutes relative to full FT."""
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11.5, 4), gridspec_kw={"width_ratios": [3, 2]})
    for method, g in history.groupby("method"):
        by_step = g.groupby("step").val
        mean, low, high = by_step.mean(), by_step.min(), by_step.max()
        ax.plot(mean.index, mean.values, color=_color(method), label=_label(method))
        ax.fill_between(mean.index, low.values, high.values, color=_color(method), alpha=0.12, lw=0)
    ax.axhline(goal, color="black", ls="--", lw=1, label="target level")
    ax.set(xlabel="training step", ylabel="validation domain score (share)", title="kit: mean over seeds, band = seeds")
    legend_outside(ax)
    fft = conv[conv.method == "fft"].set_index("seed").seconds
    keys = {kit: key for key, kit in paper.FIG3_KIT.items() if kit in set(conv.method)}
    methods = list(keys)
    x = np.arange(len(methods))
    for i, method in enumerate(methods):
        g = conv[conv.method == method].set_index("seed")
        ratio = (g.seconds / fft).dropna()
        bars.bar(i - 0.2, ratio.mean(), 0.4, color=_color(method),
                 yerr=[[ratio.mean() - ratio.min()], [ratio.max() - ratio.mean()]], capsize=3)
        if not g.reached.all():
            bars.annotate(">=", (i - 0.2, ratio.max()), textcoords="offset points", xytext=(0, 4), ha="center",
                          fontsize=8)
    minutes = paper.FIG3_MINUTES
    bars.bar(x + 0.2, [minutes[keys[m]] / minutes["fft"] for m in methods], 0.4, color=PALETTE["paper"])
    bars.axhline(1, color="black", lw=0.8)
    bars.set_xticks(x, [_label(m) for m in methods], rotation=20)
    bars.set(ylabel="time to the target / full FT's", title="kit seconds (colour) vs paper Fig. 3 minutes (grey)")
    fig.tight_layout()
    return fig


SNAPSHOTS = {"t1": "after Stage I (0.2T)", "t2": "after Stage II (0.7T)", "T": "at the end (T)"}


def affinity(maps: dict) -> plt.Figure:
    """DGES affinity A[domain, (layer, expert)] at 0.2T, 0.7T and T, one colour scale for the three panels; the
    MoE layers are separated by white lines and labelled at their centre."""
    names = maps["domains"]
    keys = [k for k in SNAPSHOTS if k in maps]
    layers, experts = maps[keys[0]].shape[1:]
    vmax = max(float(maps[k].max()) for k in keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys) + 1, 3.2), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        image = ax.imshow(maps[key].reshape(len(names), -1), aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                          interpolation="nearest")
        for b in range(1, layers):
            ax.axvline(b * experts - 0.5, color="white", lw=1.5)
        ax.set_xticks([(i + 0.5) * experts - 0.5 for i in range(layers)], [f"MoE layer {i + 1}" for i in range(layers)])
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        ax.set(xlabel=f"routed expert ({experts} per layer)", title=SNAPSHOTS[key])
    fig.colorbar(image, ax=list(axes[0]), label="DGES affinity A (EMA of routing mass)", fraction=0.03, pad=0.02)
    return fig


def sequential(frame: pd.DataFrame) -> plt.Figure:
    """Test score of every domain (and the general score, black) after each stage of sequential adaptation, per
    method: mean over seeds with a band from the lowest to the highest seed; a domain's line starts at the stage
    that trained it."""
    methods = sorted(frame.method.unique())
    order = frame[frame.domain == frame.trained].sort_values("stage").drop_duplicates("domain").domain.tolist()
    colors = dict(zip(order, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods) + 1.8, 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        g = frame[frame.method == method].groupby(["domain", "stage"]).acc
        mean, low, high = g.mean(), g.min(), g.max()
        for domain in order + ["general"]:
            if domain not in mean.index.get_level_values(0):
                continue
            m = mean.loc[domain]
            color = "black" if domain == "general" else colors[domain]
            ax.plot(m.index, m.values, marker="o", ms=4, color=color, lw=2 if domain == "general" else 1.2)
            ax.fill_between(m.index, low.loc[domain].values, high.loc[domain].values, color=color, alpha=0.12, lw=0)
        ax.set(title=f"{_label(method)} ({frame[frame.method == method].seed.nunique()} seeds)", xlabel="stage")
        integer_ticks(ax)
    axes[0][0].set_ylabel("test exact match (share)")
    handles = [Line2D([], [], color="black", lw=2, label="general")] + \
              [Line2D([], [], color=colors[d], marker="o", ms=4, label=f"{d} (stage {i + 1})") for i, d in enumerate(order)]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def readings(curve: pd.DataFrame, table: pd.DataFrame, base_general: float) -> plt.Figure:
    """DES-MoE under each reading of its phase I (:data:`.protocol.DESMOE_READINGS`) beside full FT. Left: the
    general score against N, mean over seeds with the seed interval as a band. Right: at N_max, the domain gain
    (test - base test) against the general score, one point per reading (means over seeds)."""
    fig, (ax, right) = plt.subplots(1, 2, figsize=(11.5, 4), gridspec_kw={"width_ratios": [3, 2]})
    methods = ["fft", *table.method]
    shades = dict(zip(table.method, plt.get_cmap("plasma")(np.linspace(0.0, 0.8, len(table)))))
    color = lambda m: _color("fft") if m == "fft" else shades[m]  # noqa: E731
    for method in methods:
        g = curve[curve.method == method].sort_values("n_domains")
        if len(g):
            ax.plot(g.n_domains, g.general, marker="o", color=color(method), label=_label(method),
                    lw=2.2 if method == "desmoe" else 1.4)
            ax.fill_between(g.n_domains, g.general_low, g.general_high, color=color(method), alpha=0.10, lw=0)
    ax.axhline(base_general, color=PALETTE["paper"], ls="--", label="base model")
    ax.set(xlabel="number of domains N (joint fine-tuning)", ylabel="general score (share)",
           title="kit: mean over seeds, band = seed interval")
    ax.set_xticks(sorted(curve.n_domains.unique()))
    legend_outside(ax)
    for row in table.itertuples():
        right.scatter(row.learned, row.general, s=60, color=shades[row.method], edgecolor="black")
    right.axhline(base_general, color=PALETTE["paper"], ls="--")
    right.set(xlabel="domain gain at N_max (test - base test, share)", ylabel="general score at N_max (share)",
              title="each reading at N_max (colours as left)")
    right.margins(x=0.2, y=0.2)
    fig.tight_layout()
    return fig


ROUTING_TITLES = {"accuracy": "assignment accuracy\n(cross-fitted)", "purity": "purity\n(top-1 expert)",
                  "nmi": "NMI(domain; top-1 expert)\n(higher: apart)",
                  "jaccard": "Jaccard of domain expert sets\n(lower: apart)"}


def routing(table: pd.DataFrame) -> plt.Figure:
    """How the routing of the test tokens separates the domains at N_max (:func:`.findings.routing_table`), one
    panel per metric: each method's value (bar, mean over seeds), the shuffled-label null (black tick at its mean,
    thin line up to its 97.5% quantile) and the hidden-state null (open diamond: k-means of the routers' inputs)."""
    metrics = list(dict.fromkeys(table.metric))
    methods = list(dict.fromkeys(table.method))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1.5, 3.6), squeeze=False)
    x = np.arange(len(methods))
    for ax, metric in zip(axes[0], metrics):
        g = table[table.metric == metric].set_index("method").loc[methods]
        ax.bar(x, g.routing, 0.6, color=[_color(m) for m in methods])
        ax.hlines(g.shuffled, x - 0.3, x + 0.3, color="black", lw=2)
        ax.vlines(x, g.shuffled, g.shuffled_high, color="black", lw=1)
        ax.plot(x, g.hidden, "D", mfc="white", mec="black", ms=6)
        ax.set_xticks(x, [_label(m) for m in methods], rotation=35, ha="right", fontsize=8)
        top = float(np.nanmax(g[["routing", "shuffled_high", "hidden"]].to_numpy()))
        ax.set(title=ROUTING_TITLES.get(metric, metric), ylim=(0, min(1.05, 1.15 * top + 0.02)))
    axes[0][0].set_ylabel("score on the test tokens (0-1)")
    handles = [Line2D([], [], color="black", lw=2, label="shuffled domain labels (mean, to 97.5%)"),
               Line2D([], [], marker="D", ls="", mfc="white", mec="black", label="hidden-state k-means")]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
