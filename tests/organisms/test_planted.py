"""Ground truth no paper has: attribution recovers the planted experts, and blocking them collapses exactly the
planted relations."""
import pytest

from moescope import attribution, data, interventions, metrics, models
from moescope.attribution import summaries
from moescope.organisms import planted, zoo


@pytest.fixture(scope="module")
def lm():
    return models.load_model(planted.NAME)


@pytest.fixture(scope="module")
def facts():
    return data.facts_frame(data.load_relations(), template=0)


def _mrr_by_relation(lm, facts):
    scores = metrics.score_prompts(lm.model, lm.tokenizer, list(facts.prompt), list(facts.object))
    return scores.assign(relation=facts.relation.values).groupby("relation")["rank"].apply(lambda r: (1 / r).mean())


def test_card_records_the_plant(lm):
    card = zoo.load_card(planted.NAME)
    assert {r: {int(l): e for l, e in p.items()} for r, p in card["plant"].items()} == planted.PLANT
    assert card["accuracy"] >= 0.95


def test_attribution_recovers_the_planted_experts(lm):
    hits = total = 0
    for relation, plant in planted.PLANT.items():
        attr = attribution.attribute_relations(lm.model, lm.tokenizer, data.load_relations([relation]),
                                               templates=0, neurons=False, progress=False)  # its training template
        ranked = summaries.expert_ranking(attr.experts).head(len(plant))
        found = set(zip(ranked.layer, ranked.expert))
        hits += len(found & set(plant.items()))
        total += len(plant)
    assert hits / total >= 0.9


def chance_mrr(n_answers: int) -> float:
    """MRR of guessing uniformly among a relation's n distinct answers: mean over r=1..n of 1/r."""
    return sum(1 / r for r in range(1, n_answers + 1)) / n_answers


def test_blocking_the_planted_experts_collapses_only_their_relations(lm, facts):
    before = _mrr_by_relation(lm, facts)
    with interventions.block_experts(lm.model, planted.planted_by_layer()):
        after = _mrr_by_relation(lm, facts)
    for relation in planted.PLANT:
        chance = chance_mrr(facts[facts.relation == relation].object.nunique())
        assert before[relation] > 0.9
        # at least halfway from the trained MRR down to the chance level among the relation's answers
        assert after[relation] - chance <= 0.5 * (before[relation] - chance)
    others = [r for r in before.index if r not in planted.PLANT]
    assert (before[others] - after[others]).max() < 0.05
