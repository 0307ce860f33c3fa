"""The gold object's first token under real tokenizer conventions, built locally with `tokenizers`:

- byte-level BPE with a leading-space marker "Ġ" and no bos (GPT-NeoX / OLMoE / Qwen),
- SentencePiece-style Unigram and BPE with the word-start marker "▁" (Llama / Mistral), with and without a
  prepended <s>, including Llama's own layout (normaliser Prepend("▁") + Replace(" ", "▁"), no pre-tokeniser).

" Paris" must score the token a model emits after the prompt: the expected id is found by brute force (the one
token that, appended to the prompt's ids, decodes to prompt + " Paris"), a tiny model is rigged to emit it, and
prompts.encode / object_first_token / metrics.score_prompts must agree with both.
"""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_model
from moescope import metrics, prompts

CORPUS = [
    "The capital of France is Paris", "The capital of Japan is Tokyo", "Paris is a city in France",
    "Tokyo is a city in Japan", "People in Paris speak French", "The capital of Italy is Rome",
] * 20
PROMPT = "The capital of France is"
MULTI = "Parisville"  # not a word of the corpus: several tokens


def _fast(core: Tokenizer, bos: str | None, unk: str | None = None) -> PreTrainedTokenizerFast:
    if bos:
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, core.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="</s>", unk_token=unk,
                                   pad_token="<pad>", padding_side="right")


def byte_level_bpe() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _fast(core, bos=None)


def sentencepiece_unigram(bos: bool) -> PreTrainedTokenizerFast:
    """A scored SentencePiece-style vocabulary: "▁" + each corpus word, a few sub-words, every character."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = sorted({w for line in CORPUS for w in line.split()})
    chars = sorted({c for line in CORPUS for c in line.replace(" ", "")} | set(MULTI) | {"▁"})
    vocab = [(t, 0.0) for t in specials] + [(f"▁{w}", -2.0) for w in words]
    vocab += [(t, -4.0) for t in ("▁Pa", "ris", "ville")] + [(c, -5.0) for c in chars]
    core = Tokenizer(models.Unigram(vocab, unk_id=1))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return _fast(core, bos="<s>" if bos else None, unk="<unk>")


def llama_layout_bpe(bos: bool) -> PreTrainedTokenizerFast:
    """Trained on whitespace-split words like SentencePiece; run like Llama's tokenizer.json (no pre-tokeniser)."""
    core = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    core.pre_tokenizer = None
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return _fast(core, bos="<s>" if bos else None, unk="<unk>")


CONVENTIONS = {
    "byte-level BPE (GPT-NeoX/Qwen/OLMoE)": byte_level_bpe,
    "SentencePiece Unigram + <s>": lambda: sentencepiece_unigram(True),
    "SentencePiece Unigram, no bos": lambda: sentencepiece_unigram(False),
    "Llama layout BPE + <s>": lambda: llama_layout_bpe(True),
    "Llama layout BPE, no bos": lambda: llama_layout_bpe(False),
}


@pytest.fixture(params=list(CONVENTIONS), scope="module")
def tok(request):
    return CONVENTIONS[request.param]()


def ids_of(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def continuation_token(tok, prompt: str, word: str) -> int:
    """Brute force: the one token id that, appended to the prompt's ids, decodes to prompt + " " + word."""
    head = ids_of(tok, prompt)
    hits = [v for v in range(len(tok)) if tok.decode(head + [v], skip_special_tokens=True) == f"{prompt} {word}"]
    assert len(hits) == 1, hits
    return hits[0]


def test_conventions_mark_word_starts(tok):
    pieces = tok.convert_ids_to_tokens(ids_of(tok, f"{PROMPT} Paris"))
    assert pieces[-1] in ("ĠParis", "▁Paris")
    assert (pieces[0] == "<s>") == (tok.bos_token == "<s>")


def test_gold_first_token_is_the_emitted_continuation(tok):
    expected = continuation_token(tok, PROMPT, "Paris")
    assert prompts.object_first_token(tok, PROMPT, "Paris") == expected
    assert prompts.object_first_token(tok, PROMPT, " Paris ") == expected  # surrounding spaces do not matter
    enc = prompts.encode(tok, [PROMPT, "Paris is a city in"], ["Paris", "France"], max_length=64)
    assert enc.target_ids[0] == expected
    assert enc.target_ids[1] == continuation_token(tok, "Paris is a city in", "France")
    assert enc.input_ids[0, : enc.attention_mask[0].sum()].tolist() == ids_of(tok, PROMPT)


def test_first_token_of_a_multi_token_object(tok):
    first = prompts.object_first_token(tok, PROMPT, MULTI)
    text = tok.decode(ids_of(tok, PROMPT) + [first], skip_special_tokens=True)
    assert f"{PROMPT} {MULTI}".startswith(text) and len(PROMPT) + 1 < len(text) < len(PROMPT) + 1 + len(MULTI)


def test_rank_scores_the_token_the_model_emits(tok):
    """A tiny Llama rigged to emit " Paris" after the prompt: the kit's gold rank is 1 and its target is that token."""
    expected = continuation_token(tok, PROMPT, "Paris")
    model = tiny_model("llama", vocab=len(tok))
    ids = torch.tensor([ids_of(tok, PROMPT)])
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[0, -1]
        model.lm_head.weight[expected] = h / h.norm() * 4
        emitted = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, -1]
    assert int(emitted) == expected
    assert tok.decode(ids[0].tolist() + [int(emitted)], skip_special_tokens=True) == f"{PROMPT} Paris"
    scores = metrics.score_prompts(model, tok, [PROMPT, PROMPT], ["Paris", "Tokyo"])
    assert scores["rank"].tolist()[0] == 1 and scores["rank"].tolist()[1] > 1
    assert scores.target_token_id[0] == expected
    top1 = metrics.score_prompts(model, tok, [PROMPT], ["Paris"], target="top1")
    assert top1.target_token_id[0] == expected
