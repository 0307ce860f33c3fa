"""Word-level tokenizers for the kit's organisms, saved in Hugging Face format (loadable with AutoTokenizer).

Words are split on whitespace and before punctuation; there is no leading-space marker, so the first token of
" Ottawa" is "Ottawa". Special tokens have fixed ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The word-level pieces of ``text``, as the tokenizer splits it."""
    return _WORD.findall(text)


def word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is SPECIALS + the sorted words of ``texts``; prepends <bos>."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted({w for t in texts for w in words(t)}):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="right",
    )
