"""The attribute command's CSV contract, and the paper's aggregates on hand-made tables."""
import pandas as pd
import pytest

from moescope import cli, summaries

CONTRACT = {
    "layers.csv": ["sample_id", "layer", "attn_gain", "ffn_gain"],
    "heads.csv": ["sample_id", "layer", "head", "gain"],
    "experts.csv": ["sample_id", "layer", "expert", "gate", "gain"],
    "neurons.csv": ["sample_id", "layer", "expert", "neuron", "coef", "score"],
}


def test_attribute_prompt_writes_the_contracted_csvs(tmp_path):
    cli.main(["attribute", "--model", "qwen-moe-like", "--prompt", "The capital of Canada is", "--out", str(tmp_path)])
    for name, cols in CONTRACT.items():
        assert list(pd.read_csv(tmp_path / name).columns) == cols
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert {"sample_id", "prompt", "target", "target_token_id", "rank", "logprob"} <= set(samples.columns)
    assert samples.target[0] == "Ottawa" and samples["rank"][0] == 1
    experts = pd.read_csv(tmp_path / "experts.csv")
    assert (experts.expert == -1).sum() == 3 and (experts.expert >= 0).sum() == 3 * 2  # shared + top-2, 3 layers
    assert pd.read_csv(tmp_path / "neurons.csv").shape[0] == 3 * (2 * 64 + 256)


def test_attribute_relation_with_top_neurons(tmp_path):
    cli.main(["attribute", "--model", "olmoe-like", "--relation", "country_capital", "--samples", "5",
              "--top-neurons", "10", "--out", str(tmp_path)])
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert len(samples) == 5 and (samples.relation == "country_capital_city").all()
    neurons = pd.read_csv(tmp_path / "neurons.csv")
    assert neurons.groupby("sample_id").size().tolist() == [10] * 5
    assert list(pd.read_csv(tmp_path / "layers.csv").layer.unique()) == [0, 1]


def test_unknown_model_fails_early(tmp_path):
    with pytest.raises(Exception, match="unknown model"):
        cli.main(["attribute", "--model", "nope", "--prompt", "x", "--out", str(tmp_path)])


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
