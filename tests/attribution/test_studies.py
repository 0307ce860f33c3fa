"""Each finding's study and its controls on tiny random models (any model, not only organisms): the numbers
they return equal an independent computation with the interventions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import random_batch, tiny_model
from moescope import arch, data, metrics
from moescope.attribution import (ablation, blocking, checks, coordination, depth, efficiency, explorer, neurons,
                                  replicas, tasks)
from moescope.capture import capture
from moescope.interventions import block_experts, fixed_routing, inhibit_heads, recorded_routing
from moescope.models import LoadedModel
from moescope.organisms import zoo
from moescope.vocab import word_tokenizer

RELS = ("country_capital", "fruit_inside_color")
N = 4


@pytest.fixture(scope="module")
def tokenizer():
    fr = tasks.facts(RELS)
    return word_tokenizer([f"{p} {o}" for p, o in zip(fr.prompt, fr.object)])


def random_lm(tokenizer, family: str, **shape) -> LoadedModel:
    model = tiny_model(family, vocab=len(tokenizer), hidden=32, **shape)
    return LoadedModel(f"random-{family}", model, tokenizer, "memory")


@pytest.fixture(scope="module")
def qwen(tokenizer):
    return random_lm(tokenizer, "qwen2_moe")


@pytest.fixture(scope="module")
def fr():
    return tasks.facts(RELS, N)


@pytest.fixture(scope="module")
def test_fr():
    return tasks.facts(RELS, N, tasks.TEST)


# ------------------------------------------------------------------------------------------------ tasks, facts
def test_model_facts_are_read_from_the_model(tokenizer, qwen, tmp_path):
    f = tasks.model_facts(qwen)
    assert (f["layers"], f["moe"], f["shared_expert"], f["experts"], f["pairs"]) == (2, True, True, 8, 16)
    assert f["checkpoint"] is None and f["mirrors"] is None and f["softmax_router"]
    dense = tasks.model_facts(random_lm(tokenizer, "llama"))
    assert not dense["moe"] and dense["pairs"] == 0 and not dense["shared_expert"]
    qwen.model.save_pretrained(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"mirrors": "allenai/OLMoE-1B-7B-0924"}))
    saved = LoadedModel(str(tmp_path), qwen.model, tokenizer, "local")
    qwen.model.config._name_or_path = str(tmp_path)
    try:
        assert tasks.paper_models(saved) == (None, "OLMoE")
    finally:
        qwen.model.config._name_or_path = ""


def test_facts_carry_task_and_family(fr):
    assert len(fr) == 2 * N * 4 and set(fr.task) == set(RELS)  # four held-out templates per fact
    assert fr.family.str.startswith("geography").sum() == 4 * N
    assert (fr.groupby(["relation", "fact"]).template.apply(list) == pd.Series([[0, 1, 2, 3]] * 2 * N).values).all()


def test_facts_fill_every_held_out_template_and_split_them():
    rel = data.load_relation("object_superclass")
    every = tasks.facts([rel])
    texts = [*rel.prompt_templates, *rel.prompt_templates_zs]
    assert len(every) == len(rel.samples) * len(texts)
    row = every.iloc[len(texts) + 2]  # the second fact on the first zero-shot template
    assert row.prompt == texts[2].replace("{}", rel.samples[1].subject) and row.fact == 1 and row.template == 2
    sel, test = tasks.facts([rel], templates=tasks.SELECTION), tasks.facts([rel], templates=tasks.TEST)
    assert set(sel.template) == {0, 2} and set(test.template) == {1, 3} and set(sel.prompt).isdisjoint(test.prompt)
    assert list(sel.fact.unique()) == list(test.fact.unique())  # the same facts on disjoint templates
    with pytest.raises(ValueError, match="out of range 0..3"):
        tasks.facts([rel], templates=[4])
    with pytest.raises(ValueError, match="templates must be"):
        tasks.facts([rel], templates="train")


def test_a_smaller_sample_is_stratified_by_object_not_the_files_first_rows():
    rel = data.load_relation("object_superclass")  # 80 facts, sorted by object in the file (10 classes)
    objects = pd.Series([s.object for s in rel.samples])
    picked = data.stratified_facts(rel, 20, seed=0)
    assert len(set(picked)) == 20 and picked == sorted(picked)
    share = objects[picked].value_counts(normalize=True)
    assert set(share.index) == set(objects) and (share - objects.value_counts(normalize=True)).abs().max() <= 0.05
    assert objects[:20].nunique() < 5  # what head(20) took
    assert data.stratified_facts(rel, 20, seed=1) != picked and data.stratified_facts(rel, 20, seed=0) == picked
    assert data.stratified_facts(rel, None) == list(range(80)) == data.stratified_facts(rel, 500)
    with pytest.raises(ValueError, match="at least 1"):
        data.stratified_facts(rel, 0)


def test_prior_mrr_ranks_objects_by_their_frequency():
    rel = data.load_relation("fruit_inside_color")
    counts = pd.Series([s.object for s in rel.samples]).value_counts()
    fr = tasks.facts([rel], templates=0)
    expected = np.mean([1 / int((counts >= counts[o]).sum()) for o in fr.object])
    assert tasks.prior_mrr(fr) == pytest.approx(expected)
    assert tasks.prior_mrr(fr[fr.object == counts.index[0]]) == 1.0  # the most common object is ranked first


# ------------------------------------------------------------------------------------------------ Table 1, depth
def test_efficiency_and_depth_on_a_depth_matched_pair(tokenizer):
    moe, dense = random_lm(tokenizer, "olmoe"), random_lm(tokenizer, "llama")
    eff = efficiency.measure([moe, dense], RELS, N)
    t = eff.table.set_index("model")
    assert (t.per_layer_efficiency - t.ffn_gain / t.layers).abs().max() < 1e-12 and (t.n == len(tasks.facts(RELS, N))).all()
    assert [(g.moe, g.dense, g.pair) for g in eff.groups] == [((moe.name,), (dense.name,), (moe.name, dense.name))]
    readings = efficiency.group_readings(eff, eff.groups[0])
    assert readings["mean MoE / best dense"] == pytest.approx(t.loc[moe.name, "per_layer_efficiency"] /
                                                              t.loc[dense.name, "per_layer_efficiency"] - 1)
    # layer 0 set apart, against the layer-level attribution summed over layers 1..L-1 directly
    per_layer = {}
    for lm in (moe, dense):
        layers = tasks.attribution(lm, tasks.facts(RELS, N, tasks.HELD_OUT), neurons=False).layers
        rest = layers[layers.layer >= 1].groupby("sample_id").ffn_gain.sum()
        per_layer[lm.name] = rest.mean() / (eff.facts[lm.name]["layers"] - 1)
    apart = efficiency.group_readings(eff.without_layer0(), eff.groups[0])
    assert apart["mean MoE / best dense"] == pytest.approx(per_layer[moe.name] / per_layer[dense.name] - 1, rel=1e-9)
    dp = depth.profile([moe, dense], RELS, N)
    assert len(dp.profile) == 4 and (dp.stages[["early", "middle", "late"]].sum(axis=1) - 1).abs().max() < 1e-9
    assert list(dp.profile[dp.profile.model == moe.name].paper_stage) == ["early", "late"]
    # the router's top-k mass: between k/E (even routing) and 1, and absent where no layer routes
    k, e = arch.top_k(moe.model), arch.num_experts(moe.model)
    mass = dp.layers[dp.layers.model == moe.name].topk_mass
    assert mass.between(k / e - 1e-6, 1 + 1e-6).all() and dp.layers[dp.layers.model == dense.name].topk_mass.isna().all()


def test_depth_matching_prefers_the_registry_then_equal_depth(monkeypatch):
    table = pd.DataFrame({"model": ["m8", "d8", "m16", "d16", "x4"], "moe": [True, False, True, False, True],
                          "layers": [8, 8, 16, 16, 4]})
    monkeypatch.setattr(zoo, "PAIRS", (zoo.Pair(8, 1, "m8", "d8"),))
    groups = replicas.depth_matched(table)
    assert [(g.label, g.moe, g.dense) for g in groups] == [("8 layers, seed 1", ("m8",), ("d8",)),
                                                            ("16 layers", ("m16",), ("d16",))]
    assert list(replicas.unmatched(table, groups).model) == ["x4"]
    monkeypatch.setattr(zoo, "seeds_of", lambda name: [name, name + "-s1"] if name == "m8" else [name])
    monkeypatch.setattr(zoo, "partner", lambda name: {"m8": "d8", "m8-s1": "d8-s1"}.get(name))
    assert replicas.with_partners(["m8", "hub/x"]) == ["m8", "d8", "m8-s1", "d8-s1", "hub/x"]
    assert replicas.with_partners(["m8"], across_seeds=False) == ["m8", "d8"]


# ------------------------------------------------------------------------------------------------ Table 2
def test_ablation_default_equals_the_model_and_neither_removes_every_expert(qwen, fr):
    abl = ablation.run(qwen, RELS, N)
    base = tasks.scores(qwen, fr)
    default = abl.ranks[abl.ranks.config == ablation.configs(2)[-1].name]
    assert abl.table[abl.table["default"]].config.item() == "shared + top-2"
    assert np.array_equal(default.sort_values("sample_id")["rank"].to_numpy(), base["rank"].to_numpy())
    from moescope.interventions import drop_routed_experts, drop_shared_expert
    with drop_shared_expert(qwen.model), drop_routed_experts(qwen.model):
        floor = tasks.scores(qwen, fr)
    neither = abl.ranks[abl.ranks.config == ablation.NEITHER].sort_values("sample_id")
    assert np.array_equal(neither["rank"].to_numpy(), floor["rank"].to_numpy())


def test_ablation_of_a_model_without_shared_expert_is_empty_with_facts(tokenizer):
    abl = ablation.run(random_lm(tokenizer, "olmoe"), RELS, 2)
    assert abl.ranks.empty and abl.table.empty and abl.facts["shared_expert"] is False


# ------------------------------------------------------------------------------------------------ Table 5
def test_random_specs_draw_distinct_pairs_reproducibly():
    pairs = [(l, e) for l in range(3) for e in range(8)]
    draws = blocking.random_specs(pairs, 10, 20, seed=3)
    for spec in draws:
        flat = [(l, e) for l, es in spec.items() for e in es]
        assert len(flat) == len(set(flat)) == 10 and set(flat) <= set(pairs)
    assert len({tuple(sorted((l, tuple(e)) for l, e in s.items())) for s in draws}) > 15  # draws differ
    assert draws == blocking.random_specs(pairs, 10, 20, seed=3)
    with pytest.raises(ValueError, match="distinct"):
        blocking.random_specs(pairs, 25, 1)


def test_blocking_ranks_on_selection_templates_and_tests_on_the_others(qwen, test_fr):
    b = blocking.run(qwen, RELS, N, ks=(1, 3), n_random=3)
    assert b.paper_ks == {"Qwen1.5-MoE": 0, "OLMoE": 0}  # 16 pairs: the paper's share is under one pair
    assert set(b.ranks.method) == {"none", "reroute", "mask", "zero"}
    assert set(b.ranks.selection) == {"original", *blocking.SELECTIONS}
    att = b.ranks[(b.ranks.selection == "attributed")]
    assert (att.n_blocked <= att.k).all() and (att.fraction == att.n_blocked / 16).all()
    # the ranking comes from the selection prompts: it equals LPI on them, not on the test prompts
    expected = blocking.rankings(qwen, tasks.facts(RELS, N, tasks.SELECTION))
    pd.testing.assert_frame_equal(b.ranking, expected)
    task, sub = "country_capital", test_fr[test_fr.task == "country_capital"]
    for selection, ranking in (("attributed", b.ranking[b.ranking.task == task]),
                               ("frequency", blocking.frequency_ranking(b.ranking[b.ranking.task == task],
                                                                        blocking.all_pairs(qwen.model)))):
        spec = blocking.top_spec(ranking, 3)
        with block_experts(qwen.model, spec):
            manual = tasks.scores(qwen, sub)["rank"].to_numpy()
        got = b.ranks[(b.ranks.selection == selection) & (b.ranks.task == task) & (b.ranks.method == "reroute")
                      & (b.ranks.k == 3)].sort_values("sample_id")["rank"]
        assert np.array_equal(got.to_numpy(), manual), selection
    original = b.ranks[b.ranks.selection == "original"].sort_values(["task", "sample_id"])
    assert len(original) == len(test_fr) and set(original.sample_id) == set(test_fr.sample_id)
    # random draws under re-routing at every k, under every method at the largest k
    rnd = b.ranks[b.ranks.selection == "random"]
    assert set(rnd[rnd.k == 1].method) == {"reroute"} and set(rnd[rnd.k == 3].method) == set(blocking.METHODS)
    assert set(rnd.draw) == {0, 1, 2}
    t = b.table()
    assert set(t.selection) == set(blocking.SELECTIONS) and (t.orig_mrr > 0).all()
    assert b.rr[(task, "original", "none", 0)].shape == (1, N)  # facts are the unit: templates averaged
    # layer 0 set apart: the same rankings among layers 1..L-1, re-routed, LAYER0_DRAWS matched draws per k
    apart = b.without_layer0()
    assert (apart.ranking.layer > 0).all() and len(apart.ranking) == int((b.ranking.layer > 0).sum())
    cond = apart.ranks[apart.ranks.selection != "original"]
    assert set(cond.method) == {"reroute"} and set(cond.k) == {1, 3}
    assert set(cond[cond.selection == "random"].draw) == set(range(blocking.LAYER0_DRAWS))
    later = [(layer, e) for layer, e in blocking.all_pairs(qwen.model) if layer > 0]
    for selection, ranking in (("attributed", apart.ranking[apart.ranking.task == task]),
                               ("frequency", blocking.frequency_ranking(apart.ranking[apart.ranking.task == task], later))):
        spec = blocking.top_spec(ranking, 3)
        assert 0 not in spec
        with block_experts(qwen.model, spec):
            manual = tasks.scores(qwen, sub)["rank"].to_numpy()
        got = cond[(cond.selection == selection) & (cond.task == task) & (cond.k == 3)].sort_values("sample_id")["rank"]
        assert np.array_equal(got.to_numpy(), manual), selection
    pd.testing.assert_frame_equal(apart.ranks[apart.ranks.selection == "original"].reset_index(drop=True),
                                  b.ranks[b.ranks.selection == "original"].reset_index(drop=True))
    with pytest.raises(ValueError, match="without layer 0 was not run"):
        blocking.run(qwen, RELS, N, ks=(1,), n_random=1, methods=("reroute",), layer0_apart=False).without_layer0()


def test_matched_random_draws_keep_the_layers_and_the_routing_frequency():
    freq = pd.DataFrame({"layer": [0] * 8 + [1] * 8, "expert": list(range(8)) * 2,
                         "selected": [9, 8, 7, 1, 1, 0, 0, 0, 5, 5, 4, 4, 3, 0, 0, 0]})
    attributed = {0: [0], 1: [0, 1]}
    draws = blocking.matched_specs(attributed, freq, 30, np.random.default_rng(0))
    for spec in draws:
        assert {l: len(e) for l, e in spec.items()} == {0: 1, 1: 2}  # same experts per layer
        assert spec[0][0] in (1, 2, 3, 4) and not set(spec[1]) & {0, 1}  # never an attributed one
        assert set(spec[1]) <= {2, 3, 4, 5, 6}  # the nearest in frequency
    assert len({tuple(s[0]) for s in draws}) > 1  # random among the pool
    assert draws == blocking.matched_specs(attributed, freq, 30, np.random.default_rng(0))


def test_per_prompt_expert_sets_in_one_batch_equal_one_pass_per_set(qwen, test_fr):
    from moescope.prompts import context_length, encode
    enc = encode(qwen.tokenizer, list(test_fr.prompt), list(test_fr.object), context_length(qwen.model))
    specs = [{0: [1, 2]}, {1: [0]}, {0: [3], 1: [4, 5]}]
    rows = np.concatenate([np.arange(len(test_fr))] * len(specs))
    per_row = [s for s in specs for _ in range(len(test_fr))]
    for method in blocking.METHODS:
        batched = blocking.score_conditions(qwen, enc, rows, per_row, method, batch_rows=5)
        for i, spec in enumerate(specs):
            with blocking.blocked(qwen.model, method, spec):
                one = tasks.scores(qwen, test_fr)["rank"].to_numpy()
            assert np.array_equal(batched[i * len(test_fr):(i + 1) * len(test_fr)], one), (method, spec)
    assert np.array_equal(blocking.score_clean(qwen, enc, batch_rows=3), tasks.scores(qwen, test_fr)["rank"].to_numpy())


# ------------------------------------------------------------------------------------------------ heads <-> experts
@pytest.mark.parametrize("family", ["qwen2_moe", "olmoe", "mixtral"])
def test_router_ig_completeness_and_clean_endpoint(family):
    model = tiny_model(family)
    ids, mask = random_batch(vocab=model.config.vocab_size)
    trace = capture(model, ids, mask)
    layer = len(trace.layers) - 1
    target = trace.layers[layer].topk_index[:, 0]
    out = coordination.router_ig(model, trace, layer, target, steps=32)
    logits = trace.layers[layer].router_logits.float()
    clean = logits.gather(1, target[:, None]).squeeze(1) - logits.mean(1)
    torch.testing.assert_close(out["f_x"], clean, atol=1e-4, rtol=1e-4)
    delta = out["f_x"] - out["f_0"]
    assert out["ig"].shape == (ids.shape[0], layer + 1, arch.num_heads(model))
    err = (out["ig"].sum((1, 2)) - delta).abs()
    assert (err <= 0.02 * delta.abs() + 1e-3).all(), (err, delta)


def test_coordination_conditions_equal_the_interventions_by_hand(qwen, test_fr):
    fr = test_fr  # interventions run on the test templates; the key heads come from the selection templates
    co = coordination.run(qwen, RELS, N, n_heads=2, n_random=3, ig_steps=8)
    sel = tasks.attribution(qwen, tasks.facts(RELS, N, tasks.SELECTION), neurons=False)
    pd.testing.assert_frame_equal(co.key_heads, coordination.key_heads(sel.heads, 2))
    spec = coordination.head_spec(co.key_heads)
    p = co.prompts
    assert np.allclose(p.rr_clean, tasks.scores(qwen, fr).rr)
    from moescope.prompts import context_length, encode
    enc = encode(qwen.tokenizer, list(fr.prompt), list(fr.object), context_length(qwen.model))
    with recorded_routing(qwen.model) as clean:
        qwen.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with inhibit_heads(qwen.model, spec), fixed_routing(qwen.model, dict(clean)):
        logits = metrics.last_token_logits(qwen.model, enc)
    assert np.allclose(p.rr_mediated, 1 / metrics.ranks(logits, enc.target_ids).numpy())
    with inhibit_heads(qwen.model, spec):
        inhibited = metrics.last_token_logits(qwen.model, enc)
    assert np.allclose(p.rr_inhibited, 1 / metrics.ranks(inhibited, enc.target_ids).numpy())
    assert p.gate_clean.between(0, 1).all() and p.gate_inhibited.between(0, 1).all()
    # random heads: distinct from the key heads, the same number, several draws
    assert set(co.random_heads.draw) == {0, 1, 2}
    assert (co.ig.completeness < 0.05).all() and co.ig.share_key.between(0, 1).all()
    assert (co.ig.share_key <= co.ig.share_all + 1e-9).all()
    assert list(co.interventions().condition)[:2] == ["clean", "key heads inhibited"]
    # key heads by router IG on the selection prompts, inhibited on the test prompts
    from moescope.capture import capture as capture_
    sel = tasks.facts(RELS, N, tasks.SELECTION)
    sel_enc = encode(qwen.tokenizer, list(sel.prompt), list(sel.object), context_length(qwen.model))
    trace = capture_(qwen.model, sel_enc.input_ids, sel_enc.attention_mask)
    moe_layers = [q.index for q in arch.layers(qwen.model) if q.is_moe]
    pd.testing.assert_frame_equal(co.ig_heads, coordination.ig_key_heads(qwen.model, trace, moe_layers, 2, 8))
    with inhibit_heads(qwen.model, coordination.head_spec(co.ig_heads)):
        by_ig = metrics.last_token_logits(qwen.model, enc)
    assert np.allclose(p.rr_inhibited_ig, 1 / metrics.ranks(by_ig, enc.target_ids).numpy())


def test_random_head_specs_avoid_the_key_heads():
    specs = coordination.random_head_specs(3, 4, 2, 10, {0: [1], 2: [3]}, seed=1)
    for s in specs:
        flat = [(l, h) for l, hs in s.items() for h in hs]
        assert len(set(flat)) == 2 and (0, 1) not in flat and (2, 3) not in flat


def test_dense_model_gets_empty_moe_studies_with_its_facts(tokenizer):
    lm = random_lm(tokenizer, "llama")
    assert coordination.run(lm, RELS, 2).pairs.empty
    b = blocking.run(lm, RELS, 2)
    assert b.facts["moe"] is False and set(b.ranks.selection) == {"original"} and b.without_layer0() is b


# ------------------------------------------------------------------------------------------------ neurons, explorer, checks
def test_neuron_roles_counts_and_shares(qwen):
    n = neurons.run(qwen, RELS, N, top=10)
    assert n.layer_counts["count"].sum() == len(tasks.facts(RELS, N)) * 10 and n.layer_counts.share.sum() == pytest.approx(1)
    assert n.contributions.shared_share.dropna().between(0, 1).all()
    assert set(n.gains.columns) >= {"sample_id", "stage", "shared", "routed", "family"}
    per_prompt = n.by_prompt.groupby("sample_id")["count"].sum()
    assert (per_prompt == 10).all() and len(per_prompt) == len(tasks.facts(RELS, N))  # every prompt's top 10
    assert n.by_prompt.groupby("layer")["count"].sum().to_dict() == n.layer_counts.groupby("layer")["count"].sum().to_dict()


def test_prompt_views_and_telescoping(qwen, fr):
    row, v = explorer.views(qwen, "country_capital", 1, top=5)
    assert set(v) == {"samples", "layers", "heads", "experts", "neurons"} and len(v["neurons"]) == 5
    assert row.prompt == tasks.facts(["country_capital"], templates=0).prompt.iloc[1]
    attr = tasks.attribution(qwen, fr, neurons=False)
    tele = checks.telescoping(qwen, fr, attr.layers, attr.samples)
    assert len(tele) == len(fr) and tele.error.max() < 1e-4
