"""The kit's estimates (moescope.attribution.evidence) on synthetic results with known answers: each claim's
statistic, its control and its interval, decided both ways."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from moescope import statistics, verdicts as v
from moescope.attribution import ablation, claims, coordination, evidence, paper, replicas
from moescope.attribution.blocking import Blocking
from moescope.attribution.coordination import Coordination
from moescope.attribution.neurons import NeuronRoles
from moescope.attribution.depth import DepthProfile
from moescope.attribution.efficiency import Efficiency, table1
from moescope.kit import report

RNG = np.random.default_rng(0)


def by_claim(rows):
    return {r["claim"]: r for r in rows}


# ------------------------------------------------------------------------------------------------ statistics
def test_within_layer_r_is_pearson_per_layer_and_nan_when_constant():
    x, y = RNG.normal(size=(50, 3)), RNG.normal(size=(50, 3))
    y[:, 0] += 2 * x[:, 0]
    y[:, 2] = 1.0
    r = coordination.within_layer_r(x, y)
    assert r[0] == pytest.approx(stats.pearsonr(x[:, 0], y[:, 0])[0])
    assert r[1] == pytest.approx(stats.pearsonr(x[:, 1], y[:, 1])[0]) and np.isnan(r[2])
    assert coordination.mean_r(x, y) == pytest.approx(np.nanmean(r[:2]))
    s = coordination.shuffled(y, np.random.default_rng(1))
    assert (np.sort(s, 0) == np.sort(y, 0)).all() and not (s == y).all()
    many = coordination.shuffled(x, np.random.default_rng(1), times=5)
    assert many.shape == (5, 50, 3) and (np.sort(many, 1) == np.sort(x, 0)).all()
    assert coordination.mean_r(np.stack([x, x]), np.stack([y, x])) == pytest.approx([np.nanmean(r[:2]), 1.0])


def test_eta_squared_and_ratio_statistics():
    groups = np.array(["a"] * 5 + ["b"] * 5)
    assert statistics.eta_squared(np.r_[np.zeros(5), np.ones(5)], groups) == pytest.approx(1.0)
    assert statistics.eta_squared(np.tile([0.0, 1.0], 4), groups[1:9]) == pytest.approx(0.0)  # equal group means
    idx = np.arange(4)
    before, after = np.array([1.0, 1, 1, 1]), np.array([0.5, 0.5, 1, 1])
    assert evidence.ratio_drop(before, after)(idx) == pytest.approx(0.25)
    assert evidence.ratio_drop(before, after)(np.stack([idx, np.array([0, 0, 1, 1])])) == pytest.approx([0.25, 0.5])
    assert evidence.recovered(np.zeros(4), np.ones(4), np.full(4, 0.3))(idx) == pytest.approx(0.3)
    assert np.isnan(evidence.recovered(np.ones(4), np.ones(4), np.ones(4))(idx))
    batch = np.stack([np.tile([0.0, 1.0], 4), np.r_[np.zeros(4), np.ones(4)]])
    assert statistics.eta_squared(batch, groups[1:9]) == pytest.approx([0.0, 1.0])


def test_combine_pools_seeds_with_a_t_interval():
    one = v.Estimate(1.0, 0.9, 1.1, 20, "prompts")
    assert statistics.over_seeds([one]) == v.Estimate(1.0, 0.9, 1.1, 20, "prompts, one model")  # flagged: one model
    three = statistics.over_seeds([v.Estimate(1.0), v.Estimate(2.0), v.Estimate(3.0)])
    assert (three.value, three.over, three.n) == (2.0, "seeds", 3) and three.low < 1.0
    assert np.isnan(statistics.over_seeds([v.Estimate(1.0), v.Estimate(float("nan"))]).value)


def test_stratified_bootstrap_resamples_within_tasks():
    a, b = np.ones(30), np.zeros(10)
    est = statistics.stratified(lambda idx: a[idx["a"]].mean() - b[idx["b"]].mean(), {"a": 30, "b": 10})
    assert (est.value, est.low, est.high, est.n) == (1.0, 1.0, 1.0, 40)


# ------------------------------------------------------------------------------------------------ Table 1
def efficiency_of(ratio: float, n: int = 200) -> Efficiency:
    """An MoE and a dense model of equal depth, the MoE's FFN gain ``ratio`` times the dense one's (with noise)."""
    dense = RNG.normal(2.0, 0.05, n)
    samples = pd.concat([pd.DataFrame({"model": m, "sample_id": range(n), "task": "t", "family": "f", "rank": 2,
                                       "ffn_gain": g, "attn_gain": 0.0, "peak_position": 1.0})
                         for m, g in (("moe", dense * ratio), ("dense", dense))], ignore_index=True)
    facts = {m: {"model": m, "moe": m == "moe", "layers": 8, "checkpoint": None, "mirrors": None} for m in ("moe", "dense")}
    t = table1(samples, facts)
    return Efficiency(samples, t, facts, replicas.depth_matched(t))


def test_efficiency_advantage_on_a_depth_matched_pair():
    rows = by_claim(evidence.table1_rows(efficiency_of(1.31)))
    assert rows["T1.advantage.direction"]["verdict"] == "reproduced"
    acl = rows["T1.advantage.acl31"]
    assert acl["kit"] == pytest.approx(0.31, abs=0.01) and acl["kit_low"] <= acl["kit"] <= acl["kit_high"]  # the MoE gain is exactly 1.31 x: the interval may collapse
    assert rows["T1.advantage.acl31"]["verdict"] == rows["T1.advantage.arxiv37"]["verdict"] == "reproduced"
    assert rows["T1.advantage.qwen51"]["verdict"] == "not reproduced"
    same = by_claim(evidence.table1_rows(efficiency_of(1.0)))
    assert same["T1.advantage.direction"]["verdict"] == same["T1.advantage.acl31"]["verdict"] == "not reproduced"


def test_efficiency_advantage_with_layer0_set_apart():
    """Without layer 0 the sums start at layer 1 and the per-layer divisor is L - 1: an MoE whose advantage sits in
    its first layer (1.31x in total, 1.08x over layers 1..7) is read on the rest."""
    eff = efficiency_of(1.31)
    s = eff.samples
    eff.samples = s.assign(ffn_gain_layer0=np.where(s.model == "moe", s.ffn_gain - 1.08 * 1.5, 0.5), attn_gain_layer0=0.0)
    dense = s[s.model == "dense"].ffn_gain.to_numpy()
    eff.samples.loc[eff.samples.model == "dense", "ffn_gain_layer0"] = dense - 1.5
    apart = eff.without_layer0()
    assert apart.layers_counted("moe") == 7 and eff.layers_counted("moe") == 8
    assert np.allclose(apart.ffn["moe"], 1.08 * 1.5) and np.allclose(apart.ffn["dense"], 1.5)
    rows = by_claim(evidence.advantage_rows(apart, evidence.WITHOUT_LAYER0))
    acl = rows["T1.advantage.acl31"]
    assert acl["kit"] == pytest.approx(0.08) and acl["reading"] == evidence.WITHOUT_LAYER0
    assert acl["verdict"] == "not reproduced"  # 1.08x is far below the paper's +31%
    assert by_claim(evidence.table1_rows(eff))["T1.advantage.acl31"]["kit"] == pytest.approx(0.31, abs=0.01)


def efficiency_by_depth(ratios: dict[int, float], seeds: int = 3, n: int = 100) -> Efficiency:
    """One-to-one MoE/dense pairs at each depth (``ratios``: depth -> the MoE's FFN gain / the dense one's), ``seeds``
    pairs per depth, each seed with its own noise."""
    frames, facts, groups = [], {}, []
    for depth, ratio in ratios.items():
        for s in range(seeds):
            dense = RNG.normal(2.0, 0.05, n)
            moe, den = f"moe-l{depth}-s{s}", f"dense-l{depth}-s{s}"
            for m, g in ((moe, dense * ratio * RNG.uniform(0.97, 1.03)), (den, dense)):
                frames.append(pd.DataFrame({"model": m, "sample_id": range(n), "task": "t", "family": "f", "rank": 2,
                                            "ffn_gain": g * depth, "attn_gain": 0.0, "peak_position": 1.0}))
                facts[m] = {"model": m, "moe": m == moe, "layers": depth, "checkpoint": None, "mirrors": None}
            groups.append(replicas.Group(f"{depth} layers, seed {s}", depth, (moe,), (den,), (moe, den)))
    samples = pd.concat(frames, ignore_index=True)
    return Efficiency(samples, table1(samples, facts), facts, groups)


def test_efficiency_advantage_per_depth_and_pooled_is_one_claim():
    """Depths are strata, not replicates: a row per depth (over its seeds) and the pooled row, one claim each."""
    rows = evidence.advantage_rows(efficiency_by_depth({8: 1.31, 16: 0.8}))
    direction = [r for r in rows if r["claim"] == "T1.advantage.direction"]
    assert [r["model"].split(":")[0] for r in direction] == ["8 layers", "16 layers", "pooled over depths"]
    eight, sixteen, pooled = direction
    assert eight["verdict"] == "reproduced" and sixteen["verdict"] == "not reproduced"
    assert (eight["over"], eight["n"]) == ("seeds x prompts (8-layer pairs)", 3)
    assert eight["model"] == "8 layers: moe-l8-s0 (+2 seeds) vs dense-l8-s0 (+2 seeds)"
    assert pooled["kit"] == pytest.approx((eight["kit"] + sixteen["kit"]) / 2)
    assert pooled["over"] == "depths (8, 16 layers) x seeds x prompts" and pooled["verdict"] == "reproduced"
    # the pooled interval is the strata's own error: narrower than the t interval over the six pairs' values
    six = v.over_seeds([0.31] * 3 + [-0.2] * 3)
    assert pooled["kit_high"] - pooled["kit_low"] < six.high - six.low
    tally = report.counts(v.table(rows).assign(role="claim"))
    assert tally.claims.sum() == len(claims.ADVANTAGE) + len(claims.ATTENTION) + 1 and tally.rows.sum() == len(rows) == 3 * tally.claims.sum()
    one = by_claim(evidence.advantage_rows(efficiency_by_depth({8: 1.31}, seeds=1)))["T1.advantage.direction"]
    assert one["model"] == "moe-l8-s0, dense-l8-s0" and "one model: the interval is over prompts" in one["note"]


def test_rows_on_one_trained_model_say_so():
    rows = [*evidence.table2_rows([ablation_of(PAPERLIKE)]), *evidence.coordination_rows([coordination_of(0.68, 0.9)])]
    flagged = [r for r in rows if "one model: the interval is over prompts, not over trained models" in r["note"]]
    assert len(flagged) == sum(np.isfinite(r["kit_low"]) for r in rows) > 5
    seeds = evidence.table2_rows([ablation_of(PAPERLIKE)] * 3)
    assert not any("one model" in r["note"] for r in seeds)


def test_efficiency_without_depth_matched_models_is_not_testable():
    eff = efficiency_of(1.31)
    eff.facts["dense"]["layers"] = 4
    eff.table.loc[eff.table.model == "dense", "layers"] = 4
    eff.groups = replicas.depth_matched(eff.table)
    row = by_claim(evidence.table1_rows(eff))["T1.advantage.acl31"]
    assert row["verdict"] == "not testable: number of depth-matched MoE/dense groups is 0, needs at least 1"
    assert "not matched: moe (8 layers), dense (4 layers)" in row["note"]


# ------------------------------------------------------------------------------------------------ depth
def depth_of(shares: dict[str, float], layers: int = 24, n: int = 100,
             mass: dict[str, float] | None = None) -> DepthProfile:
    """Stage shares of the FFN gain, and (``mass``) the router's top-k mass per stage (absent: no such column)."""
    stage = [paper.stage_of((l + 1) / layers) for l in range(layers)]
    per_layer = np.array([shares[s] / stage.count(s) for s in stage])
    rows = [{"model": "m", "sample_id": i, "task": "t", "family": "f", "rank": 2, "layer": l, "depth": (l + 1) / layers,
             "attn_gain": 0.0, "ffn_gain": per_layer[l] * RNG.uniform(0.95, 1.05), "stage": "x", "paper_stage": stage[l]}
            | ({"topk_mass": mass[stage[l]] + RNG.normal(0, 0.05)} if mass else {})
            for i in range(n) for l in range(layers)]
    facts = {"m": {"model": "m", "moe": True, "layers": layers, "shared_expert": True}}
    return DepthProfile(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), facts)


def test_depth_stage_claims_both_ways():
    rows = by_claim(evidence.depth_rows(depth_of(paper.STAGE_SHARES)))
    assert all(rows[f"depth.stage.{s}"]["verdict"] == "reproduced" for s in ("early", "middle", "late"))
    assert rows["depth.late_amplification"]["verdict"] == "reproduced"
    # the densest layers are the late ones, 20-24 of 24: a peak at 0.92 on the band's upper edge (0.84 +/- 0.08)
    assert rows["depth.peak"]["verdict"] == "inconclusive" and "half-width below" in rows["depth.peak"]["note"]
    flipped = by_claim(evidence.depth_rows(depth_of({"early": 0.6, "middle": 0.3, "late": 0.1})))
    assert flipped["depth.stage.early"]["verdict"] == flipped["depth.late_amplification"]["verdict"] == "not reproduced"
    assert flipped["depth.peak"]["verdict"] == "not reproduced"  # the densest layers are now 14-19
    shallow = by_claim(evidence.depth_rows(depth_of(paper.STAGE_SHARES, layers=3)))
    assert shallow["depth.stage.late"]["verdict"] == "not testable: depth (layers) is 3, needs at least 8"


def test_screening_compares_the_routers_top_k_mass_early_and_late():
    screens = by_claim(evidence.depth_rows(depth_of(paper.STAGE_SHARES, mass={"early": .8, "middle": .6, "late": .4})))
    assert screens["depth.screening"]["verdict"] == "reproduced"
    assert screens["depth.screening"]["kit"] == pytest.approx(0.4, abs=0.02)
    spreads = by_claim(evidence.depth_rows(depth_of(paper.STAGE_SHARES, mass={"early": .4, "middle": .6, "late": .8})))
    assert spreads["depth.screening"]["verdict"] == "not reproduced"


# ------------------------------------------------------------------------------------------------ Table 2
def ablation_of(mrr: dict[str, float], n: int = 1000) -> ablation.Ablation:
    """Per-prompt reciprocal ranks with the given mean per configuration (rr in {1, 0.5, ...} mixed)."""
    cfgs = ablation.configs(4)
    frames = []
    for cfg in cfgs:
        rr = np.where(RNG.uniform(size=n) < mrr[cfg.name], 1.0, 1e-3)
        frames.append(pd.DataFrame({"config": cfg.name, "sample_id": range(n), "task": "t", "rank": 1 / rr, "rr": rr}))
    ranks = pd.concat(frames, ignore_index=True)
    facts = {"model": "m", "moe": True, "shared_expert": True, "top_k": 4, "baseline_mrr": mrr["shared + top-4"]}
    return ablation.Ablation(ranks, ablation.summarize(ranks, cfgs), facts)


PAPERLIKE = {"top-1 routed only": 0.0, "top-2 routed only": 0.0, "shared only": 0.02, ablation.NEITHER: 0.0,
             "shared + top-1": 0.6, "shared + top-2": 0.63, "shared + top-4": 0.63}


def test_table2_recovered_share_against_the_neither_floor():
    rows = by_claim(evidence.table2_rows([ablation_of(PAPERLIKE)]))
    assert all(r["verdict"] == "reproduced" for r in rows.values()), rows
    assert rows["T2.shared_only"]["control_value"] == pytest.approx(0.0, abs=0.01)
    redundant = by_claim(evidence.table2_rows([ablation_of(PAPERLIKE | {"top-1 routed only": 0.6})]))
    assert redundant["T2.routed_only.top1"]["verdict"] == "not reproduced"
    at_floor = by_claim(evidence.table2_rows([ablation_of({k: 0.95 for k in PAPERLIKE})]))
    assert at_floor["T2.shared_top1"]["verdict"].startswith(
        "not testable: MRR lost when the shared and routed experts are both removed is")


# ------------------------------------------------------------------------------------------------ Table 5
def blocking_of(attributed_drop: float, random_drop: float, n: int = 500, draws: int = 3, seed: int = 0,
                frequency_drop: float = 0.0, prior: float = 0.1) -> Blocking:
    frames = []
    rng = np.random.default_rng(seed)
    for task in paper.TABLE5.task.unique():
        def rr(p):
            return np.where(rng.uniform(size=n) < p, 0.5, 0.5 * 1e-3)
        frames.append(pd.DataFrame({"task": task, "sample_id": range(n), "method": "none", "k": 0,
                                    "selection": "original", "draw": 0, "n_blocked": 0, "rr": np.full(n, 0.5)}))
        for method in ("reroute", "mask", "zero"):
            for k in (1, 5, 10, 7):
                frames.append(pd.DataFrame({"task": task, "sample_id": range(n), "method": method, "k": k,
                                            "selection": "attributed", "draw": 0, "n_blocked": k,
                                            "rr": rr(1 - attributed_drop)}))
                frames += [pd.DataFrame({"task": task, "sample_id": range(n), "method": method, "k": k,
                                         "selection": "random", "draw": d, "n_blocked": k, "rr": rr(1 - random_drop)})
                           for d in range(draws)]
                frames.append(pd.DataFrame({"task": task, "sample_id": range(n), "method": method, "k": k,
                                            "selection": "frequency", "draw": 0, "n_blocked": k,
                                            "rr": rr(1 - frequency_drop)}))
    ranks = pd.concat(frames, ignore_index=True)
    ranks["fact"] = ranks.sample_id
    ranks["rank"] = 1 / ranks.rr
    ranks["fraction"] = ranks.n_blocked / 1000
    facts = {"model": "m", "moe": True, "shared_expert": False, "pairs": 1000, "layers": 16, "baseline_mrr": 0.5,
             "task_mrr": {t: 0.5 for t in paper.TABLE5.task.unique()},
             "task_prior": {t: prior for t in paper.TABLE5.task.unique()}}
    return Blocking(ranks, pd.DataFrame({"task": ["t"]}), {"Qwen1.5-MoE": 7, "OLMoE": 10}, facts)


def test_table5_under_the_reading_without_layer0_decides_its_own_rows_and_leaves_out_what_it_did_not_block():
    paper_reading, apart = blocking_of(0.25, 0.0), blocking_of(0.0, 0.0, seed=1)
    rerouted = apart.ranks[apart.ranks.method.isin(["none", "reroute"])]
    variant = Blocking(rerouted, apart.ranking, apart.paper_ks, apart.facts)
    rows = evidence.table5_rows({"m": [variant]}, evidence.WITHOUT_LAYER0)
    assert rows and {r["reading"] for r in rows} == {evidence.WITHOUT_LAYER0}
    ids = {r["claim"] for r in rows}
    assert "T5.attributed_vs_random.reroute.country_capital" in ids
    assert not any(".mask." in i or ".zero." in i for i in ids)  # not blocked under this reading: no row
    both = by_claim(evidence.table5_model_rows([paper_reading]))
    mine = by_claim(rows)
    cid = "T5.attributed_vs_random.reroute.country_capital"
    assert both[cid]["verdict"] == "reproduced" and mine[cid]["verdict"] != "reproduced"
    table = v.survival(evidence.table5_model_rows([paper_reading]) + rows).set_index("claim")
    assert not table.loc[cid, "survives"]
    assert "T5.attributed_vs_random.mask.country_capital" not in table.index  # no variant row: not in the table


def test_table5_attributed_against_random_and_the_76_readings():
    rows = by_claim(evidence.table5_model_rows([blocking_of(0.25, 0.0)]))
    assert rows["T5.attributed_vs_random.reroute.country_capital"]["verdict"] == "reproduced"
    assert rows["T5.OLMoE.country_capital.top10"]["kit"] == pytest.approx(0.25, abs=0.08)
    assert rows["T5.OLMoE.country_capital.top10"]["verdict"] == "reproduced"  # paper: 0.24
    assert rows["T5.olmoe76.falls_to"]["verdict"] == "reproduced"
    assert rows["T5.olmoe76.drop_of"]["verdict"] == "not reproduced"
    assert "T5.Qwen1.5-MoE.country_capital.top10" not in rows  # compared with the paper model of its architecture
    share = rows["T5.OLMoE.country_capital.share"]
    assert share["note"].startswith("k = 10 of 1000 pairs; absolute MRR drop 0.1") and "one model: " in share["note"]
    null = by_claim(evidence.table5_model_rows([blocking_of(0.25, 0.25)]))
    assert null["T5.attributed_vs_random.reroute.country_capital"]["verdict"] == "inconclusive"  # no effect either way
    worse = by_claim(evidence.table5_model_rows([blocking_of(0.0, 0.25)]))
    assert worse["T5.attributed_vs_random.reroute.country_capital"]["verdict"] == "not reproduced"
    row = rows["T5.attributed_vs_random.reroute.country_capital"]  # decided on the paired difference
    assert row["diff"] == pytest.approx(row["kit"] - row["control_value"]) and "paired" in row["note"]
    assert row["diff_low"] >= row["kit_low"] - row["control_high"]


def test_table5_lpi_ranking_against_the_routing_frequency_ranking():
    better = by_claim(evidence.table5_model_rows([blocking_of(0.5, 0.0, frequency_drop=0.1)]))
    row = better["T5.attributed_vs_frequency.country_capital"]
    assert row["verdict"] == "reproduced" and row["control_value"] == pytest.approx(0.05, abs=0.02)
    assert row["diff"] == pytest.approx(row["kit"] - row["control_value"]) and row["role"] == "control"
    same = by_claim(evidence.table5_model_rows([blocking_of(0.5, 0.0, frequency_drop=0.5)]))
    assert same["T5.attributed_vs_frequency.country_capital"]["verdict"] == "inconclusive"
    worse = by_claim(evidence.table5_model_rows([blocking_of(0.1, 0.0, frequency_drop=0.5)]))
    assert worse["T5.attributed_vs_frequency.country_capital"]["verdict"] == "not reproduced"


def test_table5_floor_relative_to_the_prior_gates_only_a_null_result():
    """Baseline MRR 0.5 against a prior of 0.48: the relation is not known beyond its prior. A clear effect
    stands (with the gate named in its note), a null result becomes not testable."""
    effect = by_claim(evidence.table5_model_rows([blocking_of(0.6, 0.0, prior=0.48)]))
    row = effect["T5.attributed_vs_random.reroute.country_capital"]
    assert row["verdict"] == "reproduced" and "object-frequency prior" in row["note"]
    null = by_claim(evidence.table5_model_rows([blocking_of(0.25, 0.25, prior=0.48)]))
    assert null["T5.attributed_vs_random.reroute.country_capital"]["verdict"].startswith(
        "not testable: baseline MRR above the relation's object-frequency prior is 0.02")
    known = by_claim(evidence.table5_model_rows([blocking_of(0.25, 0.25, prior=0.1)]))
    assert known["T5.attributed_vs_random.reroute.country_capital"]["verdict"] == "inconclusive"


def test_table5_at_a_low_baseline_controls_are_absolute_mrr_differences():
    """A low baseline (MRR 0.05) that random blocking raises to 0.3: the ratio drops reach -5 and their difference 6,
    past anything possible; the control is decided on MRR differences, bounded by [-1, 1]."""
    b = blocking_of(0.25, 0.0, n=200)
    r = b.ranks
    orig = r.selection == "original"
    r.loc[orig, "rr"] = np.where(r.loc[orig, "sample_id"] % 20 == 0, 1.0, 0.0)  # MRR 0.05
    r.loc[r.selection == "attributed", "rr"] = 0.0
    r.loc[r.selection == "random", "rr"] = 0.3
    b.facts["task_mrr"] = {t: 0.05 for t in b.facts["task_mrr"]}
    rows = by_claim(evidence.table5_model_rows([b]))
    ctl = rows["T5.attributed_vs_random.reroute.country_capital"]
    assert ctl["kit"] == pytest.approx(0.05) and ctl["control_value"] == pytest.approx(-0.25)
    assert ctl["diff"] == pytest.approx(0.3) and -1 <= ctl["diff_low"] <= ctl["diff_high"] <= 1
    assert ctl["verdict"] == "reproduced" and "absolute (same prompts)" in ctl["statistic"]
    size = rows["T5.OLMoE.country_capital.top10"]
    assert size["kit"] == pytest.approx(1.0) and size["control_value"] == pytest.approx(-5.0)  # relative: the paper's
    assert np.isnan(size["diff"]) and "absolute MRR drop 0.05 [" in size["note"]
    assert "minus random 0.3 [" in size["note"]
    assert "decided on this relative drop" in size["statistic"]


def test_table5_contrast_needs_both_kinds_of_moe():
    shallow, deep = blocking_of(0.3, 0.0), blocking_of(0.05, 0.0)
    deep.facts = deep.facts | {"shared_expert": True, "layers": 24, "model": "deep"}
    rows = evidence.table5_contrast_rows({"shallow": [shallow], "deep": [deep]})
    assert rows[0]["verdict"] == "reproduced" and rows[0]["kit"] == pytest.approx(0.25, abs=0.08)
    alone = evidence.table5_contrast_rows({"shallow": [shallow]})
    assert alone[0]["verdict"].startswith("not testable: the model lacks a contrast in the run")
    assert rows[1]["claim"] == "T5.shared_equal_depth" and rows[1]["verdict"].startswith("not testable")  # 16 vs 24
    same = blocking_of(0.05, 0.0)
    same.facts = same.facts | {"shared_expert": True, "model": "same"}  # 16 layers, with a shared expert
    equal = by_claim(evidence.table5_contrast_rows({"shallow": [shallow], "deep": [deep], "same": [same]}))
    assert equal["T5.shared_equal_depth"]["verdict"] == "reproduced"
    assert equal["T5.shared_equal_depth"]["kit"] == pytest.approx(0.25, abs=0.08)
    assert "with one: same (16 layers)" in equal["T5.shared_equal_depth"]["note"]


# ------------------------------------------------------------------------------------------------ heads <-> experts
def coordination_of(r: float, mediated: float, n: int = 400, layers=(0, 1, 2)) -> Coordination:
    x = RNG.normal(size=(n, len(layers)))
    y = r * x + np.sqrt(1 - r**2) * RNG.normal(size=x.shape)
    pairs = pd.DataFrame([{"sample_id": i, "layer": l, "x": x[i, j], "x_top": 0.0, "y": y[i, j], "gate": 0.5,
                           "y_next": y[i, j] if j < len(layers) - 1 else np.nan}
                          for i in range(n) for j, l in enumerate(layers)])
    clean, inhibited = np.full(n, 0.6), np.full(n, 0.6 * 0.71)
    prompts = pd.DataFrame({"sample_id": range(n), "rr_clean": clean, "rr_inhibited": inhibited,
                            "rr_mediated": inhibited + mediated * (clean - inhibited),
                            "rr_forced": inhibited + 0.85 * (clean - inhibited),
                            "gate_clean": np.full(n, 0.5), "gate_inhibited": np.full(n, 0.5 * 0.46)})
    randoms = pd.DataFrame({"draw": 0, "sample_id": range(n), "rr": clean, "gate_clean": 0.5, "gate_inhibited": 0.5})
    ig = pd.DataFrame({"sample_id": range(n), "layer": 0, "share_key": 0.28, "share_random": 0.05,
                       "share_all": 0.6, "completeness": 1e-6})
    facts = {"model": "m", "moe": True, "shared_expert": True, "softmax_router": True, "n_prompts": n,
             "baseline_mrr": 0.6}
    prompts = prompts.assign(rr_inhibited_ig=prompts.rr_inhibited, gate_clean_ig=prompts.gate_clean,
                             gate_inhibited_ig=prompts.gate_inhibited)
    return Coordination(pairs, pd.DataFrame(), pd.DataFrame(), prompts, randoms, ig, facts)


def test_head_expert_claims_on_a_paperlike_model():
    rows = by_claim(evidence.coordination_rows([coordination_of(0.68, 0.9)]))
    for cid in ("HE.r", "HE.p", "HE.inhibit_gate", "HE.inhibit_mrr", "HE.inhibit_gate_ig", "HE.inhibit_mrr_ig",
                "HE.forcing", "HE.mediation", "HE.ig_share"):
        assert rows[cid]["verdict"] == "reproduced", (cid, rows[cid])
    assert rows["HE.r"]["control_value"] == pytest.approx(0.0, abs=0.05)  # shuffled prompts: no correlation
    assert rows["HE.ig_share_all"]["verdict"] == "not reproduced"


def test_head_inhibition_that_bypasses_routing_fails_mediation():
    rows = by_claim(evidence.coordination_rows([coordination_of(0.0, 0.05)]))
    assert rows["HE.inhibit_mrr"]["verdict"] == "reproduced"
    assert rows["HE.mediation"]["verdict"] == rows["HE.r"]["verdict"] == "not reproduced"
    assert rows["HE.p"]["kit"] > 0.001


def test_within_layer_table_has_one_interval_per_layer():
    t = evidence.within_layer_table(coordination_of(0.68, 0.9, n=200))
    assert list(t.layer) == [0, 1, 2] and ((t.low < t.r) & (t.r < t.high)).all() and (t.r.between(0.55, 0.8)).all()


def test_batched_statistics_give_intervals_around_their_values():
    """Every bootstrap statistic is batched (all resamples in one call): a statistic that reduced the wrong axis
    would give a degenerate interval off its value."""
    rows = [*evidence.table1_rows(efficiency_of(1.31)), *evidence.depth_rows(depth_of(paper.STAGE_SHARES)),
            *evidence.table2_rows([ablation_of(PAPERLIKE)]), *evidence.coordination_rows([coordination_of(0.68, 0.9)]),
            *evidence.table5_model_rows([blocking_of(0.25, 0.1, n=200)])]
    checked = 0
    for r in rows:
        if np.isfinite(r["kit_low"]) and r["over"].startswith("prompts"):
            assert r["kit_low"] - 1e-9 <= r["kit"] <= r["kit_high"] + 1e-9, r["claim"]
            checked += 1
    assert checked > 40


def test_several_seeds_give_an_interval_over_seeds():
    rows = by_claim(evidence.table2_rows([ablation_of(PAPERLIKE), ablation_of(PAPERLIKE), ablation_of(PAPERLIKE)]))
    r = rows["T2.shared_top1"]
    assert (r["over"], r["n"], r["model"]) == ("seeds x prompts", 3, "m (+2 seeds)")  # the hierarchical bootstrap
    assert r["kit_low"] < r["kit"] < r["kit_high"]
    seeds = evidence.coordination_rows([coordination_of(0.68, 0.9), coordination_of(0.68, 0.9)])
    assert by_claim(seeds)["HE.r"]["over"] == "seeds x prompts" and by_claim(seeds)["HE.p"]["note"] == "largest p over the seeds"


# ------------------------------------------------------------------------------------------------ basic / refinement
def roles_of(routed_by_family: float, n: int = 300, seed: int = 0) -> NeuronRoles:
    """Per prompt: a shared gain with no family structure, a routed gain shifted by ``routed_by_family`` in one
    of the two families (early stage: shared-heavy, late: routed-heavy)."""
    rng = np.random.default_rng(seed)
    family = np.where(np.arange(n) % 2 == 0, "geography", "objects")
    rows = []
    for i in range(n):
        shift = routed_by_family * (family[i] == "geography")
        rows += [{"sample_id": i, "task": "t", "family": family[i], "stage": "early", "shared": 1.0 + rng.normal(0, .1),
                  "routed": 0.2 + rng.normal(0, .1)},
                 {"sample_id": i, "task": "t", "family": family[i], "stage": "late", "shared": 0.2 + rng.normal(0, .1),
                  "routed": 1.0 + shift + rng.normal(0, .3)}]
    facts = {"model": "m", "moe": True, "shared_expert": True, "n_prompts": n, "families": 2, "baseline_mrr": 0.5,
             "layers": 24}
    return NeuronRoles(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame(), facts)


def test_routed_refinement_is_decided_against_shuffled_families():
    rows = by_claim(evidence.roles_rows([roles_of(1.0)]))
    refine = rows["BR.routed_refine"]
    assert refine["verdict"] == "reproduced" and abs(refine["control_value"]) < 0.05  # shuffles: no family effect
    assert refine["diff"] == pytest.approx(refine["kit"] - refine["control_value"])
    assert rows["BR.shared_early"]["verdict"] == "reproduced"
    none = by_claim(evidence.roles_rows([roles_of(0.0)]))["BR.routed_refine"]
    assert none["verdict"] == "inconclusive" and none["diff_low"] < 0 < none["diff_high"]


def test_depth_claims_with_layer_zero_apart_and_their_survival():
    """Layer 0 holds 90% of the FFN gain and the rest follows the paper's stages: the early share is then far
    above the paper's under every layer, and on the paper's band with layer 0 set apart."""
    dp = depth_of(paper.STAGE_SHARES)
    first = dp.layers.layer == 0
    total = dp.layers.groupby("sample_id").ffn_gain.transform("sum")
    dp.layers.loc[first, "ffn_gain"] = 9 * total[first]
    every = by_claim(evidence.depth_rows(dp))
    apart = by_claim(evidence.depth_rows(dp, "without layer 0", without_layer0=True))
    assert every["depth.stage.early"]["verdict"] == "not reproduced" and every["depth.stage.early"]["reading"] == ""
    assert apart["depth.stage.early"]["reading"] == "without layer 0"
    assert apart["depth.stage.early"]["kit"] < 0.2 and apart["depth.late_amplification"]["verdict"] == "reproduced"
    assert "depth.screening" not in apart  # routing is not a gain: it has no layer-0 reading
    table = v.survival(evidence.depth_rows(dp) + evidence.depth_rows(dp, "without layer 0", without_layer0=True))
    late = table.set_index("claim").loc["depth.late_amplification"]
    assert late["paper"] == "not reproduced" and late["without layer 0"] == "reproduced" and not late["survives"]


def test_stage_shares_of_a_total_gain_near_zero_are_not_testable():
    dp = depth_of(paper.STAGE_SHARES)
    dp.layers["ffn_gain"] = dp.layers.ffn_gain * np.where(dp.layers.sample_id % 2 == 0, 1.0, -1.02)  # total ~ 0
    rows = by_claim(evidence.depth_rows(dp))
    assert rows["depth.stage.early"]["verdict"].startswith("not testable: the summed FFN gain has a 95% lower bound")
    assert rows["depth.late_amplification"]["verdict"].startswith("not testable: the summed FFN gain")


def test_top_neurons_late_against_neurons_spread_evenly():
    """24 layers (paper stages: 13 early, 6 middle, 5 late layers); every prompt puts its top neurons in the
    last 5 layers: late - early share 1, against 5/24 - 13/24 for neurons spread evenly."""
    nr = roles_of(1.0)
    nr.by_prompt = pd.DataFrame([(i, l, 10 if l >= 19 else 0) for i in range(50) for l in range(24)],
                                columns=["sample_id", "layer", "count"])
    row = by_claim(evidence.roles_rows([nr]))["NR.late_neurons"]
    assert row["kit"] == pytest.approx(1.0) and row["control_value"] == pytest.approx(5 / 24 - 13 / 24)
    assert row["verdict"] == "reproduced" and row["diff"] == pytest.approx(1 - (5 / 24 - 13 / 24))
    nr.by_prompt["count"] = 1  # spread evenly: no difference to the control
    assert by_claim(evidence.roles_rows([nr]))["NR.late_neurons"]["verdict"] == "not reproduced"
