"""The gen-2 registry: matched pairs (checked on freshly built models, no weights needed), the shared-expert design,
the clear error for an organism that is registered but not trained, and, for every shipped gen-2 organism, card
against weights, spec and corpus; for one organism of each family, the card's evaluation recomputed and bit-for-bit
retraining of a training prefix."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import on_training_kind, same_weights
from safetensors.torch import load_file

from moescope import arch, models, paths
from moescope.organisms import gen2, planted, training, zoo
from moescope.organisms.tokenizer import tokenizer_hash

#: every gen-2 organism is committed with its weights
SHIPPED = zoo.GEN2
#: one organism of each family (Mixtral-like MoE, Llama dense, Qwen2-MoE with a shared expert, planted OLMoE)
ONE_PER_FAMILY = (zoo.PAIRS[0].moe, zoo.PAIRS[0].dense, zoo.SHARED_MOE, planted.GEN2_NAME)


@pytest.fixture(scope="module")
def data():
    return gen2.gen2_data()


def _built(name: str, tokenizer) -> torch.nn.Module:
    return gen2._build(zoo.GEN2_ZOO[name], tokenizer)


def test_registry_shape():
    assert {p.depth for p in zoo.PAIRS} == {8, 16} and all(len(seeds) >= 3 for seeds in zoo.SEEDS.values())
    assert {(p.depth, p.seed) for p in zoo.PAIRS} == {(d, s) for d, seeds in zoo.SEEDS.items() for s in seeds}
    names = [n for p in zoo.PAIRS for n in (p.moe, p.dense)]
    assert len(set(names)) == 2 * len(zoo.PAIRS) and set(names) < set(zoo.GEN2)
    assert zoo.SHARED_MOE in zoo.GEN2 and planted.GEN2_NAME in zoo.GEN2


@pytest.mark.parametrize("pair", zoo.PAIRS, ids=lambda p: f"l{p.depth}-s{p.seed}")
def test_pair_specs_share_everything_but_the_ffn(pair):
    moe, dense = zoo.GEN2_ZOO[pair.moe], zoo.GEN2_ZOO[pair.dense]
    assert (moe.partner, dense.partner, moe.role, dense.role) == (pair.dense, pair.moe, "moe", "dense")
    for key in ("seed", "max_steps", "batch", "lr", "warmup", "final_lr", "corpus", "vocab_size", "rope_theta",
                "rms_norm_eps", "curriculum"):
        assert getattr(moe, key) == getattr(dense, key), key
    for key in ("hidden", "heads", "layers"):
        assert getattr(moe.shape, key) == getattr(dense.shape, key) and moe.shape.layers == pair.depth


def test_built_pair_is_matched_in_active_parameters(data):
    _, tokenizer = data
    pair = zoo.PAIRS[0]
    moe, dense = _built(pair.moe, tokenizer), _built(pair.dense, tokenizer)
    a, b = arch.describe(moe), arch.describe(dense)
    assert all(a[k] == b[k] for k in ("layers", "hidden", "heads", "vocab"))
    assert a["moe_layers"] == pair.depth and b["moe_layers"] == 0
    am, ad = gen2.active_params(moe), gen2.active_params(dense)
    assert am["ffn_active_width"] == ad["ffn_active_width"]
    assert am["active_params"] - ad["active_params"] == am["router_params"]  # equal but for the router


def test_pair_members_differ_only_in_the_ffn(data):
    """With the dense member's attention, norms and embeddings copied in, the MoE member's attention computes the
    same outputs bit for bit: the pair's attention is the same module up to its weights."""
    _, tokenizer = data
    pair = zoo.PAIRS[0]
    moe, dense = _built(pair.moe, tokenizer).eval(), _built(pair.dense, tokenizer).eval()
    shared = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    assert {k: v.shape for k, v in moe.state_dict().items() if ".mlp." not in k} == {k: v.shape for k, v in shared.items()}
    moe.load_state_dict(shared, strict=False)
    x, pos = torch.randn(2, 5, moe.config.hidden_size), torch.arange(5)[None].expand(2, -1)
    pe_a, pe_b = moe.model.rotary_emb(x, pos), dense.model.rotary_emb(x, pos)
    assert all(torch.equal(u, v) for u, v in zip(pe_a, pe_b))
    with torch.no_grad():
        for la, lb in zip(moe.model.layers, dense.model.layers):
            out_a = la.self_attn(la.input_layernorm(x), position_embeddings=pe_a, attention_mask=None)[0]
            out_b = lb.self_attn(lb.input_layernorm(x), position_embeddings=pe_b, attention_mask=None)[0]
            assert torch.equal(out_a, out_b)


def test_shared_moe_design(data):
    _, tokenizer = data
    spec = zoo.GEN2_ZOO[zoo.SHARED_MOE]
    assert 32 <= spec.shape.experts <= 64 and spec.shape.top_k == 4 and spec.shape.layers >= 8
    assert 0 < spec.curriculum < spec.max_steps
    parts = arch.layers(_built(zoo.SHARED_MOE, tokenizer))
    assert all(p.ffn is not None and p.ffn_gate is not None for p in parts)  # a gated, always-on shared expert
    assert parts[0].ffn.down_proj.weight.shape[1] < spec.shape.top_k * spec.shape.expert_width  # small


def test_untrained_organism_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ORGANISMS", tmp_path)
    name = zoo.PAIRS[0].moe
    for call in (zoo.load_card, zoo.require_trained):
        with pytest.raises(zoo.NotTrainedError, match=f"python -m moescope organisms --gen 2 --names {name}"):
            call(name)
    with pytest.raises(zoo.NotTrainedError, match="--gen 1 --names olmoe-like"):
        zoo.require_trained("olmoe-like")
    assert zoo.require_trained("org/some-model") == "org/some-model"  # not registered: models.load_model decides


def test_partner_and_seeds_come_from_the_registry():
    for p in zoo.PAIRS:
        assert zoo.partner(p.moe) == p.dense and zoo.partner(p.dense) == p.moe
        same_depth = [q for q in zoo.PAIRS if q.depth == p.depth]
        assert zoo.seeds_of(p.moe) == [q.moe for q in same_depth] and len(same_depth) == len(zoo.SEEDS[p.depth])
    for name in ("olmoe-like", "org/some-model", "/tmp/no-such-folder"):
        assert zoo.partner(name) is None and zoo.seeds_of(name) == [name]
    for name in zoo.SHARED_SEEDS:  # the shared-expert model: three seeds of one spec, no dense partner
        assert zoo.partner(name) is None and zoo.seeds_of(name) == list(zoo.SHARED_SEEDS)
    specs = [zoo.GEN2_ZOO[n] for n in zoo.SHARED_SEEDS]
    assert [s.seed for s in specs] == [0, 1, 2] and len({(s.shape, s.group, s.max_steps) for s in specs}) == 1


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_matches_weights_spec_and_data(name, data):
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
    assert zoo._gen2_is_current(name), f"card does not match the spec (retrain with `{zoo.train_command(name)}`)"
    assert (paths.ORGANISMS / name / "model.safetensors").stat().st_size <= 6 * 2**20
    assert card["training_seconds"] > 0 and card["training_steps"] == spec.max_steps
    for relation in gen2.PAPER_RELATIONS:
        assert set(card["eval"][relation]) >= {"mrr", "hit@10", "rare_mrr", "rare_hit@10", "n"}


@pytest.mark.parametrize("name", planted.GEN2_NAMES)
def test_planted_gen2_cards_record_the_design(name):
    """Every seed of the planted design records its plant (early single, mid and late redundant) and router loss."""
    card = zoo.load_card(name)
    plant = {r: {int(l): tuple(e) for l, e in p.items()} for r, p in card["plant"].items()}
    assert plant == planted.GEN2_PLANT and card["router_loss_weight"] == planted.GEN2_ROUTER_LOSS_WEIGHT
    assert card["seed"] == zoo.GEN2_ZOO[name].seed and zoo.seeds_of(name) == list(planted.GEN2_NAMES)
    layers = card["architecture"]["layers"]
    assert layers >= 8
    assert any(len(e) >= 2 for p in plant.values() for e in p.values())  # redundant
    assert any(len(e) == 1 for p in plant.values() for e in p.values())  # single
    assert any(l >= layers - 2 for p in plant.values() for l in p)  # late
    assert any(0 < l <= 2 for p in plant.values() for l in p)  # early (not layer 0)


@pytest.mark.parametrize("name", planted.GEN2_NAMES)
def test_planted_relations_are_known_beyond_their_prior(name):
    """On the held-out evaluation of the card, each planted relation's MRR is at least 0.1 above its prior."""
    from moescope import data as data_

    card = zoo.load_card(name)
    for relation in planted.GEN2_PLANT:
        rel = data_.load_relation(relation)
        frame = data_.prompts_frame([rel])
        counts = {}
        for s in rel.samples:
            counts[s.object] = counts.get(s.object, 0) + 1
        rank = {o: sum(1 for c in counts.values() if c >= n) for o, n in counts.items()}
        prior = sum(1 / rank[o] for o in frame.object) / len(frame)
        assert card["eval"][relation]["mrr"] >= prior + 0.1, (relation, card["eval"][relation]["mrr"], prior)


def test_the_router_leak_onto_the_plant_is_measured_without_hooks():
    """The router's probability of each planted layer's plant at the last position, with no hook on the model:
    probabilities, one row per (layer, relation), the planted relation flagged. Whether the leak stays below
    LEAK_BOUND is a finding of the shipped organisms (notebook 45's leak table), not a property of the code: the
    seeds trained with the router-only loss miss it."""
    from moescope import data as data_
    from moescope.attribution import ground_truth

    name = planted.GEN2_NAMES[0]
    lm = models.load_model(name)
    frame = data_.prompts_frame(data_.load_relations(list(planted.GEN2_PLANT) + ["country_language"]), 3)
    leak = planted.plant_leak(lm.model, lm.tokenizer, planted.GEN2_PLANT, frame)
    assert leak.p_last.between(0, 1).all() and leak.topk_last.between(0, 1).all()
    planted_layers = {int(l) for p in planted.GEN2_PLANT.values() for l in p}
    assert set(leak.layer) == planted_layers and leak.groupby("layer").planted_here.sum().eq(1).all()
    both = ground_truth.router_leak(lm, ground_truth.prompt_sets(name, frame, "held-out"), planted.GEN2_PLANT, name)
    held = both[both.templates == "held-out"].drop(columns=["templates", "model"])
    pd.testing.assert_frame_equal(held.reset_index(drop=True), leak)
    summary = ground_truth.leak_summary(both)
    assert set(summary.templates) == {"held-out", ground_truth.TRAINING_TEMPLATES}
    assert (summary.below_bound == (summary.leak_max < planted.LEAK_BOUND)).all()
    assert (summary.own > 0).all()


def test_training_prompts_are_the_facts_on_their_training_templates():
    """Corpus.training_prompts: every fact of the named relations on every training template; a fact trained at
    least once per template has each of those prompts, followed by its object, among the training texts."""
    corpus = zoo.gen2_corpus(planted.GEN2_NAMES[0])
    relations = sorted(planted.GEN2_PLANT)
    prompts = corpus.training_prompts(relations)
    facts = corpus.facts[corpus.facts.relation.isin(relations)]
    assert set(prompts.relation) == set(relations)
    assert len(prompts) == sum(len(corpus.templates[r]) for r in facts.relation)
    texts = set(corpus.train.text)
    frequent = facts[facts["count"] >= facts.relation.map(lambda r: len(corpus.templates[r]))]
    rows = prompts.merge(frequent[["relation", "sample_id"]], on=["relation", "sample_id"])
    assert len(rows) > 0 and all(f"{p} {o}" in texts for p, o in zip(rows.prompt, rows.object))


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_card_evaluation_is_recomputed_exactly(name, data):
    corpus, _ = data
    lm = models.load_model(name)
    fresh = gen2.summarize_heldout(gen2.heldout_scores(lm.model, lm.tokenizer, corpus))
    assert fresh == zoo.load_card(name)["eval"]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_retraining_prefix_matches_the_card(name):
    """Retrain the first ``prefix_steps`` steps (planting hooks and router loss included for the planted organism)
    and compare with what its card recorded at that step of the full run (same code path: corpus, tokenizer, init,
    batches, curriculum, schedule, kernels): bit for bit on the CPU kind that trained it, within the card's
    calibrated tolerance on another (`training.verify_prefix`). A full-length retraining takes 5-25 minutes per
    organism on 2 cores, more than `make test` can afford; `make zoo ZOO_FLAGS=--retrain` does it."""
    spec, card = zoo.GEN2_ZOO[name], zoo.load_card(name)
    extras = planted.gen2_extras(planted.GEN2_PLANT, spec.seed) if spec.role == "planted" else None
    assert card["prefix_check"]["steps"] == spec.prefix_steps
    training.verify_prefix(card["prefix_check"], gen2.prefix_check(spec, extras))


def test_a_full_run_records_the_prefix_only_run(tmp_path):
    """A shortened training (2 layers, 23 steps, same code path) records at step 20 what the prefix-only run ends
    with, so the cards' prefix hashes are what `make test` recomputes."""
    spec = zoo.GEN2_ZOO[zoo.PAIRS[0].moe]
    short = replace(spec, name="short", shape=replace(spec.shape, layers=2), max_steps=spec.prefix_steps + 3, warmup=5)
    card = gen2.train_gen2(short, out_dir=tmp_path / "short")
    recorded = card["prefix_check"]
    assert recorded.pop("tolerance")["rtol"] > 0
    assert recorded == gen2.prefix_check(short)


@pytest.mark.slow
@pytest.mark.retrain
def test_full_retraining_reproduces_the_shipped_weights(tmp_path):
    """One full-length gen-2 training (the dense 8-layer seed-0 member, 5-7 minutes on 2 cores), bit for bit."""
    name = zoo.PAIRS[0].dense
    on_training_kind(zoo.load_card(name))
    card, shipped = gen2.train_gen2(zoo.GEN2_ZOO[name], out_dir=tmp_path / name), zoo.load_card(name)
    assert same_weights(paths.ORGANISMS / name, tmp_path / name)
    assert card["prefix_check"] == shipped["prefix_check"] and card["eval"] == shipped["eval"]


def test_ensure_gen2_trains_only_what_is_missing_or_stale(tmp_path, monkeypatch):
    """Resume: current organisms are read from their cards; a stale or missing one is (re)trained, and only it."""
    names = [zoo.PAIRS[0].moe, zoo.PAIRS[0].dense, zoo.SHARED_MOE]
    cards = {n: (paths.ORGANISMS / n / "card.json").read_text() for n in names}
    for n in names[:2]:
        (tmp_path / n).mkdir()
        (tmp_path / n / "card.json").write_text(cards[n])
    stale = tmp_path / names[1] / "card.json"
    stale.write_text(stale.read_text().replace('"spec_hash": "', '"spec_hash": "stale'))
    monkeypatch.setattr(paths, "ORGANISMS", tmp_path)
    trained = []

    def fake_train(name: str) -> dict:
        trained.append(name)
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "card.json").write_text(cards[name])
        return {}

    monkeypatch.setattr(zoo, "_train_gen2", fake_train)
    table = zoo.ensure_gen2(names)
    assert trained == names[1:] and list(table.organism) == names
    assert table.heldout_mrr.between(0, 1).all()
    assert zoo.ensure_gen2(names).equals(table) and trained == names[1:]  # now everything is current
