"""The attribute command's CSV contract."""
import pandas as pd
import pytest

from moescope.kit import cli

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
