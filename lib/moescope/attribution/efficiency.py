"""Table 1: HIT@10, MRR, FFN and attention gain, peak gain position and per-layer efficiency, per model, and the
MoE-over-dense efficiency advantage on depth-matched groups.

Per sample i of a model with L layers: FFN_i = sum_l FFNGain_{i,l}, Attn_i = sum_l AttnGain_{i,l},
peak_i = (argmax_l FFNGain_{i,l} + 1) / L. Per model: FFN gain = mean_i FFN_i, per-layer efficiency
eff = FFN gain / L, peak position = mean_i peak_i. The advantage readings of a group are those of
:func:`moescope.attribution.paper.efficiency_readings` on its models' eff. With layer 0 set apart
(:meth:`Efficiency.without_layer0`): FFN_i = sum_{l >= 1} FFNGain_{i,l} (Attn_i alike) and eff = mean_i FFN_i / (L - 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd

from ..models import LoadedModel
from . import paper, replicas, summaries, tasks


@dataclass
class Efficiency:
    """``samples``: model, sample_id, task, family, rank, ffn_gain, attn_gain, peak_position (one row per prompt
    and model; the same prompts for every model). ``table``: Table 1, one row per model. ``facts``: per model,
    :func:`moescope.attribution.tasks.model_facts` plus the prompts' baseline. ``groups``: depth-matched groups.
    ``first_layer``: 0, or 1 when layer 0 is set apart (the sums and the per-layer divisor start at layer 1)."""

    samples: pd.DataFrame
    table: pd.DataFrame
    facts: dict[str, dict]
    groups: list[replicas.Group] = field(default_factory=list)
    first_layer: int = 0

    def without_layer0(self) -> Efficiency:
        """The same prompts and groups, every advantage statistic over layers 1..L-1 (``samples`` must carry
        ``ffn_gain_layer0`` and ``attn_gain_layer0``, as :func:`model_samples` writes them)."""
        return replace(self, first_layer=1)

    def layers_counted(self, model: str) -> int:
        """The number of layers a per-layer statistic of ``model`` divides by: L, or L - 1 with layer 0 apart."""
        return self.facts[model]["layers"] - self.first_layer

    def _sums(self, gain: str) -> dict[str, np.ndarray]:
        out = {}
        for m, g in self.samples.groupby("model", sort=False):
            total = g[gain].to_numpy()
            out[m] = total - g[f"{gain}_layer0"].to_numpy() if self.first_layer else total
        return out

    @cached_property
    def ffn(self) -> dict[str, np.ndarray]:
        """FFN_i of each model's prompts, in prompt order (from layer ``first_layer`` on)."""
        return self._sums("ffn_gain")

    @cached_property
    def attn(self) -> dict[str, np.ndarray]:
        """Attn_i of each model's prompts, in prompt order (from layer ``first_layer`` on)."""
        return self._sums("attn_gain")


def model_samples(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt FFN/attention gain sums, peak position and rank of one model (layer-level LPI, no neurons)."""
    attr = tasks.attribution(lm, fr, neurons=False)
    sums = summaries.per_sample(attr.layers)
    out = attr.samples[["sample_id", "task", "family", "rank"]].merge(sums, on="sample_id")
    out.insert(0, "model", lm.name)
    return out


def table1(samples: pd.DataFrame, facts: dict[str, dict]) -> pd.DataFrame:
    """Table 1 from per-prompt sums: one row per model, pooled over its prompts."""
    rows = []
    for name, g in samples.groupby("model", sort=False):
        f = facts[name]
        rows.append({"model": name, "moe": f["moe"], "layers": f["layers"], "hit@10": float((g["rank"] <= 10).mean()),
                     "mrr": float((1 / g["rank"]).mean()), "ffn_gain": g.ffn_gain.mean(), "attn_gain": g.attn_gain.mean(),
                     "peak_position": g.peak_position.mean(), "per_layer_efficiency": g.ffn_gain.mean() / f["layers"],
                     "n": len(g)})
    return pd.DataFrame(rows)


def measure(models: Sequence[str | LoadedModel], relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
            device: str = "cpu", dtype: str | None = None, templates: tasks.Templates = tasks.HELD_OUT) -> Efficiency:
    """Table 1 on ``models`` (the same prompts for each), with the depth-matched groups among them."""
    samples, facts = tasks.for_models(models, tasks.facts(relations, n_samples, templates), model_samples, device, dtype)
    table = table1(samples, facts)
    return Efficiency(samples, table, facts, replicas.depth_matched(table))


def group_readings(eff: Efficiency, group: replicas.Group, idx: np.ndarray | None = None,
                   gain: str = "ffn") -> dict[str, float]:
    """Every reading of the efficiency advantage inside one group, eff = mean_{i in idx} FFN_i / L (L - 1 with layer
    0 apart; all prompts
    when ``idx`` is None; the paired readings need a one-to-one pair); ``gain='attn'``: the same readings of the
    attention gain per layer, mean_i Attn_i / L."""
    take = slice(None) if idx is None else idx
    per_prompt = eff.ffn if gain == "ffn" else eff.attn
    values = {m: per_prompt[m][take].mean(-1) / eff.layers_counted(m) for m in group.models}
    return paper.efficiency_readings(values, group.moe, group.dense, group.pair)
