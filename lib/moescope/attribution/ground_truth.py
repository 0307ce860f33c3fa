"""Attribution and blocking checked against a planted ground truth (notebook 45).

A planted organism's card says which experts were trained on which relation (:mod:`moescope.organisms.planted`).
The study lives in :mod:`moescope.attribution` (it uses paper 1's attribution); organisms stay one layer under both
papers.
For a model with such a card this module computes

- precision@k of LPI expert attribution: |top-k ranked (layer, expert) pairs ∩ planted| / k, where pairs are ranked
  by their gain summed over a relation's prompts (``summaries.expert_ranking``); the chance level of a random
  ranking is |planted| / (layers x experts);
- blocking effects: the MRR drop of every relation when a planted relation's experts are removed from routing,
  against a negative control that blocks the same number of random unplanted experts in the same layers
  (``CONTROL_DRAWS`` draws), and, for redundant plants, when each planted expert is blocked alone;
- verdict rows (:mod:`moescope.verdicts`) for four checks whose rules are fixed here, before anything runs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
import torch

from .. import arch, data, interventions, models, statistics, verdicts
from ..organisms import zoo
from . import tasks
from .blocking import all_pairs
from .lpi import attribute
from .summaries import expert_ranking

CONTROL_DRAWS = 10
BLOCKING_COLUMNS = ["blocked_for", "condition", "kind", "experts", "relation", "planted_relation", "mrr_before",
                    "mrr_after", "drop", "rr_before", "rr_after"]
PAPER = "planted ground truth"
Plant = dict[str, dict[int, tuple[int, ...]]]


def load_plant(name: str, relations: Sequence[str] | None = None) -> Plant:
    """{relation: {layer: planted experts}} from the card of ``name`` (organism or local folder); {} without one.

    With ``relations`` (stems or paper task names), every planted relation must be among them.
    """
    target, _ = models.resolve(name)
    card_file = Path(target) / "card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    plant = {relation: {int(layer): tuple(e) if isinstance(e, list) else (int(e),) for layer, e in layers.items()}
             for relation, layers in card.get("plant", {}).items()}
    stems = [data.PAPER_TASKS.get(r, r) for r in relations or plant]
    if missing := sorted(set(plant) - set(stems)):
        raise ValueError(f"{name} has plants for {missing}, which are not among the relations {list(relations)}")
    return plant


def planted_pairs(plant: Plant, relation: str) -> set[tuple[int, int]]:
    """The planted (layer, expert) pairs of ``relation``."""
    return {(layer, e) for layer, experts in plant.get(relation, {}).items() for e in experts}


def expert_gains(lm: models.LoadedModel, facts: pd.DataFrame, plant: Plant) -> pd.DataFrame:
    """ExpertGain of every selected routed expert on every prompt (attribution's experts table + relation); empty
    without a plant."""
    if not plant:
        return pd.DataFrame(columns=["sample_id", "layer", "expert", "gain", "gate", "relation"])
    attr = attribute(lm.model, lm.tokenizer, list(facts.prompt), list(facts.object), neurons=False, progress=False)
    experts = attr.experts[attr.experts["expert"] >= 0]
    return experts.assign(relation=facts.relation.values[experts.sample_id.values])


def precision_at_k(ranked: pd.DataFrame, planted: set[tuple[int, int]], k: int) -> float:
    """|top-k pairs of ``ranked`` ∩ planted| / k."""
    top = set(zip(ranked.layer.head(k), ranked.expert.head(k)))
    return len(top & planted) / k


def precision_table(gains: pd.DataFrame, plant: Plant, ks: Sequence[int], n_pairs: int) -> pd.DataFrame:
    """Per planted relation and k (ks and k = |planted|): precision@k, recall@k and the chance precision."""
    rows: list[dict] = []
    for relation in plant:
        planted, ranked = planted_pairs(plant, relation), expert_ranking(gains[gains.relation == relation])
        for k in sorted({*ks, len(planted)}):
            p = precision_at_k(ranked, planted, k)
            rows.append({"relation": relation, "k": k, "planted": len(planted), "precision": p,
                         "recall": p * k / len(planted), "chance_precision": len(planted) / n_pairs})
    return pd.DataFrame(rows, columns=["relation", "k", "planted", "precision", "recall", "chance_precision"])


def _bootstrap_precision(gains: pd.DataFrame, planted: set[tuple[int, int]], reps: int, seed: int) -> verdicts.Estimate:
    """precision@|planted| with a bootstrap interval over the relation's prompts (re-ranking each resample)."""
    wide = gains.pivot_table(index="sample_id", columns=["layer", "expert"], values="gain", aggfunc="sum",
                             fill_value=0.0)
    pairs, matrix, k = list(wide.columns), wide.to_numpy(), len(planted)
    is_planted = np.array([p in planted for p in pairs])

    def statistic(idx: np.ndarray) -> float:
        total = matrix[idx].sum(0)
        order = sorted(range(len(pairs)), key=lambda j: (-total[j], pairs[j]))  # ties as expert_ranking breaks them
        return float(is_planted[order[:k]].sum() / k)

    return verdicts.bootstrap(statistic, len(matrix), reps, seed)


def random_experts(plant: Plant, relation: str, n_experts: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """As many random experts as ``relation`` has planted in each of its layers, none of them planted by any relation."""
    taken = {pair for r in plant for pair in planted_pairs(plant, r)}
    out = {}
    for layer, experts in plant[relation].items():
        free = [e for e in range(n_experts) if (layer, e) not in taken]
        out[layer] = sorted(int(e) for e in rng.choice(free, size=len(experts), replace=False))
    return out


def blocking_conditions(plant: Plant, relation: str, n_experts: int, draws: int, seed: int) -> list[tuple[str, dict]]:
    """(condition, {layer: experts}) to block for ``relation``: its plant, each of its experts alone (redundant
    plants), and ``draws`` layer-matched random draws."""
    experts = {layer: list(e) for layer, e in plant[relation].items()}
    out = [("planted", experts)]
    singles = [(layer, e) for layer, es in experts.items() for e in es]
    if len(singles) > 1:
        out += [(f"single L{layer}E{e}", {layer: [e]}) for layer, e in singles]
    rng = np.random.default_rng([seed, sum(map(ord, relation))])
    out += [(f"random {i}", random_experts(plant, relation, n_experts, rng)) for i in range(draws)]
    return out


def blocking_table(lm: models.LoadedModel, facts: pd.DataFrame, plant: Plant, draws: int = CONTROL_DRAWS,
                   seed: int = 0) -> pd.DataFrame:
    """Per planted relation, condition and scored relation: MRR before and after blocking, and the drop.

    Also holds the per-prompt reciprocal ranks ('rr_before', 'rr_after' as lists) for intervals.
    """
    rows = []
    if not plant:
        return pd.DataFrame(rows, columns=BLOCKING_COLUMNS)
    n_experts = arch.num_experts(lm.model)
    before = tasks.scores(lm, facts)["rr"].to_numpy()
    for relation in plant:
        for condition, blocked in blocking_conditions(plant, relation, n_experts, draws, seed):
            with interventions.block_experts(lm.model, blocked):
                after = tasks.scores(lm, facts)["rr"].to_numpy()
            for scored, idx in facts.groupby("relation", sort=False).indices.items():
                rows.append({"blocked_for": relation, "condition": condition,
                             "kind": condition.split()[0], "experts": json.dumps(blocked), "relation": scored,
                             "planted_relation": scored == relation, "mrr_before": before[idx].mean(),
                             "mrr_after": after[idx].mean(), "drop": before[idx].mean() - after[idx].mean(),
                             "rr_before": before[idx].tolist(), "rr_after": after[idx].tolist()})
    return pd.DataFrame(rows, columns=BLOCKING_COLUMNS)


def _drop_estimate(row: pd.Series, reps: int, seed: int) -> verdicts.Estimate:
    b, a = np.asarray(row.rr_before), np.asarray(row.rr_after)
    return verdicts.bootstrap(lambda i: float(b[i].mean() - a[i].mean()), len(b), reps, seed)


def _spread(values: Sequence[float], over: str) -> verdicts.Estimate:
    """Mean of ``values`` with the central 95% of the values (:func:`moescope.statistics.percentiles`) as interval."""
    v = np.asarray(values, dtype=float)
    return verdicts.Estimate(float(v.mean()), *statistics.percentiles(v), len(v), over)


#: What the checks' preconditions read (one definition, checked against every precondition at import)
Facts = TypedDict("Facts", {"planted": bool, "baseline_mrr": float, "planted_experts": int}, total=False)

#: The precondition of every ground-truth check (here and in :mod:`.methods`): the model has a planted answer
PLANTED = verdicts.flag("planted", "a planted ground truth (card 'plant')")

CLAIMS = {
    "precision": verdicts.Claim(
        "planted: attribution ranks the plant first", PAPER, "attribution.ground_truth",
        "LPI expert attribution ranks a relation's planted experts above every other (layer, expert) pair",
        "ground truth", "precision@|planted| of the expert ranking (bootstrap over prompts)",
        verdicts.at_least(0.5), "random ranking: |planted| / (layers x experts)",
        (PLANTED,), role="self-check"),
    "blocking": verdicts.Claim(
        "planted: blocking the plant hurts its relation", PAPER, "attribution.ground_truth",
        "blocking a relation's planted experts lowers its MRR more than blocking as many random experts of the same "
        "layers", "ground truth", "MRR drop of the relation (bootstrap over prompts)", verdicts.exceeds_control(0.0),
        f"the same number of random unplanted experts in the same layers ({CONTROL_DRAWS} draws)",
        (PLANTED,
         verdicts.minimum("baseline_mrr", 0.3, "the relation's baseline MRR").gate()), role="self-check"),
    "specific": verdicts.Claim(
        "planted: blocking the plant spares unplanted relations", PAPER, "attribution.ground_truth",
        "blocking a relation's planted experts leaves the unplanted relations' MRR nearly unchanged",
        "ground truth", "mean MRR drop over the unplanted relations' prompts (bootstrap over prompts)",
        verdicts.at_most(0.05), "", (PLANTED,),
        role="self-check"),
    "redundant": verdicts.Claim(
        "planted: a redundant plant survives one expert", PAPER, "attribution.ground_truth",
        "each expert of a redundant plant carries the relation alone: blocking one costs less than blocking all",
        "ground truth", "MRR drop when blocking all planted experts (bootstrap over prompts)",
        verdicts.exceeds_control(0.0), "MRR drop when blocking one planted expert (mean over them, spread over them)",
        (PLANTED,
         verdicts.minimum("planted_experts", 2, "planted experts of the relation")), role="self-check"),
}


verdicts.check_facts(CLAIMS.values(), Facts)


def claim_rows(gains: pd.DataFrame, blocking: pd.DataFrame, plant: Plant, n_pairs: int, reps: int = 1000,
               seed: int = 0, model: str = "") -> pd.DataFrame:
    """One verdict row per planted relation and check (:data:`CLAIMS`), decided by the rules fixed above; without a
    plant, one 'not testable' row per check."""
    if not plant:
        return verdicts.table([verdicts.decide(c, {"planted": False}, None, model=model) for c in CLAIMS.values()])
    rows = []
    for relation in plant:
        planted = planted_pairs(plant, relation)
        b = blocking[blocking.blocked_for == relation]
        own = b[b.planted_relation].set_index("condition")
        facts = {"planted": True, "baseline_mrr": float(own.loc["planted", "mrr_before"]),
                 "planted_experts": len(planted)}
        note = f"relation {relation}; plant {sorted(planted)}"
        g = gains[gains.relation == relation]
        precision = _bootstrap_precision(g, planted, reps, seed) if len(g) else None
        chance = verdicts.Estimate(len(planted) / n_pairs)
        rows.append(_row("precision", facts, precision, chance, note, relation, model))
        control = _spread(own[own.kind == "random"]["drop"], "draws")
        drop = _drop_estimate(own.loc["planted"], reps, seed)
        rows.append(_row("blocking", facts, drop, control, note, relation, model))
        other = b[(b.condition == "planted") & ~b.planted_relation]
        rr_b = np.concatenate([np.asarray(x) for x in other.rr_before])
        rr_a = np.concatenate([np.asarray(x) for x in other.rr_after])
        spared = verdicts.bootstrap(lambda i: float(rr_b[i].mean() - rr_a[i].mean()), len(rr_b), reps, seed)
        rows.append(_row("specific", facts, spared, None, note, relation, model))
        singles = own[own.kind == "single"]["drop"]
        single = _spread(singles, "planted experts") if len(singles) else None
        rows.append(_row("redundant", facts, drop, single, note, relation, model))
    return verdicts.table(rows)


def _row(check: str, facts: dict, kit, control, note: str, relation: str, model: str) -> dict:
    row = verdicts.decide(CLAIMS[check], facts, kit, control, note=note, model=model)
    return row | {"claim": f"{row['claim']} ({relation})"}


def summary(blocking: pd.DataFrame) -> pd.DataFrame:
    """Blocking table without per-prompt lists: random draws pooled into mean and range of their drop."""
    rows: list[dict] = []
    keys = ["blocked_for", "kind", "relation", "planted_relation"]
    for key, g in blocking.groupby(keys, sort=False):
        rows.append(dict(zip(keys, key)) | {"n": len(g), "mrr_before": g.mrr_before.iloc[0],
                                            "mrr_after": g.mrr_after.mean(), "drop": g["drop"].mean(),
                                            "drop_min": g["drop"].min(), "drop_max": g["drop"].max()})
    return pd.DataFrame(rows, columns=keys + ["n", "mrr_before", "mrr_after", "drop", "drop_min", "drop_max"])


def plot(blocking: pd.DataFrame):
    """One panel per planted relation: MRR drop of each relation when blocking the plant, each planted expert alone,
    and the random draws (points; bar = their mean)."""
    import matplotlib.pyplot as plt

    planted = list(dict.fromkeys(blocking.blocked_for))
    fig, axes = plt.subplots(1, max(1, len(planted)), figsize=(4.2 * max(1, len(planted)), 3.4), squeeze=False)
    colors = {"planted": "#d62728", "single": "#ff9896", "random": "#7f7f7f"}
    for ax, relation in zip(axes[0], planted):
        b = blocking[blocking.blocked_for == relation]
        scored = list(dict.fromkeys(b.relation))
        for j, kind in enumerate(["planted", "single", "random"]):
            g = b[b.kind == kind]
            if g.empty:
                continue
            x = [scored.index(r) + (j - 1) * 0.27 for r in g.relation]
            ax.scatter(x, g["drop"], s=12, color=colors[kind], zorder=3)
            means = g.groupby("relation", sort=False)["drop"].mean()
            ax.bar([scored.index(r) + (j - 1) * 0.27 for r in means.index], means, width=0.25, color=colors[kind],
                   alpha=0.5, label=f"{kind} blocked")
        ax.set_xticks(range(len(scored)), [r.replace("_", " ") for r in scored], rotation=35, ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=f"plant of {relation}", ylabel="MRR drop")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plant_table(plant: Plant) -> pd.DataFrame:
    """One row per planted relation and layer: its planted experts."""
    return pd.DataFrame([{"relation": r, "layer": l, "experts": list(e)} for r, p in plant.items() for l, e in p.items()],
                        columns=["relation", "layer", "experts"])


def run(model: str, relations: Sequence[str], ks: Sequence[int], n_samples: int | None, seed: int = 0,
        templates: tasks.Templates = tasks.HELD_OUT, draws: int = CONTROL_DRAWS, device: str = "cpu",
        dtype: str | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the ground-truth analysis in one call: plant, precision@k, blocking (full and summary), verdict
    rows. Blocking scores the prompts once per condition: the plant, each redundant expert alone, ``draws`` controls.

    A model without a plant (or a dense one) gets empty tables and 'not testable' verdicts.
    """
    torch.manual_seed(seed)
    lm = models.load_model(zoo.require_trained(model), device=device, dtype=dtype)
    plant = load_plant(model, relations)
    facts = tasks.facts(relations, n_samples, templates)
    gains = expert_gains(lm, facts, plant)
    blocking = blocking_table(lm, facts, plant, draws=draws, seed=seed)
    n_pairs = len(all_pairs(lm.model))
    return {"plant": plant_table(plant), "precision": precision_table(gains, plant, ks, n_pairs), "blocking": blocking,
            "blocking_summary": summary(blocking),
            "claims": claim_rows(gains, blocking, plant, n_pairs, seed=seed, model=model)}
