"""The shipped gen-2 zoo: cards match the weights, held-out MRR off the ceiling, matched pairs, the registry, and
bit-for-bit retraining of a training prefix."""
import json

import pytest
import torch
from safetensors.torch import load_file

from moescope import arch, models, paths
from moescope.organisms import gen2, planted, zoo
from moescope.organisms.tokenizer import tokenizer_hash

MRR_RANGE = (0.5, 0.9)


@pytest.fixture(scope="module")
def data():
    return gen2.gen2_data()


@pytest.mark.parametrize("name", zoo.GEN2)
def test_card_matches_weights_spec_and_data(name, data):
    corpus, tokenizer = data
    card = zoo.load_card(name)
    spec = zoo.GEN2_ZOO[name]
    weights = load_file(paths.ORGANISMS / name / "model.safetensors")
    assert card["gen"] == 2 and card["name"] == name and card["seed"] == spec.seed and card["spec"] == spec.group
    assert card["architecture"]["params"] == sum(t.numel() for t in weights.values())
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert card["data_hash"] == corpus.hash(), "organism is stale: the corpus changed since training"
    assert card["tokenizer_hash"] == tokenizer_hash(tokenizer)
    assert card["tokenizer_hash"] == tokenizer_hash(models.load_tokenizer(str(paths.ORGANISMS / name)))
    assert zoo._gen2_is_current(name), "card does not match the spec (retrain with `make zoo`)"
    assert (paths.ORGANISMS / name / "model.safetensors").stat().st_size <= 6 * 2**20
    assert card["training_seconds"] > 0 and card["training_steps"] == spec.max_steps


def test_gen2_zoo_fits_the_size_budget():
    total = sum(p.stat().st_size for n in zoo.GEN2 for p in (paths.ORGANISMS / n).iterdir())
    assert total <= 60 * 2**20


@pytest.mark.parametrize("name", zoo.GEN2)
def test_heldout_mrr_is_off_the_ceiling(name):
    card = zoo.load_card(name)
    for relation in gen2.PAPER_RELATIONS:
        assert set(card["eval"][relation]) >= {"mrr", "hit@10", "rare_mrr", "rare_hit@10", "n"}
    if card["role"] != "planted":  # the planted organism is a ground truth, not a baseline
        assert MRR_RANGE[0] <= card["eval_paper_tasks"]["mrr"] <= MRR_RANGE[1], card["eval_paper_tasks"]


@pytest.mark.parametrize("name", [zoo.PAIRS[0].moe, zoo.PAIRS[0].dense, zoo.SHARED_MOE])
def test_card_evaluation_is_recomputed_exactly(name, data):
    corpus, _ = data
    lm = models.load_model(name)
    fresh = gen2.summarize_heldout(gen2.heldout_scores(lm.model, lm.tokenizer, corpus))
    assert fresh == zoo.load_card(name)["eval"]


@pytest.mark.parametrize("pair", zoo.PAIRS, ids=lambda p: f"l{p.depth}-s{p.seed}")
def test_pairs_are_matched(pair):
    moe, dense = zoo.load_card(pair.moe), zoo.load_card(pair.dense)
    for key in ("layers", "hidden", "heads", "vocab"):
        assert moe["architecture"][key] == dense["architecture"][key] == (pair.depth if key == "layers" else moe["architecture"][key])
    assert moe["architecture"]["moe_layers"] == pair.depth and dense["architecture"]["moe_layers"] == 0
    assert moe["ffn_active_width"] == dense["ffn_active_width"]
    assert moe["active_params"] - dense["active_params"] == moe["router_params"]  # equal but for the router
    for key in ("tokenizer_hash", "data_hash", "training_steps", "batch", "lr", "seed"):
        assert moe[key] == dense[key], key
    files = [(paths.ORGANISMS / n / "tokenizer.json").read_bytes() for n in (pair.moe, pair.dense)]
    assert files[0] == files[1]


def test_registry_shape():
    assert {(p.depth, p.seed) for p in zoo.PAIRS} == {(d, s) for d in (8, 16) for s in (0, 1, 2)}
    names = [n for p in zoo.PAIRS for n in (p.moe, p.dense)]
    assert len(set(names)) == 12 and set(names) < set(zoo.GEN2)
    assert zoo.SHARED_MOE in zoo.GEN2 and planted.GEN2_NAME in zoo.GEN2


def test_partner_and_seeds_read_the_cards():
    for p in zoo.PAIRS:
        assert zoo.partner(p.moe) == p.dense and zoo.partner(p.dense) == p.moe
        assert zoo.load_card(p.moe)["partner"] == p.dense
    for name in ("olmoe-like", zoo.SHARED_MOE, planted.GEN2_NAME, "org/some-model", "/tmp/no-such-folder"):
        assert zoo.partner(name) is None
    moe8 = [p.moe for p in zoo.PAIRS if p.depth == 8]
    assert zoo.seeds_of(moe8[1]) == moe8
    assert zoo.seeds_of("olmoe-like") == ["olmoe-like"] and zoo.seeds_of(zoo.SHARED_MOE) == [zoo.SHARED_MOE]


def test_shared_moe_organism_shape():
    card = zoo.load_card(zoo.SHARED_MOE)
    a = card["architecture"]
    assert a["shared_expert"] and 32 <= a["experts"] <= 64 and a["top_k"] == 4 and a["layers"] >= 8
    assert card["curriculum_steps"] > 0
    lm = models.load_model(zoo.SHARED_MOE)
    parts = arch.layers(lm.model)
    assert all(p.ffn is not None and p.ffn_gate is not None for p in parts)  # a gated, always-on shared expert
    assert parts[0].ffn.down_proj.weight.shape[1] < a["top_k"] * a["expert_width"]  # small next to the routed ones


def test_planted_gen2_card_records_redundant_and_late_plants():
    card = zoo.load_card(planted.GEN2_NAME)
    plant = {r: {int(l): tuple(e) for l, e in p.items()} for r, p in card["plant"].items()}
    assert plant == planted.GEN2_PLANT
    assert card["architecture"]["layers"] >= 8
    assert any(len(e) >= 2 for p in plant.values() for e in p.values())  # redundant
    assert any(l >= card["architecture"]["layers"] - 2 for p in plant.values() for l in p)  # late


def test_retraining_prefix_is_bit_exact():
    """Retrain the first ``prefix_steps`` steps of the smallest gen-2 organism and compare the weights' hash with
    the one its card recorded at that step of the full run (same code path: corpus, tokenizer, init, batches,
    schedule, kernels). A full retraining takes minutes; the full-length check is the slow test below."""
    name = zoo.PAIRS[0].dense
    card = zoo.load_card(name)
    assert card["prefix_check"]["steps"] == zoo.GEN2_ZOO[name].prefix_steps
    assert gen2.prefix_hash(zoo.GEN2_ZOO[name]) == card["prefix_check"]["sha256"]


@pytest.mark.slow
def test_full_retraining_reproduces_the_shipped_weights(tmp_path):
    name = zoo.PAIRS[0].dense
    card = gen2.train_gen2(zoo.GEN2_ZOO[name], out_dir=tmp_path / name)
    shipped = load_file(paths.ORGANISMS / name / "model.safetensors")
    fresh = load_file(tmp_path / name / "model.safetensors")
    assert shipped.keys() == fresh.keys() and all(torch.equal(shipped[k], fresh[k]) for k in shipped)
    assert card["eval"] == zoo.load_card(name)["eval"]
    assert json.loads((tmp_path / name / "tokenizer.json").read_text()) == json.loads(
        (paths.ORGANISMS / name / "tokenizer.json").read_text())
