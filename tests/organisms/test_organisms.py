"""Shipped gen-1 organisms: accuracy, cards, and bit-exact re-training on this machine class: a 20-step training
prefix of one MoE and one dense organism in `make test` (every card holds its hash), one full retraining with
`make test-retrain`."""
import pytest
from conftest import on_training_kind, same_weights

from moescope import data, models, paths
from moescope.organisms import training, zoo


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_organism_card_and_accuracy(name):
    card = zoo.load_card(name)
    lm = models.load_model(name)
    corpus = training.Corpus(data.load_relations())
    assert card["data_hash"] == data.data_hash(corpus.relations), "organism is stale: data changed since training"
    acc = training.fact_accuracy(lm.model, lm.tokenizer, corpus.facts)
    assert acc.mean() >= 0.95
    assert acc.round(4).to_dict() == card["accuracy_per_relation"]
    assert card["architecture"]["params"] == sum(p.numel() for p in lm.model.parameters())


def test_organism_shapes_mirror_the_papers_models():
    layers = {n: zoo.load_card(n)["architecture"] for n in zoo.ZOO}
    assert layers["olmoe-like"]["layers"] < layers["qwen-moe-like"]["layers"] < layers["mixtral-like"]["layers"]
    assert layers["qwen-moe-like"]["shared_expert"] and not layers["olmoe-like"]["shared_expert"]
    assert layers["olmoe-like"]["experts"] > layers["mixtral-like"]["experts"] == 8
    assert layers["mixtral-like"]["top_k"] == 2
    assert all(layers[n]["moe_layers"] == 0 for n in zoo.DENSE_ORGANISMS)


@pytest.mark.parametrize("name", ["olmoe-like", "llama-like"])  # one MoE, one dense; every card has the hash
def test_retraining_prefix_matches_the_card(name):
    """The first steps of training give the weights the card recorded at that step of the full run: bit for bit on
    the CPU kind that trained it, within the card's calibrated tolerance on another (`training.verify_prefix`)."""
    card = zoo.load_card(name)
    assert card["prefix_check"]["steps"] == training.PREFIX_STEPS
    training.verify_prefix(card["prefix_check"], training.prefix_check(zoo.ZOO[name]))


@pytest.mark.slow
@pytest.mark.retrain
def test_retraining_reproduces_the_shipped_weights_exactly(tmp_path):
    name = "olmoe-like"
    on_training_kind(zoo.load_card(name))
    card = training.train_organism(zoo.ZOO[name], out_dir=tmp_path / name)
    assert same_weights(paths.ORGANISMS / name, tmp_path / name)
    assert card["training_steps"] == zoo.load_card(name)["training_steps"]
    assert card["prefix_check"] == zoo.load_card(name)["prefix_check"]


def test_organisms_are_distinct_models():
    weights = {n: (paths.ORGANISMS / n / "model.safetensors").read_bytes() for n in zoo.ZOO}
    assert len(set(weights.values())) == len(weights)
