"""Findings of the attribution paper (moescope.attribution.findings) and its numbers (moescope.attribution.paper)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from moescope import arch, metrics
from moescope.attribution import findings, paper
from moescope.capture import capture

from conftest import random_batch, tiny_model

RELS = ("country_capital", "fruit_inside_color")


@pytest.fixture(scope="module")
def olmoe():
    return findings.loaded("olmoe-like")


@pytest.fixture(scope="module")
def qwen():
    return findings.loaded("qwen-moe-like")


# ------------------------------------------------------------------------------------------------ paper numbers
def test_table1_efficiency_is_ffn_gain_over_layers():
    t = paper.TABLE1
    assert ((t.ffn_gain / t.layers - t.per_layer_efficiency).abs() < 6e-4).all()


def test_efficiency_readings_reproduce_the_papers_percentages():
    r = paper.paper_efficiency_readings()
    assert round(r["mean MoE / best dense"], 2) == 0.31  # ACL abstract
    assert round(r["mean MoE / paired dense"], 2) == 0.36  # ~ arXiv v1's 37%
    assert round(r["paired MoE / paired dense"], 2) == 0.51
    assert round(r["mean MoE / mean dense"], 2) == 0.44


def test_table5_drops_and_76_reading():
    t = paper.TABLE5.set_index(["task", "model"])
    assert t.loc[("country_capital", "Qwen1.5-MoE"), "drop@10"] == pytest.approx(0.437, abs=1e-3)
    assert t["drop@10"].max() < 0.76  # the abstract's "76% drop" matches no row: hence two readings
    assert t.loc[("country_capital", "OLMoE"), "block10"] == 0.76


def test_stage_of_uses_paper_boundaries():
    assert [paper.stage_of((l + 1) / 24) for l in (12, 13, 18, 19)] == ["early", "middle", "middle", "late"]


def test_verdict_criteria():
    assert paper.verdict(0.68, 0.60) == "reproduced"  # within 25%
    assert paper.verdict(0.68, 0.30) == "not reproduced"
    assert paper.verdict(0.68, 0.30, because="tiny") == "differs because tiny"
    assert paper.verdict(0.31, 0.9, mode="sign") == "reproduced"
    assert paper.verdict(0.31, -0.1, mode="sign") == "not reproduced"
    assert paper.verdict(0.85, 0.99, mode="at_least") == "reproduced"
    assert paper.verdict(0.01, 0.5, mode="at_most") == "not reproduced"
    assert paper.verdict(0.5, float("nan")) == "not reproduced"
    with pytest.raises(ValueError):
        paper.verdict(1, 1, mode="bogus")


def test_paper_name_maps_organisms():
    assert paper.paper_name("qwen-moe-like") == "Qwen1.5-MoE"
    assert paper.paper_name("allenai/OLMoE-1B-7B-0924") == "OLMoE"
    assert paper.paper_name("something-else") is None


# ------------------------------------------------------------------------------------------------ findings
def test_facts_carry_task_and_family():
    fr = findings.facts(RELS, n_samples=3)
    assert len(fr) == 6 and set(fr.task) == set(RELS)
    assert fr.family.str.startswith("geography").sum() == 3


def test_table1_row_is_consistent(olmoe):
    t = findings.table1([olmoe], RELS, n_samples=4)
    r = t.iloc[0]
    assert r.moe and r.layers == 2 and r.paper_model == "OLMoE" and r.n == 8
    assert r.per_layer_efficiency == pytest.approx(r.ffn_gain / 2)
    assert 0 < r.peak_position <= 1


def test_depth_profile_shares_sum_to_one(olmoe):
    d = findings.depth_profile([olmoe], RELS, n_samples=4)
    assert len(d.profile) == 2
    assert (d.stages[["early", "middle", "late"]].sum(axis=1) - 1).abs().max() < 1e-9
    # 2 layers: the paper's split puts layer 2 (depth 1.0) in "late", the thirds in "middle"
    assert list(d.profile.paper_stage) == ["early", "late"] and list(d.profile.stage) == ["early", "middle"]


def test_shared_routed_ablation_needs_a_shared_expert(olmoe):
    with pytest.raises(arch.ArchitectureError, match="shared expert"):
        findings.shared_routed_ablation(olmoe, RELS, n_samples=2)


def test_shared_routed_ablation_default_row_equals_unmodified_model(qwen):
    table = findings.shared_routed_ablation(qwen, RELS, n_samples=4)
    base = metrics.hit_mrr(findings._scores(qwen, findings.facts(RELS, 4))["rank"])
    default = table[table.default].iloc[0]
    assert default.top_k == arch.top_k(qwen.model)
    assert default.mrr == pytest.approx(base["mrr"]) and default["hit@10"] == pytest.approx(base["hit@10"])
    assert set(table.config) >= {"top-1 routed only", "shared only", "shared + top-1"}


def test_blocking_k0_equals_original(olmoe):
    t = findings.blocking(olmoe, RELS, n_samples=4, ks=(0, 10))
    k0 = t[t.k == 0]
    assert (k0.n_blocked == 0).all()
    assert (k0.mrr == k0.orig_mrr).all() and (k0["drop"] == 0).all()
    k10 = t[t.k == 10]
    assert k10.n_blocked.between(1, 10).all()  # only experts selected by some sample are ranked


def test_blocking_rejects_unknown_method(olmoe):
    with pytest.raises(ValueError, match="method"):
        findings.blocking(olmoe, RELS, n_samples=2, ks=(1,), methods=("drop",))


@pytest.mark.parametrize("family", ["qwen2_moe", "olmoe", "mixtral"])
def test_router_ig_completeness_and_clean_endpoint(family):
    model = tiny_model(family)
    ids, mask = random_batch(vocab=model.config.vocab_size)
    trace = capture(model, ids, mask)
    layer = len(trace.layers) - 1
    target = trace.layers[layer].topk_index[:, 0]
    out = findings.router_ig(model, trace, layer, target, steps=32)
    # f(x) recomputed along the path equals the clean run's centered router logit
    logits = trace.layers[layer].router_logits.float()
    clean = logits.gather(1, target[:, None]).squeeze(1) - logits.mean(1)
    torch.testing.assert_close(out["f_x"], clean, atol=1e-4, rtol=1e-4)
    # completeness: sum of attributions = f(x) - f(0)
    delta = out["f_x"] - out["f_0"]
    assert out["ig"].shape == (ids.shape[0], layer + 1, arch.num_heads(model))
    err = (out["ig"].sum((1, 2)) - delta).abs()
    assert (err <= 0.02 * delta.abs() + 1e-3).all(), (err, delta)


def test_head_expert_coordination_on_organism(qwen):
    c = findings.head_expert_coordination(qwen, RELS, n_samples=4, n_heads=2, ig_steps=16)
    assert len(c.key_heads) == 2 and c.correlation.r.between(-1, 1).all()
    s = c.summary.iloc[0]
    assert s.ig_completeness_error < 0.05
    assert 0 <= s.ig_share_key <= s.ig_share_all <= 1
    assert list(c.interventions.condition) == ["clean", "heads inhibited", "inhibited + experts forced"]
    base = metrics.hit_mrr(findings._scores(qwen, findings.facts(RELS, 4))["rank"])
    assert c.interventions.mrr[0] == pytest.approx(base["mrr"])


def test_head_expert_coordination_rejects_dense():
    with pytest.raises(arch.ArchitectureError):
        findings.head_expert_coordination("llama-like", RELS, n_samples=2)


def test_neuron_roles_tables(qwen):
    n = findings.neuron_roles(qwen, RELS, n_samples=4, top=20)
    assert n.layer_counts["count"].sum() == 8 * 20
    assert n.layer_counts.share.sum() == pytest.approx(1)
    assert set(n.layer_counts.kind) <= {"shared", "routed"}
    assert n.contributions.shared_share.between(0, 1).all()
    assert set(n.top_kind.family) == {"geography (core-sensitive)", "object attributes (distributed-tolerant)"}


def test_prompt_views_has_every_level(qwen):
    v = findings.prompt_views(qwen, "The capital city of France is", "Paris", top=5)
    assert set(v) == {"samples", "layers", "heads", "experts", "neurons"} and len(v["neurons"]) == 5
    assert not math.isnan(v["samples"].logprob[0]) and isinstance(v["layers"], pd.DataFrame)
