"""Depth profile ("mid-activation, late-amplification"): where in depth the FFN gain is written.

For layers l of a model with L layers and samples i, with g_{i,l} = FFNGain_{i,l}:

    share(S) = sum_i sum_{l in S} g_{i,l} / sum_i sum_l g_{i,l}      (= the share of sum_l mean_i g_{i,l})

with two stage readings: the paper's Qwen1.5-MoE boundaries carried over as relative depth ((l+1)/L <= 13/24
early, <= 19/24 middle, else late) and equal thirds. Peak position = mean_i (argmax_l g_{i,l} + 1) / L.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import arch
from ..capture import capture
from ..models import LoadedModel
from ..prompts import context_length, encode
from . import paper, summaries, tasks

READINGS = {"paper 13-19-24": "paper_stage", "thirds": "stage"}


@dataclass
class DepthProfile:
    """``layers``: model, sample_id, task, family, rank, layer, depth ((l+1)/L), attn_gain, ffn_gain, stage, paper_stage,
    topk_mass (NaN in a layer without routed experts).
    ``profile``: mean gains per model and layer. ``stages``: model, reading, early, middle, late shares.
    ``facts``: per model, the model's and the prompts' facts."""

    layers: pd.DataFrame
    profile: pd.DataFrame
    stages: pd.DataFrame
    facts: dict[str, dict]


def topk_mass(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    """sample_id, layer, topk_mass of every MoE layer at each prompt's last token (empty for a dense model)."""
    moe = [p for p in arch.layers(lm.model) if p.is_moe]
    if not moe:
        return pd.DataFrame(columns=["sample_id", "layer", "topk_mass"])
    enc = encode(lm.tokenizer, list(fr.prompt), list(fr.object), context_length(lm.model))
    trace = capture(lm.model, enc.input_ids.to(lm.device), enc.attention_mask.to(lm.device))
    frames = []
    for p in moe:
        probs = trace.layers[p.index].router_probs.float()
        k = trace.layers[p.index].topk_index.shape[1]
        mass = torch.topk(probs, k, dim=-1).values.sum(-1).cpu().numpy()
        frames.append(pd.DataFrame({"sample_id": np.arange(len(mass)), "layer": p.index, "topk_mass": mass}))
    return pd.concat(frames, ignore_index=True)


def model_layers(lm: LoadedModel, fr: pd.DataFrame, lens: str = "final") -> pd.DataFrame:
    """Per-prompt, per-layer gains of one model through ``lens`` (:data:`moescope.attribution.lpi.LENSES`) with
    each layer's relative depth and stage (both readings) and its routing concentration (:func:`topk_mass`)."""
    attr = tasks.attribution(lm, fr, neurons=False, lens=lens)
    n = int(attr.layers.layer.max() + 1)
    out = tasks.with_samples(attr.layers, attr.samples, ("task", "family", "rank"))
    out = out.merge(topk_mass(lm, fr), on=["sample_id", "layer"], how="left")
    out["depth"] = (out.layer + 1) / n
    out["stage"] = [summaries.stage_of(l, n) for l in out.layer]
    out["paper_stage"] = [paper.stage_of(d) for d in out.depth]
    out.insert(0, "model", lm.name)
    return out


def shares(layers: pd.DataFrame, column: str = "paper_stage") -> dict[str, float]:
    """Share of the summed FFN gain in each stage of ``column`` (NaN when the total is 0)."""
    total = layers.ffn_gain.sum()
    by_stage = layers.groupby(column).ffn_gain.sum()
    return {s: float(by_stage.get(s, 0.0) / total) if total else np.nan for s in summaries.STAGES}


def stage_table(layers: pd.DataFrame) -> pd.DataFrame:
    """model, reading, early, middle, late for both stage readings."""
    return pd.DataFrame([{"model": m, "reading": reading, **shares(g, col)}
                         for m, g in layers.groupby("model", sort=False) for reading, col in READINGS.items()])


def profile(models: Sequence[str | LoadedModel], relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
            device: str = "cpu", dtype: str | None = None, templates: tasks.Templates = tasks.HELD_OUT,
            lens: str = "final") -> DepthProfile:
    """Per-layer gains of every model on the same prompts (through ``lens``), their mean profile and stage shares."""
    layers, facts = tasks.for_models(models, tasks.facts(relations, n_samples, templates),
                                     lambda lm, fr: model_layers(lm, fr, lens), device, dtype)
    prof = layers.groupby(["model", "layer", "depth", "stage", "paper_stage"], as_index=False, sort=False)[
        ["attn_gain", "ffn_gain"]].mean()
    return DepthProfile(layers, prof, stage_table(layers), facts)


def gain_matrix(layers: pd.DataFrame, model: str) -> np.ndarray:
    """g[i, l] = FFNGain of prompt i at layer l for one model (rows in prompt order)."""
    return layers[layers.model == model].pivot(index="sample_id", columns="layer", values="ffn_gain").to_numpy()
