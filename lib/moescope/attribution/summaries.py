"""Aggregates of attribution tables, as the attribution paper reports them.

For a relation with samples i and layers l = 0..L-1 (per-sample gains from :mod:`moescope.attribution`):

    FFN gain            = mean_i sum_l FFNGain_{i,l}          Attn gain = mean_i sum_l AttnGain_{i,l}
    per-layer efficiency = FFN gain / L
    peak gain position  = mean_i (argmax_l FFNGain_{i,l} + 1) / L     (relative depth, 1 = last layer)
    per sample          = sum_l FFNGain_{i,l}, sum_l AttnGain_{i,l}, (argmax_l FFNGain_{i,l} + 1) / L
    stage share         = sum_{l in stage} mean_i FFNGain_{i,l} / sum_l mean_i FFNGain_{i,l}
                          with early / middle / late = the first, second and last third of the layers
    expert ranking      = (layer, routed expert) pairs by sum_i ExpertGain_{i,l,j} (0 when not selected)

Every depth and efficiency statistic can be read with layer 0 set apart (:func:`layer_zero_apart`): the first
layer's FFN reads the raw embeddings, and under the frozen final-norm lens it can carry most of the FFN gain.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .lpi import Attribution

STAGES = ("early", "middle", "late")


def stage_of(layer: int, n_layers: int) -> str:
    """early / middle / late third of the depth (layer 0-indexed)."""
    return STAGES[min(2, 3 * layer // n_layers)]


def layer_profile(layers: pd.DataFrame) -> pd.DataFrame:
    """Mean attention and FFN gain per layer (and relative depth (l+1)/L)."""
    n = layers["layer"].max() + 1
    prof = layers.groupby("layer", as_index=False)[["attn_gain", "ffn_gain"]].mean()
    prof["depth"] = (prof["layer"] + 1) / n
    prof["stage"] = [stage_of(l, n) for l in prof["layer"]]
    return prof


def stage_shares(layers: pd.DataFrame) -> dict[str, float]:
    """Share of the summed mean FFN gain that falls in each third of the depth."""
    prof = layer_profile(layers)
    total = prof["ffn_gain"].sum()
    return {s: float(prof.loc[prof.stage == s, "ffn_gain"].sum() / total) if total else np.nan for s in STAGES}


def per_sample(layers: pd.DataFrame) -> pd.DataFrame:
    """Per sample: summed FFN and attention gain over the layers, the relative depth of the peak FFN layer, and the
    first layer's FFN and attention gain (``ffn_gain_layer0``, ``attn_gain_layer0``: what setting layer 0 apart
    removes)."""
    n = int(layers["layer"].max() + 1)
    grouped = layers.groupby("sample_id")
    out = grouped[["ffn_gain", "attn_gain"]].sum()
    out["peak_position"] = (layers.loc[grouped["ffn_gain"].idxmax()].set_index("sample_id")["layer"] + 1) / n
    first = layers[layers["layer"] == 0].set_index("sample_id")
    out["ffn_gain_layer0"], out["attn_gain_layer0"] = first["ffn_gain"], first["attn_gain"]
    return out.reset_index()


def efficiency(layers: pd.DataFrame) -> dict[str, float]:
    """FFN gain, attention gain, per-layer efficiency and peak gain position of one relation (or pooled)."""
    n = int(layers["layer"].max() + 1)
    sums = per_sample(layers)
    ffn = sums["ffn_gain"].mean()
    return {"layers": n, "ffn_gain": float(ffn), "attn_gain": float(sums["attn_gain"].mean()),
            "peak_position": float(sums["peak_position"].mean()), "per_layer_efficiency": float(ffn / n),
            **{f"share_{k}": v for k, v in stage_shares(layers).items()}}


def layer_zero_apart(layers: pd.DataFrame) -> pd.DataFrame:
    """:func:`efficiency` twice: over all layers, and over layers 1..L-1 only (per-layer efficiency divides by
    L - 1; peak position and stages keep each layer's place in the full depth, so without layer 0 'early' holds the
    rest of the first third). Both rows carry layer 0's mean FFN gain and its share of the summed mean FFN gain
    (over all layers).

    Columns: reading ('all layers' | 'without layer 0'), layers, ffn_gain, attn_gain, peak_position,
    per_layer_efficiency, share_early/middle/late, layer0_ffn_gain, layer0_share.
    """
    n = int(layers["layer"].max() + 1)
    prof = layer_profile(layers)
    l0 = float(prof.loc[prof.layer == 0, "ffn_gain"].sum())
    total = float(prof["ffn_gain"].sum())
    extra = {"layer0_ffn_gain": l0, "layer0_share": l0 / total if total else np.nan}
    rest = layers[layers["layer"] > 0]
    sums = per_sample(rest)
    ffn = float(rest.groupby("sample_id")["ffn_gain"].sum().mean())
    stages = rest.assign(stage=[stage_of(l, n) for l in rest["layer"]]).groupby("layer", as_index=False).agg(
        ffn_gain=("ffn_gain", "mean"), stage=("stage", "first"))
    rest_total = stages.ffn_gain.sum()
    attn = float(rest.groupby("sample_id")["attn_gain"].sum().mean())
    without = {"layers": n - 1, "ffn_gain": ffn, "attn_gain": attn,
               "peak_position": float(sums["peak_position"].mean()) if len(sums) else np.nan,
               "per_layer_efficiency": ffn / (n - 1) if n > 1 else np.nan,
               **{f"share_{s}": float(stages.loc[stages.stage == s, "ffn_gain"].sum() / rest_total) if rest_total
                  else np.nan for s in STAGES}}
    return pd.DataFrame([{"reading": "all layers", **efficiency(layers), **extra},
                         {"reading": "without layer 0", **without, **extra}])


def expert_ranking(experts: pd.DataFrame) -> pd.DataFrame:
    """Routed (layer, expert) pairs ranked by their summed gain over all samples (ties: layer, expert)."""
    routed = experts[experts["expert"] >= 0]
    ranked = routed.groupby(["layer", "expert"], as_index=False).agg(
        gain=("gain", "sum"), selected=("gain", "size"), mean_gate=("gate", "mean"))
    return ranked.sort_values(["gain", "layer", "expert"], ascending=[False, True, True], ignore_index=True)


def top_experts(experts: pd.DataFrame, k: int) -> dict[int, list[int]]:
    """The top-k ranked (layer, expert) pairs as {layer: [expert, ...]} (for blocking)."""
    out: dict[int, list[int]] = {}
    for row in expert_ranking(experts).head(k).itertuples():
        out.setdefault(int(row.layer), []).append(int(row.expert))
    return out


def per_relation(attr: Attribution, samples_relation: pd.Series) -> pd.DataFrame:
    """:func:`efficiency` for each relation; ``samples_relation`` maps sample_id -> relation name."""
    layers = attr.layers.assign(relation=attr.layers["sample_id"].map(samples_relation))
    return pd.DataFrame([{"relation": r, **efficiency(g)} for r, g in layers.groupby("relation", sort=False)])
