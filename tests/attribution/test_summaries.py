"""The paper's aggregates on hand-made tables."""
import pandas as pd
import pytest

from moescope.attribution import summaries


def _layers(gains):
    return pd.DataFrame([{"sample_id": s, "layer": l, "attn_gain": 0.5, "ffn_gain": g}
                         for s, row in enumerate(gains) for l, g in enumerate(row)])


def test_efficiency_peak_and_stage_shares():
    layers = _layers([[0.0, 1.0, 2.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 4.0, 0.0, 1.0]])
    eff = summaries.efficiency(layers)
    assert eff["ffn_gain"] == pytest.approx(6.0) and eff["attn_gain"] == pytest.approx(3.0)
    assert eff["per_layer_efficiency"] == pytest.approx(1.0)
    assert eff["peak_position"] == pytest.approx((6 / 6 + 4 / 6) / 2)
    assert (eff["share_early"], eff["share_middle"], eff["share_late"]) == pytest.approx((2 / 12, 6 / 12, 4 / 12))


def test_expert_ranking_sums_over_samples():
    experts = pd.DataFrame({"sample_id": [0, 0, 1, 1, 1], "layer": [0, 1, 0, 1, 1], "expert": [3, 2, 3, -1, 5],
                            "gate": [0.5] * 5, "gain": [1.0, 0.5, 1.0, 9.0, 0.7]})
    ranked = summaries.expert_ranking(experts)
    assert list(zip(ranked.layer, ranked.expert)) == [(0, 3), (1, 5), (1, 2)]
    assert ranked.gain.tolist() == [2.0, 0.7, 0.5] and ranked.selected.tolist() == [2, 1, 1]
    assert summaries.top_experts(experts, 2) == {0: [3], 1: [5]}
