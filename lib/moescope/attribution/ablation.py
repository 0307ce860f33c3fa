"""Table 2: the shared expert as the basis, the routed experts as refiners (Qwen1.5-MoE in the paper).

An MoE block with a shared expert computes F(x) = sigma(w_s . x) S(x) + sum_{j in topk(x)} g_j(x) E_j(x). The
configurations re-score every prompt with parts of every MoE block removed:

    top-k routed only : S -> 0, the top-k routed experts (k = 1, 2)
    shared only       : every E_j -> 0
    shared + top-k    : the router picks k experts (k = 1, 2 and the model's own k, the default)
    neither           : S -> 0 and every E_j -> 0 (the control: what attention alone keeps)

The claims compare each configuration with the floor (neither) and the default on the same prompts.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import pandas as pd

from .. import arch
from ..interventions import drop_routed_experts, drop_shared_expert, set_top_k
from ..models import LoadedModel
from . import tasks

NEITHER = "neither (no MoE output)"
SHARED_ONLY = "shared only"


@dataclass(frozen=True)
class Config:
    """One ablation: keep the shared expert or not, and how many routed experts (0: none)."""

    name: str
    shared: bool
    top_k: int
    default: bool = False


@dataclass
class Ablation:
    """``ranks``: config, sample_id, task, rank, rr. ``table``: config, shared, top_k, default, hit@10, mrr, n.
    ``facts``: the model's and the prompts' facts (empty tables when the model has no shared expert)."""

    ranks: pd.DataFrame
    table: pd.DataFrame
    facts: dict


def configs(top_k: int, ks: Sequence[int] = (1, 2), routed_only_ks: Sequence[int] = (1, 2)) -> list[Config]:
    """The paper's configurations plus the 'neither' control, for a model routing to ``top_k`` experts."""
    out = [Config(f"top-{k} routed only", False, k) for k in routed_only_ks]
    out += [Config(SHARED_ONLY, True, 0), Config(NEITHER, False, 0)]
    out += [Config(f"shared + top-{k}", True, k, k == top_k) for k in sorted(set(ks) | {top_k})]
    return out


def ablated(model, config: Config) -> ExitStack:
    """A context (ExitStack) that applies ``config`` to every MoE layer."""
    stack = ExitStack()
    if not config.shared:
        stack.enter_context(drop_shared_expert(model))
    stack.enter_context(drop_routed_experts(model) if config.top_k == 0 else set_top_k(model, config.top_k))
    return stack


def score_configs(lm: LoadedModel, fr: pd.DataFrame, cfgs: Sequence[Config]) -> pd.DataFrame:
    """Per-prompt ranks under each configuration (one row per config and prompt)."""
    n_exp, frames = arch.num_experts(lm.model), []
    for cfg in cfgs:
        if cfg.top_k > n_exp:
            raise ValueError(f"top-{cfg.top_k} exceeds the {n_exp} routed experts of {lm.name}")
        with ablated(lm.model, cfg):
            sc = tasks.scores(lm, fr)
        frames.append(sc.assign(config=cfg.name, sample_id=range(len(sc))))
    return pd.concat(frames, ignore_index=True)


def summarize(ranks: pd.DataFrame, cfgs: Sequence[Config]) -> pd.DataFrame:
    """HIT@10 and MRR per configuration."""
    rows = []
    for cfg in cfgs:
        r = ranks[ranks.config == cfg.name]
        rows.append({"config": cfg.name, "shared": cfg.shared, "top_k": cfg.top_k, "default": cfg.default,
                     "hit@10": float((r["rank"] <= 10).mean()), "mrr": float(r.rr.mean()), "n": len(r)})
    return pd.DataFrame(rows)


def run(model: str | LoadedModel, relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
        ks: Sequence[int] = (1, 2), routed_only_ks: Sequence[int] = (1, 2), device: str = "cpu",
        dtype: str | None = None, templates: tasks.Templates = tasks.HELD_OUT) -> Ablation:
    """Table 2 and its control on one model; a model without a shared expert gets empty tables and its facts."""
    lm = tasks.loaded(model, device, dtype)
    fr = tasks.facts(relations, n_samples, templates)
    facts = tasks.facts_of(lm, fr)
    if not facts["shared_expert"]:
        return Ablation(pd.DataFrame(columns=["config", "sample_id", "task", "rank", "rr"]),
                        pd.DataFrame(columns=["config", "shared", "top_k", "default", "hit@10", "mrr", "n"]), facts)
    cfgs = configs(facts["top_k"], ks, routed_only_ks)
    ranks = score_configs(lm, fr, cfgs)
    return Ablation(ranks, summarize(ranks, cfgs), facts)
