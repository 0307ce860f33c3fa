"""Basic (shared) vs refinement (routed): which neurons and experts carry the gain, by depth and task family.

Neuron level: per prompt the ``top`` neurons by Imp (every selected routed expert and the shared expert; expert
-1 is the shared expert, or a dense layer's FFN) are counted per layer, as the paper counts its top neurons.
Expert level, per prompt i and stage S (thirds of the depth): shared_i,S = sum_{l in S} ExpertGain_{i,l,-1},
routed_i,S = sum_{l in S} sum_j ExpertGain_{i,l,j}; the shared share of a stage is
sum_i max(shared_i,S, 0) / sum_i (max(shared_i,S, 0) + max(routed_i,S, 0)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..models import LoadedModel
from . import summaries, tasks


@dataclass
class NeuronRoles:
    """``layer_counts``: layer, kind, count, share of the per-prompt top neurons. ``top_neurons``: the most
    frequent top neurons per layer. ``gains``: per prompt (sample_id, task, family) and stage, shared and
    routed gain. ``contributions``: family, stage, mean gains and shared_share. ``facts``: model and prompts.
    ``by_prompt``: sample_id, layer, count of each prompt's top neurons in each layer (every layer, 0 included)."""

    layer_counts: pd.DataFrame
    top_neurons: pd.DataFrame
    gains: pd.DataFrame
    contributions: pd.DataFrame
    facts: dict
    by_prompt: pd.DataFrame = field(default_factory=pd.DataFrame)


def kind(expert: pd.Series) -> np.ndarray:
    """'shared' for expert -1 (the always-on MLP), else 'routed'."""
    return np.where(expert < 0, "shared", "routed")


def layer_counts(neurons: pd.DataFrame) -> pd.DataFrame:
    """How many of the per-prompt top neurons sit in each layer, by kind, and their share of all."""
    counts = neurons.assign(kind=kind(neurons.expert)).groupby(["layer", "kind"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / counts["count"].sum()
    return counts


def prompt_layer_counts(neurons: pd.DataFrame, n_prompts: int, n_layers: int) -> pd.DataFrame:
    """sample_id, layer, count: how many of each prompt's top neurons sit in each layer (0 where none does)."""
    full = pd.MultiIndex.from_product([range(n_prompts), range(n_layers)], names=["sample_id", "layer"])
    return neurons.groupby(["sample_id", "layer"]).size().reindex(full, fill_value=0).rename("count").reset_index()


def top_neurons(neurons: pd.DataFrame, per_layer: int) -> pd.DataFrame:
    """The ``per_layer`` neurons per layer that are most often among the prompts' top (ties: mean score)."""
    return (neurons.assign(kind=kind(neurons.expert))
            .groupby(["layer", "expert", "neuron", "kind"], as_index=False)
            .agg(mean_score=("score", "mean"), hits=("score", "size"))
            .sort_values(["layer", "hits", "mean_score"], ascending=[True, False, False])
            .groupby("layer").head(per_layer).reset_index(drop=True))


def stage_gains(experts: pd.DataFrame, samples: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per prompt and stage: shared and routed ExpertGain summed over the stage's layers (0 when absent)."""
    ex = experts.assign(kind=kind(experts.expert), stage=[summaries.stage_of(l, n_layers) for l in experts.layer])
    wide = ex.groupby(["sample_id", "stage", "kind"]).gain.sum().unstack("kind", fill_value=0.0)
    wide = wide.reindex(columns=["shared", "routed"], fill_value=0.0).reset_index()
    return wide.merge(samples[["sample_id", "task", "family"]], on="sample_id")


def shared_share(gains: pd.DataFrame) -> float:
    """sum max(shared, 0) / sum (max(shared, 0) + max(routed, 0)) over the rows (NaN when both are 0)."""
    s, r = gains.shared.clip(lower=0).sum(), gains.routed.clip(lower=0).sum()
    return float(s / (s + r)) if s + r > 0 else np.nan


def contributions(gains: pd.DataFrame) -> pd.DataFrame:
    """Per (family, stage): mean shared and routed gain and the shared share of the positive gain."""
    return pd.DataFrame([{"family": fam, "stage": stage, "shared_gain": g.shared.mean(), "routed_gain": g.routed.mean(),
                          "shared_share": shared_share(g)}
                         for (fam, stage), g in gains.groupby(["family", "stage"])])


def run(model: str | LoadedModel, relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None, top: int = 50,
        per_layer: int = 5, device: str = "cpu", dtype: str | None = None, templates: tasks.Templates = tasks.HELD_OUT) -> NeuronRoles:
    """Neuron counts and shared/routed contributions of one model."""
    lm = tasks.loaded(model, device, dtype)
    fr = tasks.facts(relations, n_samples, templates)
    attr = tasks.attribution(lm, fr, neurons=True, top_neurons=top)
    facts = tasks.model_facts(lm) | tasks.data_facts(attr.samples.assign(rr=1 / attr.samples["rank"]), fr)
    gains = stage_gains(attr.experts, attr.samples, facts["layers"])
    return NeuronRoles(layer_counts(attr.neurons), top_neurons(attr.neurons, per_layer), gains, contributions(gains),
                       facts, prompt_layer_counts(attr.neurons, len(fr), facts["layers"]))
