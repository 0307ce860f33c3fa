"""Loading by one name, clear errors, and the rank/HIT/MRR metrics."""
import pytest
import torch

from moescope import arch, metrics, models, paths, prompts
from moescope.vocab import word_tokenizer


def test_unknown_model_names_the_problem():
    with pytest.raises(models.ModelNotFoundError, match="not an organism .*available: .*olmoe-like"):
        models.load_model("no-such-model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="no config.json"):
        models.load_model(str(tmp_path))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="could not load 'nobody/absent-model' from hub") as err:
        models.load_model("nobody/absent-model")
    if models.is_offline_mode():  # set before the hub library loaded (the kit's test environment)
        assert "HF_HUB_OFFLINE=1 forbids downloading" in str(err.value) and "\n" not in str(err.value)


def test_organism_and_local_path_load_the_same_weights():
    by_name = models.load_model("olmoe-like")
    by_path = models.load_model(str(paths.ORGANISMS / "olmoe-like"))
    assert by_name.source == "organism" and by_path.source == "local"
    for a, b in zip(by_name.model.parameters(), by_path.model.parameters()):
        assert torch.equal(a, b)
    assert by_name.model.config._attn_implementation == "eager"


def test_dense_model_is_rejected_by_moe_analysis():
    with pytest.raises(arch.ArchitectureError, match="needs a Mixture-of-Experts model"):
        arch.require_moe(models.load_model("llama-like").model, "expert blocking")


def test_object_first_token_respects_leading_space_conventions():
    tok = word_tokenizer(["The capital of Canada is Ottawa", "New Delhi"])
    assert tok.convert_ids_to_tokens(prompts.object_first_token(tok, "The capital of Canada is", "New Delhi")) == "New"
    with pytest.raises(prompts.PromptError, match="empty"):
        prompts.object_first_token(tok, "The capital of Canada is", "  ")


def test_object_that_tokenizes_to_nothing_is_an_error():
    tok = word_tokenizer(["a b"])
    tok.backend_tokenizer.pre_tokenizer = None
    with pytest.raises(prompts.PromptError):
        prompts.object_first_token(tok, "a", "")


def test_prompt_longer_than_context_is_an_error():
    tok = word_tokenizer(["a b c d e"])
    with pytest.raises(prompts.PromptError, match="more than the model's context"):
        prompts.encode(tok, ["a b c d e"], ["a"], max_length=3)


def test_long_prompt_error_does_not_echo_the_prompt():
    tok = word_tokenizer(["a b c d e"])
    prompt = " ".join(["a"] * 500)
    with pytest.raises(prompts.PromptError, match=r"has 501 tokens, more than the model's context \(8\)") as err:
        prompts.encode(tok, [prompt], None, max_length=8)
    assert len(str(err.value)) < 150


def test_unknown_token_is_refused_not_scored():
    """The issue's case: 'Qwertyuiop' on olmoe-like mapped to <unk> and got a rank; now the library refuses it."""
    lm = models.load_model("olmoe-like")
    with pytest.raises(prompts.PromptError, match="'Qwertyuiop' maps to the unknown token '<unk>'"):
        metrics.score_prompts(lm.model, lm.tokenizer, ["The capital of Canada is"], ["Qwertyuiop"])
    with pytest.raises(prompts.PromptError, match="1 word\\(s\\) the tokenizer maps to the unknown token"):
        metrics.score_prompts(lm.model, lm.tokenizer, ["The capital of Qwertyuiop is"], ["Ottawa"])
    with pytest.raises(prompts.PromptError, match="is empty"):
        metrics.score_prompts(lm.model, lm.tokenizer, ["  "], ["Ottawa"])
    # special tokens (here <bos>) are no unknown words, and known words still score
    assert metrics.score_prompts(lm.model, lm.tokenizer, ["The capital of Canada is"], ["Ottawa"])["rank"].tolist() == [1]


def test_ranks_hit_and_mrr():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 1.0, 0.0]])
    r = metrics.ranks(logits, torch.tensor([3, 0]))
    assert r.tolist() == [2, 1]
    assert metrics.hit_mrr([1, 2, 20], k=10) == pytest.approx({"hit@10": 2 / 3, "mrr": (1 + 0.5 + 0.05) / 3})


def test_score_prompts_gold_vs_top1():
    lm = models.load_model("olmoe-like")
    df = metrics.score_prompts(lm.model, lm.tokenizer, ["The capital of Canada is", "The capital of Japan is"],
                               ["Ottawa", "Tokyo"])
    assert df["rank"].tolist() == [1, 1] and df["target"].tolist() == ["Ottawa", "Tokyo"]
    top1 = metrics.score_prompts(lm.model, lm.tokenizer, ["The capital of Canada is"], ["Paris"], target="top1")
    assert top1["target"].tolist() == ["Ottawa"] and top1["rank"].tolist()[0] > 1
