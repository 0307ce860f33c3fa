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
    fr = data.facts_frame(data.load_relations([data.PAPER_TASKS[r] for r in RELS]), template=None)
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
    assert len(fr) == 2 * N and set(fr.task) == set(RELS)
    assert fr.family.str.startswith("geography").sum() == N


# ------------------------------------------------------------------------------------------------ Table 1, depth
def test_efficiency_and_depth_on_a_depth_matched_pair(tokenizer):
    moe, dense = random_lm(tokenizer, "olmoe"), random_lm(tokenizer, "llama")
    eff = efficiency.measure([moe, dense], RELS, N)
    t = eff.table.set_index("model")
    assert (t.per_layer_efficiency - t.ffn_gain / t.layers).abs().max() < 1e-12 and (t.n == 2 * N).all()
    assert [(g.moe, g.dense, g.pair) for g in eff.groups] == [((moe.name,), (dense.name,), (moe.name, dense.name))]
    readings = efficiency.group_readings(eff, eff.groups[0])
    assert readings["mean MoE / best dense"] == pytest.approx(t.loc[moe.name, "per_layer_efficiency"] /
                                                              t.loc[dense.name, "per_layer_efficiency"] - 1)
    dp = depth.profile([moe, dense], RELS, N)
    assert len(dp.profile) == 4 and (dp.stages[["early", "middle", "late"]].sum(axis=1) - 1).abs().max() < 1e-9
    assert list(dp.profile[dp.profile.model == moe.name].paper_stage) == ["early", "late"]


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


def test_blocking_attributed_and_random_by_every_method(qwen, fr):
    b = blocking.run(qwen, RELS, N, ks=(1, 3), n_random=2)
    assert b.paper_ks == {"Qwen1.5-MoE": 0, "OLMoE": 0}  # 16 pairs: the paper's share is under one pair
    assert set(b.ranks.method) == {"none", "reroute", "mask", "zero"}
    att = b.ranks[(b.ranks.selection == "attributed")]
    assert (att.n_blocked <= att.k).all() and (att.fraction == att.n_blocked / 16).all()
    # the attributed reroute rows equal blocking the task's top-3 ranked pairs by hand
    task = "country_capital"
    spec = blocking.top_spec(b.ranking[b.ranking.task == task], 3)
    sub = fr[fr.task == task]
    with block_experts(qwen.model, spec):
        manual = tasks.scores(qwen, sub)["rank"].to_numpy()
    got = att[(att.task == task) & (att.method == "reroute") & (att.k == 3)].sort_values("sample_id")["rank"]
    assert np.array_equal(got.to_numpy(), manual)
    # random draws are the same pairs for every task (one pass over all prompts)
    rnd = b.ranks[(b.ranks.selection == "random") & (b.ranks.k == 3) & (b.ranks.method == "zero")]
    assert set(rnd.draw) == {0, 1} and rnd.groupby("draw").size().tolist() == [len(fr)] * 2
    t = b.table()
    assert set(t.selection) == {"attributed", "random"} and (t.orig_mrr > 0).all()


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


def test_coordination_conditions_equal_the_interventions_by_hand(qwen, fr):
    co = coordination.run(qwen, RELS, N, n_heads=2, n_random=3, ig_steps=8)
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


def test_random_head_specs_avoid_the_key_heads():
    specs = coordination.random_head_specs(3, 4, 2, 10, {0: [1], 2: [3]}, seed=1)
    for s in specs:
        flat = [(l, h) for l, hs in s.items() for h in hs]
        assert len(set(flat)) == 2 and (0, 1) not in flat and (2, 3) not in flat


def test_dense_model_gets_empty_moe_studies_with_its_facts(tokenizer):
    lm = random_lm(tokenizer, "llama")
    assert coordination.run(lm, RELS, 2).pairs.empty
    b = blocking.run(lm, RELS, 2)
    assert b.facts["moe"] is False and set(b.ranks.selection) == {"original"}


# ------------------------------------------------------------------------------------------------ neurons, explorer, checks
def test_neuron_roles_counts_and_shares(qwen):
    n = neurons.run(qwen, RELS, N, top=10)
    assert n.layer_counts["count"].sum() == 2 * N * 10 and n.layer_counts.share.sum() == pytest.approx(1)
    assert n.contributions.shared_share.dropna().between(0, 1).all()
    assert set(n.gains.columns) >= {"sample_id", "stage", "shared", "routed", "family"}


def test_prompt_views_and_telescoping(qwen, fr):
    row, v = explorer.views(qwen, "country_capital", 1, top=5)
    assert set(v) == {"samples", "layers", "heads", "experts", "neurons"} and len(v["neurons"]) == 5
    assert row.prompt == fr[fr.task == "country_capital"].prompt.iloc[1]
    attr = tasks.attribution(qwen, fr, neurons=False)
    tele = checks.telescoping(qwen, fr, attr.layers, attr.samples)
    assert len(tele) == len(fr) and tele.error.max() < 1e-4
