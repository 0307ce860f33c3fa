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
- verdict rows (:mod:`moescope.verdicts`) for four checks whose rules are fixed here, before anything runs, over
  the seeds of the planted design (:func:`moescope.organisms.zoo.seeds_of`): each seed's estimate is a bootstrap
  over its prompts, the seeds are combined by :func:`moescope.statistics.over_seeds` (seeds, then prompts), and a
  control is paired with the kit on the same prompts and seeds (per prompt: kit - control, then resampled);
- whether the plant holds without hooks: the router's probability of the plant for other relations, on the
  notebook's prompts and on the organism's training templates (:func:`router_leak`), and what a router refitted
  to the training templates could reach on both (:func:`router_refit`).

Every check has two preconditions besides the plant itself, computed on the same prompts and combined over seeds:

- the relation is **known beyond its prior**: the 95% lower bound of mean_i (rr_i - prior_rr_i) is at least
  :data:`KNOWN_MARGIN` (prior_rr_i: 1 / rank of the gold object when the relation's objects are ranked by how many
  of its facts have them, :func:`prior_rr`; its mean is :func:`moescope.attribution.tasks.prior_mrr`);
- the plant is **causally confirmed**: blocking it lowers the relation's MRR more than blocking as many random
  unplanted experts of the same layers (per prompt: rr after random, averaged over the draws, minus rr after the
  plant), with a 95% lower bound of at least :data:`CONFIRM_MARGIN`. (The blocking check is this confirmation; it
  needs only the first precondition.)

"Spares unplanted relations" is two-sided: the unplanted relations' MRR change when the plant is blocked must lie
within +/- :data:`SPARE_BOUND` (a plant that *raises* other relations when blocked is not specific either).
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
from ..organisms import planted as planted_organisms
from ..organisms import zoo
from . import tasks
from .blocking import all_pairs
from .lpi import attribute
from .summaries import expert_ranking

CONTROL_DRAWS = 10
#: the relation's MRR above its object-frequency prior (95% lower bound) for it to count as known
KNOWN_MARGIN = 0.1
#: the plant's MRR drop above matched random blocking (95% lower bound) for it to count as causally confirmed
CONFIRM_MARGIN = 0.05
#: the most the unplanted relations' MRR may move, either way, when a plant is blocked
SPARE_BOUND = 0.05
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


def prior_rr(facts: pd.DataFrame) -> np.ndarray:
    """Per prompt: 1 / rank of its gold object among its relation's objects ranked by how many of the relation's facts
    have them (ties share the worse rank); the mean over prompts is :func:`moescope.attribution.tasks.prior_mrr`."""
    out = np.empty(len(facts))
    for stem, idx in facts.groupby("relation", sort=False).indices.items():
        counts = pd.Series([s.object for s in data.load_relation(stem).samples]).value_counts()
        rank = {o: int((counts >= c).sum()) for o, c in counts.items()}
        out[idx] = [1.0 / rank[o] for o in facts.object.to_numpy()[idx]]
    return out


def _mean(values: np.ndarray) -> verdicts.Estimate:
    """The mean of per-prompt values with the kit's resamples (:func:`moescope.statistics.resample`): estimates of
    one relation's prompts share their resamples, so their draws pair."""
    v = np.asarray(values, dtype=float)
    return statistics.resample(lambda idx: v[idx].mean(-1), len(v))


def _rr(rows: pd.DataFrame, column: str) -> np.ndarray:
    """[conditions, prompts] reciprocal ranks of ``rows`` (one blocking condition each)."""
    return np.array([np.asarray(x, dtype=float) for x in rows[column]])


def seed_evidence(gains: pd.DataFrame, blocking: pd.DataFrame, facts: pd.DataFrame, plant: Plant, n_pairs: int,
                  reps: int = 1000, seed: int = 0) -> dict[str, dict[str, dict[str, verdicts.Estimate | None]]]:
    """{relation: {check or precondition: {kit, control, diff}}} of one seed (see the module docstring).

    Per prompt i of the relation: drop_i = rr_i - rr_i(plant blocked); the matched control rr_i - mean over draws of
    rr_i(random blocked); known_i = rr_i - prior_rr_i; redundancy control rr_i - mean over single planted experts of
    rr_i(one blocked). Precision is a bootstrap re-ranking each resample; its control is chance."""
    out: dict[str, dict[str, dict[str, verdicts.Estimate | None]]] = {}
    prior = prior_rr(facts)
    index = facts.groupby("relation", sort=False).indices
    for relation in plant:
        b = blocking[blocking.blocked_for == relation]
        own = b[b.planted_relation]
        before = np.asarray(own[own.kind == "planted"].rr_before.iloc[0], dtype=float)
        plant_after = _rr(own[own.kind == "planted"], "rr_after")[0]
        random_after = _rr(own[own.kind == "random"], "rr_after").mean(0)
        planted = planted_pairs(plant, relation)
        g = gains[gains.relation == relation] if len(gains) else gains
        est: dict[str, dict[str, verdicts.Estimate | None]] = {
            "known": {"kit": _mean(before - prior[index[relation]])},
            "blocking": {"kit": _mean(before - plant_after), "control": _mean(before - random_after),
                         "diff": _mean(random_after - plant_after)},
            "precision": {"kit": _bootstrap_precision(g, planted, reps, seed) if len(g) else None,
                          "control": verdicts.Estimate(len(planted) / n_pairs)},
        }
        est["confirmed"] = {"kit": est["blocking"]["diff"]}
        other = b[(b.kind != "single") & ~b.planted_relation]
        if len(other):
            o_before = np.concatenate(other[other.kind == "planted"].rr_before.map(np.asarray).tolist())
            o_plant = np.concatenate(other[other.kind == "planted"].rr_after.map(np.asarray).tolist())
            draws = [np.concatenate(g_.rr_after.map(np.asarray).tolist())
                     for _, g_ in other[other.kind == "random"].groupby("condition", sort=False)]
            o_random = np.mean(draws, axis=0)
            est["specific"] = {"kit": _mean(o_before - o_plant), "control": _mean(o_before - o_random),
                               "diff": _mean(o_random - o_plant)}
        singles = own[own.kind == "single"]
        if len(singles):
            single_after = _rr(singles, "rr_after").mean(0)
            est["redundant"] = {"kit": est["blocking"]["kit"], "control": _mean(before - single_after),
                                "diff": _mean(single_after - plant_after)}
        out[relation] = est
    return out


#: What the checks' preconditions read (one definition, checked against every precondition at import)
Facts = TypedDict("Facts", {"planted": bool, "planted_experts": int, "beyond_prior_low": float,
                            "plant_excess_low": float}, total=False)

#: The precondition of every ground-truth check (here and in :mod:`.methods`): the model has a planted answer
PLANTED = verdicts.flag("planted", "a planted ground truth (card 'plant')")
#: ... the relation is known beyond its object-frequency prior
KNOWN = verdicts.minimum("beyond_prior_low", KNOWN_MARGIN,
                         "the relation's MRR above its object-frequency prior (95% lower bound)")
#: ... and its plant is causally confirmed against matched random blocking
CONFIRMED = verdicts.minimum("plant_excess_low", CONFIRM_MARGIN,
                             "the plant's MRR drop above matched random blocking (95% lower bound)")
#: every ground-truth check but the confirmation itself
GROUND_TRUTH = (PLANTED, KNOWN, CONFIRMED)

CLAIMS = {
    "precision": verdicts.Claim(
        "planted: attribution ranks the plant first", PAPER, "attribution.ground_truth",
        "LPI expert attribution ranks a relation's planted experts above every other (layer, expert) pair",
        "ground truth", "precision@|planted| of the expert ranking (seeds, then prompts re-ranked)",
        verdicts.at_least(0.5), "random ranking: |planted| / (layers x experts)", GROUND_TRUTH, role="self-check"),
    "blocking": verdicts.Claim(
        "planted: blocking the plant hurts its relation", PAPER, "attribution.ground_truth",
        "blocking a relation's planted experts lowers its MRR clearly more than blocking as many random experts of "
        "the same layers", "ground truth", "MRR drop of the relation (seeds, then prompts)",
        verdicts.exceeds_control(CONFIRM_MARGIN),
        f"the same number of random unplanted experts in the same layers ({CONTROL_DRAWS} draws, mean per prompt)",
        (PLANTED, KNOWN), role="self-check"),
    "specific": verdicts.Claim(
        "planted: blocking the plant spares unplanted relations", PAPER, "attribution.ground_truth",
        f"blocking a relation's planted experts moves the unplanted relations' MRR by at most {SPARE_BOUND:g} either "
        "way", "ground truth", "mean MRR drop over the unplanted relations' prompts (seeds, then prompts)",
        verdicts.within(0.0, SPARE_BOUND), "(shown, not deciding) the same drop under matched random blocking",
        GROUND_TRUTH, role="self-check"),
    "redundant": verdicts.Claim(
        "planted: a redundant plant survives one expert", PAPER, "attribution.ground_truth",
        "each expert of a redundant plant carries the relation alone: blocking one costs less than blocking all",
        "ground truth", "MRR drop when blocking all planted experts (seeds, then prompts)",
        verdicts.exceeds_control(0.0), "MRR drop when blocking one planted expert (mean over them, per prompt)",
        (*GROUND_TRUTH, verdicts.minimum("planted_experts", 2, "planted experts of the relation")), role="self-check"),
}


verdicts.check_facts(CLAIMS.values(), Facts)


def _combined(evidence: Sequence[dict], relation: str, check: str, part: str) -> verdicts.Estimate | None:
    """One part of a check over the seeds (:func:`moescope.statistics.over_seeds`); None where a seed lacks it."""
    got = [e[relation].get(check, {}).get(part) for e in evidence]
    if any(g is None for g in got):
        return None
    if all(not g.has_interval and not len(g.draws) for g in got):  # constants (chance): their mean
        return verdicts.Estimate(float(np.mean([g.value for g in got])))
    return statistics.over_seeds(got)


def relation_facts(evidence: Sequence[dict], plant: Plant, relation: str) -> dict:
    """The :data:`Facts` of ``relation`` over the seeds' :func:`seed_evidence`."""
    known, confirmed = (_combined(evidence, relation, k, "kit") for k in ("known", "confirmed"))
    return {"planted": True, "planted_experts": len(planted_pairs(plant, relation)),
            "beyond_prior_low": known.bounds()[0] if known is not None else None,
            "plant_excess_low": confirmed.bounds()[0] if confirmed is not None else None}


def claim_rows(evidence: Sequence[dict], plant: Plant, model: str = "") -> pd.DataFrame:
    """One verdict row per planted relation and check (:data:`CLAIMS`) over the seeds' :func:`seed_evidence`,
    decided by the rules fixed above; without a plant (or any seed), one 'not testable' row per check."""
    if not plant or not evidence:
        return verdicts.table([verdicts.decide(c, {"planted": False}, None, model=model) for c in CLAIMS.values()])
    rows = []
    for relation in plant:
        facts = relation_facts(evidence, plant, relation)
        note = f"relation {relation}; plant {sorted(planted_pairs(plant, relation))}"
        for check in CLAIMS:
            kit, control, diff = (_combined(evidence, relation, check, part) for part in ("kit", "control", "diff"))
            rows.append(_row(check, facts, kit, control, note, relation, model, diff))
    return verdicts.table(rows)


def _row(check: str, facts: dict, kit, control, note: str, relation: str, model: str, diff=None) -> dict:
    row = verdicts.decide(CLAIMS[check], facts, kit, control, note=note, model=model, diff=diff)
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
    """One panel per planted relation: the MRR drop (MRR before - after blocking) of every relation when blocking the
    plant, each planted expert alone, and matched random experts (dots: seeds and draws; bar: their mean); the
    legend beside the last panel."""
    import matplotlib.pyplot as plt

    from ..plots import legend_outside

    planted = list(dict.fromkeys(blocking.blocked_for))
    fig, axes = plt.subplots(1, max(1, len(planted)), figsize=(4.2 * max(1, len(planted)) + 1.5, 3.4), squeeze=False)
    colors = {"planted": "#d62728", "single": "#ff9896", "random": "#7f7f7f"}
    labels = {"planted": "the whole plant blocked", "single": "one planted expert blocked",
              "random": "matched random experts blocked"}
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
                   alpha=0.5, label=labels[kind])
        ax.set_xticks(range(len(scored)), [r.replace("_", " ") for r in scored], rotation=35, ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=f"plant of {relation}", ylabel="MRR drop (before - after)")
    legend_outside(axes[0][-1])
    fig.tight_layout()
    fig.set_label("Planted ground truth: the MRR drop of every relation when the plant of one relation, one of its "
                  "experts, or matched random experts are blocked (dots: seeds and random draws; bars: their mean).")
    return fig


def plant_table(plant: Plant) -> pd.DataFrame:
    """One row per planted relation and layer: its planted experts."""
    return pd.DataFrame([{"relation": r, "layer": l, "experts": list(e)} for r, p in plant.items() for l, e in p.items()],
                        columns=["relation", "layer", "experts"])


def seed_models(model: str | Sequence[str], across_seeds: bool = True) -> list[str]:
    """The organisms to run: ``model`` and its registered seeds (:func:`moescope.organisms.zoo.seeds_of`) with
    ``across_seeds``, else ``model`` alone; a list is taken as given."""
    if not isinstance(model, str):
        return list(model)
    return zoo.seeds_of(model) if across_seeds else [model]


def seed_label(names: Sequence[str]) -> str:
    """The model column of rows combined over ``names``."""
    return names[0] if len(names) == 1 else f"{names[0]} ({len(names)} seeds)"


#: the ``templates`` label of the leak measured on the organism's own training prompts (:func:`router_leak`)
TRAINING_TEMPLATES = "training"


def prompt_sets(name: str, facts: pd.DataFrame, templates: str) -> dict[str, pd.DataFrame]:
    """The prompt sets the plant is read on without hooks: ``facts`` (named ``templates``) and, for a zoo organism,
    the same relations' facts on its own training templates (:data:`TRAINING_TEMPLATES`), where a leak is no
    failure to generalise to new wordings."""
    sets = {templates: facts}
    if name in zoo.GEN2_ZOO:
        sets[TRAINING_TEMPLATES] = zoo.gen2_corpus(name).training_prompts(sorted(set(facts.relation)))
    return sets


def router_leak(lm: models.LoadedModel, sets: dict[str, pd.DataFrame], plant: Plant, name: str) -> pd.DataFrame:
    """:func:`moescope.organisms.planted.plant_leak` on each prompt set of :func:`prompt_sets`: how much the
    router, without any hook, sends the relations a layer does not plant to that layer's planted experts (and the
    planted relation to its own); columns as there, with ``templates`` and ``model``."""
    frames = [planted_organisms.plant_leak(lm.model, lm.tokenizer, plant, frame).assign(templates=label)
              for label, frame in sets.items()]
    return pd.concat(frames, ignore_index=True).assign(model=name)


def router_refit(lm: models.LoadedModel, sets: dict[str, pd.DataFrame], plant: Plant, name: str) -> pd.DataFrame:
    """:func:`moescope.organisms.planted.router_refit` of a zoo organism: routers refitted to every fact of its
    corpus on its training templates, read on each prompt set of :func:`prompt_sets`, with a ``model`` column
    (empty for a model with no corpus of the kit's)."""
    if name not in zoo.GEN2_ZOO:
        return pd.DataFrame()
    corpus = zoo.gen2_corpus(name)
    fit = corpus.training_prompts(sorted(set(corpus.facts.relation)))
    return planted_organisms.router_refit(lm.model, lm.tokenizer, plant, fit, sets).assign(model=name)


def leak_summary(leak: pd.DataFrame, bound: float = planted_organisms.LEAK_BOUND) -> pd.DataFrame:
    """Per model, prompt set (``templates``) and planted layer: the router's probability of the layer's plant at
    the last position for the relation planted there (``own``), the largest over the relations not planted there
    (``leak_max``: relation ``worst``) and their mean, the share of those last positions with a planted expert in
    the top-k, and whether ``leak_max`` stays below ``bound`` (:data:`moescope.organisms.planted.LEAK_BOUND`)."""
    rows = []
    for (model, templates, layer), g in leak.groupby(["model", "templates", "layer"], sort=False):
        other, own = g[~g.planted_here], g[g.planted_here]
        worst = other.loc[other.p_last.idxmax()]
        rows.append({"model": model, "templates": templates, "layer": layer, "own": own.p_last.mean(),
                     "leak_mean": other.p_last.mean(),
                     "leak_max": worst.p_last, "worst": worst.relation, "topk_share": other.topk_last.mean(),
                     "below_bound": bool(worst.p_last < bound)})
    return pd.DataFrame(rows)


def refit_summary(refit: pd.DataFrame, bound: float = planted_organisms.LEAK_BOUND) -> pd.DataFrame:
    """Per model, prompt set and planted layer, from :func:`router_refit`: the largest plant probability over the
    relations not planted there under the trained router (``trained_max``) and the refitted one (``refit_max``:
    relation ``refit_worst``), the planted relation's own under the refit (``refit_own``), and whether
    ``refit_max`` stays below ``bound`` (where the refit misses it on new wordings, a router fitted harder to the
    training templates does not meet it there)."""
    rows = []
    for (model, templates, layer), g in refit.groupby(["model", "templates", "layer"], sort=False):
        other = g[~g.planted_here]
        worst = other.loc[other.refit.idxmax()]
        rows.append({"model": model, "templates": templates, "layer": layer, "trained_max": other.trained.max(),
                     "refit_own": g[g.planted_here].refit.mean(), "refit_max": worst.refit,
                     "refit_worst": worst.relation, "refit_below_bound": bool(worst.refit < bound)})
    return pd.DataFrame(rows)


def precondition_table(evidence: Sequence[dict], names: Sequence[str], plant: Plant) -> pd.DataFrame:
    """Per planted relation, seed and over the seeds: MRR above the prior and the plant's drop above matched random
    blocking (value and 95% interval), with whether each precondition holds (:data:`KNOWN`, :data:`CONFIRMED`)."""
    rows = []
    for relation in plant:
        per = [(n, [e]) for n, e in zip(names, evidence)] + ([(seed_label(names), list(evidence))]
                                                              if len(names) > 1 else [])
        for name, ev in per:
            known, confirmed = (_combined(ev, relation, k, "kit") for k in ("known", "confirmed"))
            rows.append({"relation": relation, "model": name, "beyond_prior": known.value,
                         "beyond_prior_low": known.bounds()[0], "beyond_prior_high": known.bounds()[1],
                         "known": known.bounds()[0] >= KNOWN_MARGIN, "plant_excess": confirmed.value,
                         "plant_excess_low": confirmed.bounds()[0], "plant_excess_high": confirmed.bounds()[1],
                         "confirmed": confirmed.bounds()[0] >= CONFIRM_MARGIN})
    return pd.DataFrame(rows)


def run(model: str | Sequence[str], relations: Sequence[str], ks: Sequence[int], n_samples: int | None,
        seed: int = 0, templates: tasks.Templates = tasks.HELD_OUT, draws: int = CONTROL_DRAWS, device: str = "cpu",
        dtype: str | None = None, across_seeds: bool = True, reps: int = 1000) -> dict[str, pd.DataFrame]:
    """Every table of the ground-truth analysis in one call, for ``model`` and (``across_seeds``) its registered
    seeds: plant, precision@k, blocking (full and summary), the router's leak onto the plant and what a refitted
    router leaks, each with a model column, and verdict rows combined over the seeds. Blocking scores the prompts
    once per condition: the plant, each redundant expert alone, ``draws`` controls. Every seed shares the plant and
    the prompts.

    A model without a plant (or a dense one) gets empty tables and 'not testable' verdicts.
    """
    names = seed_models(model, across_seeds)
    plant = load_plant(names[0], relations)
    facts = tasks.facts(relations, n_samples, templates)
    out: dict[str, list[pd.DataFrame]] = {"precision": [], "blocking": [], "blocking_summary": [], "leak": [],
                                          "refit": []}
    evidence = []
    for name in names:
        torch.manual_seed(seed)
        if load_plant(name, relations) != plant:
            raise ValueError(f"{name} has another plant than {names[0]}: seeds of one design share the plant")
        lm = models.load_model(zoo.require_trained(name), device=device, dtype=dtype)
        gains = expert_gains(lm, facts, plant)
        blocking = blocking_table(lm, facts, plant, draws=draws, seed=seed)
        n_pairs = len(all_pairs(lm.model))
        out["precision"].append(precision_table(gains, plant, ks, n_pairs).assign(model=name))
        out["blocking"].append(blocking.assign(model=name))
        out["blocking_summary"].append(summary(blocking).assign(model=name))
        if plant:
            sets = prompt_sets(name, facts, str(templates))
            out["leak"].append(router_leak(lm, sets, plant, name))
            out["refit"].append(router_refit(lm, sets, plant, name))
            evidence.append(seed_evidence(gains, blocking, facts, plant, n_pairs, reps, seed))
    tables = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}
    return {"plant": plant_table(plant), **tables, "evidence": evidence,
            "leak_summary": leak_summary(tables["leak"]) if len(tables["leak"]) else pd.DataFrame(),
            "refit_summary": refit_summary(tables["refit"]) if len(tables["refit"]) else pd.DataFrame(),
            "preconditions": precondition_table(evidence, names, plant) if evidence else pd.DataFrame(),
            "claims": claim_rows(evidence, plant, model=seed_label(names))}
