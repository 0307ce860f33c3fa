"""A small byte-level BPE tokenizer with a leading-space marker (the GPT-2 / GPT-NeoX / OLMoE convention).

Text is split by the GPT-2 pre-tokenisation regex into pieces that carry their leading space ("Ġ" after byte
mapping), then merged by BPE merges learnt on the corpus. Frequent words become one token (" Paris" -> "ĠParis"),
rare ones several (" Hiroshi Tanaka" -> "ĠHir", "oshi", "ĠTan", "aka"), as in real models. The gold object's first
token is " " + its first piece, which :func:`moescope.prompts.object_first_token` finds from ``prompt + " " + obj``.
Special tokens have the kit's fixed ids (<pad>=0, <bos>=1, <eos>=2, <unk>=3); every encoding starts with <bos>.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..vocab import SPECIALS


def bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (specials and the 256 bytes included) on ``texts``, counting
    each text as often as it occurs."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(texts), trainer)
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="right",
    )


def tokenizer_hash(tokenizer: PreTrainedTokenizerFast) -> str:
    """First 16 hex digits of sha256 over the tokenizer's serialised vocabulary and merges."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:16]
