"""Plot functions of the DES-MoE notebooks (each returns a matplotlib figure; save with ``plots.save_fig``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from ..plots import PALETTE

LABELS = {"fft": "full FT", "frozen_router": "frozen-router FT", "lora": "LoRA", "esft_gate": "ESFT-Gate",
          "esft_token": "ESFT-Token", "esft_gate_alr": "ESFT-Gate + ALR", "desmoe": "DES-MoE",
          "desmoe_no_alr": "DES-MoE w/o ALR", "desmoe_no_dges": "DES-MoE w/o DGES"}


def premise(table: pd.DataFrame, n_experts: int) -> plt.Figure:
    """Experts per layer each domain needs (token p=0.2, gate p=0.1), against the uniform-routing expectation."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["token_p0.2"], 0.4, label="token score, p=0.2")
    ax.bar(x + 0.2, table["gate_p0.1"], 0.4, label="gate score, p=0.1")
    ax.axhline(np.ceil(0.2 * n_experts), color=PALETTE["paper"], ls="--", label="uniform routing, p=0.2")
    ax.set_xticks(x, table.domain, rotation=30)
    ax.set_ylabel(f"experts per layer (of {n_experts})")
    ax.legend(fontsize=8)
    return fig


def pareto(points: pd.DataFrame, chosen: pd.DataFrame, base_general: float) -> plt.Figure:
    """Every checkpoint (faint) and each method's chosen checkpoints (bold): test domain score vs general score."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = dict(zip(LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    for method, g in points.groupby("method"):
        ax.scatter(g.test, g.general, s=8, alpha=0.25, color=colors.get(method))
    for method, g in chosen.groupby("method"):
        ax.scatter(g.test, g.general, s=40, color=colors.get(method), edgecolor="black", label=LABELS.get(method, method))
    ax.axhline(base_general, color=PALETTE["paper"], ls="--", label="base model")
    ax.set_xlabel("domain score (test exact match)")
    ax.set_ylabel("general score (held-out general set)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def forgetting_curve(curve: pd.DataFrame, base_general: float) -> plt.Figure:
    """General score against the number of jointly trained domains, with seed intervals."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, g in curve.groupby("method"):
        g = g.sort_values("n_domains")
        ax.errorbar(g.n_domains, g.general, yerr=[g.general - g.general_low, g.general_high - g.general],
                    marker="o", capsize=3, label=LABELS.get(method, method))
    ax.axhline(base_general, color=PALETTE["paper"], ls="--", label="base model")
    ax.set_xlabel("number of domains N (joint fine-tuning)")
    ax.set_ylabel("general score")
    ax.legend(fontsize=8)
    return fig


def convergence(history: pd.DataFrame, goal: float) -> plt.Figure:
    """Validation domain score against steps (one line per seed) and the target level."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    colors = dict(zip(LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    for (method, seed), g in history.groupby(["method", "seed"]):
        ax.plot(g.step, g.val, color=colors.get(method), alpha=0.8,
                label=LABELS.get(method, method) if seed == history.seed.min() else None)
    ax.axhline(goal, color=PALETTE["paper"], ls="--", label="target")
    ax.set_xlabel("step")
    ax.set_ylabel("validation domain score")
    ax.legend(fontsize=8)
    return fig


def affinity(maps: dict) -> plt.Figure:
    """DGES affinity A[domain, layer x expert] at 0.2T, 0.7T and T."""
    names = maps["domains"]
    keys = [k for k in ("t1", "t2", "T") if k in maps]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        a = maps[key]
        ax.imshow(a.reshape(len(names), -1), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("layer x expert")
        ax.set_title(f"affinity at {key}")
    return fig


def sequential(frame: pd.DataFrame, seed: int) -> plt.Figure:
    """Test score of every domain (and general) after each stage of sequential adaptation, per method."""
    methods = sorted(frame.method.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), sharey=True)
    for ax, method in zip(np.atleast_1d(axes), methods):
        g = frame[(frame.method == method) & (frame.seed == seed)].pivot(index="stage", columns="domain", values="acc")
        g.plot(ax=ax, marker="o", title=LABELS.get(method, method))
        ax.set_ylabel("exact match")
    return fig
