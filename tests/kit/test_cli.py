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
    cli.main(["attribute", "--model", "olmoe-like", "--relation", "country_capital", "--samples", "5", "--template", "0",
              "--top-neurons", "10", "--out", str(tmp_path)])
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert len(samples) == 5 and (samples.relation == "country_capital_city").all()
    neurons = pd.read_csv(tmp_path / "neurons.csv")
    assert neurons.groupby("sample_id").size().tolist() == [10] * 5
    assert list(pd.read_csv(tmp_path / "layers.csv").layer.unique()) == [0, 1]


def test_unknown_model_fails_early_with_one_line(tmp_path, capsys):
    assert cli.main(["attribute", "--model", "nope", "--prompt", "x", "--out", str(tmp_path)]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("moescope: error: unknown model 'nope'") and err.count("\n") == 1
    with pytest.raises(Exception, match="unknown model"):  # --debug: the library's own exception
        cli.main(["attribute", "--model", "nope", "--prompt", "x", "--out", str(tmp_path), "--debug"])


def test_every_error_kind_maps_to_one_line():
    from moescope import arch, data, models, prompts
    from moescope.kit import runner

    for err in (models.ModelNotFoundError("m"), data.RelationError("r"), prompts.PromptError("p"),
                arch.ArchitectureError("a"), runner.PlanError("n"), cli.UsageError("u"), PermissionError(13, "denied", "/x")):
        message, code = cli.error_message(err)
        assert message.startswith("moescope: error: ") and "\n" not in message and code == cli.BAD_INPUT
    assert cli.error_message(cli.BatchFailed("2 failed"))[1] == cli.FAILED
    message, code = cli.error_message(ZeroDivisionError("a\nb"))
    assert message == "moescope: internal error: ZeroDivisionError: a b; rerun with --debug for the traceback and report it"
    assert code == cli.FAILED
