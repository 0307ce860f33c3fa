"""The paper's tasks as prompts, and what every finding needs first: a loaded model, its prompts, their scores,
their attribution, and the facts about the model that decide whether a claim is testable.

Prompts (:func:`moescope.data.prompts_frame`): by default every fact of each relation on every held-out template;
a smaller sample is stratified by object; a study that selects components and then tests them selects on the
:data:`SELECTION` templates and tests on the :data:`TEST` templates of the same facts. Metrics are on the gold object's first token: HIT@10 = mean 1[rank <= 10], MRR = mean 1/rank;
the relation's prior is the MRR of ranking its objects by how many of its facts have them (:func:`prior_mrr`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import arch, data, metrics, routing
from ..models import LoadedModel, load_model
from . import paper
from .lpi import Attribution, attribute, relation_candidates

HELD_OUT, SELECTION, TEST, Templates = data.HELD_OUT, data.SELECTION, data.TEST, data.Templates

PAPER_TASK_OF = {stem: task for task, stem in data.PAPER_TASKS.items()}
DEFAULT_RELATIONS = tuple(data.PAPER_TASKS)
GEOGRAPHY, OBJECTS = data.TASK_FAMILY["country_capital"], data.TASK_FAMILY["fruit_inside_color"]


def loaded(model: str | LoadedModel, device: str = "cpu", dtype: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from a name (organism, local folder, hub id), or the one given."""
    return model if isinstance(model, LoadedModel) else load_model(model, device, dtype)


def facts(relations: Iterable[str | data.Relation] = DEFAULT_RELATIONS, n_samples: int | None = None,
          templates: data.Templates = data.HELD_OUT, seed: int = 0) -> pd.DataFrame:
    """:func:`moescope.data.prompts_frame` of ``relations`` (loaded by name where needed) with each prompt's
    task (the paper's name) and family."""
    rels = [r if isinstance(r, data.Relation) else data.load_relation(r) for r in relations]
    frame = data.prompts_frame(rels, n_samples, templates, seed)
    frame["task"] = frame["relation"].map(lambda s: PAPER_TASK_OF.get(s, s))
    frame["family"] = frame["task"].map(lambda t: data.TASK_FAMILY.get(t, "other"))
    return frame


def prior_mrr(fr: pd.DataFrame) -> float:
    """MRR of the relation's prior on the prompts ``fr``: within each relation, objects ranked by how many of its
    facts (all of the relation file's, not only those sampled) have them, ties sharing the worse rank; the MRR a
    model reaches by knowing only which objects are common. The floor a relation must beat to be known."""
    out = []
    for stem, g in fr.groupby("relation", sort=False):
        counts = pd.Series([s.object for s in data.load_relation(stem).samples]).value_counts()
        rank = {o: int((counts >= c).sum()) for o, c in counts.items()}
        out += [1.0 / rank[o] for o in g.object]
    return float(np.mean(out)) if out else float("nan")


def scores(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: relation, task, family, rank of the gold first token and its reciprocal (rr)."""
    out = metrics.score_prompts(lm.model, lm.tokenizer, list(fr.prompt), list(fr.object))
    return pd.DataFrame({"relation": fr.relation.values, "task": fr.task.values, "family": fr.family.values,
                         "rank": out["rank"].values, "rr": 1.0 / out["rank"].values})


def attribution(lm: LoadedModel, fr: pd.DataFrame, **kwargs) -> Attribution:
    """LPI attribution of every prompt of ``fr`` (samples gain relation, task and family columns); under the
    contrastive lens each prompt's gold is read against its relation's objects among ``fr``."""
    if kwargs.get("lens") == "contrastive" and "candidates" not in kwargs:
        kwargs["candidates"] = relation_candidates(fr)
    attr = attribute(lm.model, lm.tokenizer, list(fr.prompt), list(fr.object), progress=False, **kwargs)
    for col in ("relation", "task", "family"):
        attr.samples[col] = fr[col].values
    return attr


def with_samples(table: pd.DataFrame, samples: pd.DataFrame, cols=("relation", "task", "family")) -> pd.DataFrame:
    """``table`` (with sample_id) joined with the samples' relation, task and family."""
    return table.merge(samples[["sample_id", *cols]], on="sample_id", how="left")


def paper_models(lm: LoadedModel) -> tuple[str | None, str | None]:
    """(the paper model this checkpoint is, the paper model it mirrors): the first from its hub id or the path it
    was loaded from, the second from the ``mirrors`` field of an organism's card (None when absent)."""
    source = str(getattr(lm.model.config, "_name_or_path", "") or lm.name)
    card = Path(source) / "card.json"
    mirrors = json.loads(card.read_text()).get("mirrors") if card.is_file() else None
    return paper.paper_name(lm.name) or paper.paper_name(source), paper.paper_name(mirrors)


def model_facts(lm: LoadedModel) -> dict[str, Any]:
    """What the claims' preconditions read from a model: its name, depth, whether it routes tokens to experts,
    has a shared expert and a softmax router, its expert count, top-k, number of (layer, expert) pairs, and the
    paper model it is (``checkpoint``) or mirrors."""
    parts = arch.layers(lm.model)
    moe = [p for p in parts if p.is_moe]
    checkpoint, mirrors = paper_models(lm)
    out: dict[str, Any] = {"model": lm.name, "checkpoint": checkpoint, "mirrors": mirrors,
                           "layers": len(parts), "heads": arch.num_heads(lm.model),
                           "moe": bool(moe), "shared_expert": arch.has_shared_expert(lm.model),
                           "moe_layers": len(moe), "experts": 0, "top_k": 0, "pairs": 0, "softmax_router": False}
    if moe:
        out.update(experts=arch.num_experts(lm.model), top_k=arch.top_k(lm.model),
                   softmax_router=all(routing.family(p.router) == "softmax" for p in moe))
        out["pairs"] = out["experts"] * len(moe)
    return out


def data_facts(sc: pd.DataFrame, fr: pd.DataFrame | None = None) -> dict[str, Any]:
    """Facts about the prompts as scored: their number, the baseline MRR and HIT@10, the task families present,
    and (given the prompts ``fr``) the relations' prior MRR (:func:`prior_mrr`) and how far the baseline is
    above it (``beyond_prior``)."""
    out = {"n_prompts": len(sc), "baseline_mrr": float(sc.rr.mean()), "baseline_hit@10": float((sc["rank"] <= 10).mean()),
           "families": int(sc.family.nunique())}
    if fr is not None:
        out["prior_mrr"] = prior_mrr(fr)
        out["beyond_prior"] = out["baseline_mrr"] - out["prior_mrr"]
    return out


def facts_of(lm: LoadedModel, fr: pd.DataFrame) -> dict[str, Any]:
    """:func:`model_facts` plus :func:`data_facts` of the model's scores on ``fr``."""
    return model_facts(lm) | data_facts(scores(lm, fr), fr)


def for_models(models: Iterable[str | LoadedModel], fr: pd.DataFrame, study: Callable[[LoadedModel, pd.DataFrame],
               pd.DataFrame], device: str = "cpu", dtype: str | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``study(lm, fr)`` of every model on the same prompts, concatenated, and each model's :func:`facts_of`."""
    frames, facts = [], {}
    for m in models:
        lm = loaded(m, device, dtype)
        frames.append(study(lm, fr))
        facts[lm.name] = facts_of(lm, fr)
    return pd.concat(frames, ignore_index=True), facts
