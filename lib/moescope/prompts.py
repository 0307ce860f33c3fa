"""Prompts to token ids: right-padded prompt batches and the gold object's first token, for every tokenizer.

The target token is found the same way for every tokenizer: tokenise ``prompt + " " + object`` and take the
first token after the prompt's tokens. This respects each tokenizer's leading-space convention (GPT-2's "Ġ",
SentencePiece's "▁", or none for the kit's word-level tokenizers).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


class PromptError(ValueError):
    """A prompt or object cannot be scored (empty, tokenises to nothing or to the unknown token, exceeds the context)."""


def _short(text: str, width: int = 40) -> str:
    """``text`` quoted for an error message, cut to ``width`` characters."""
    return repr(text if len(text) <= width else text[: width - 1] + "…")


@dataclass(frozen=True)
class Encoded:
    """Right-padded prompts and each prompt's gold first token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def object_first_token(tokenizer: PreTrainedTokenizerBase, prompt: str, obj: str) -> int:
    """Id of the first token of `` obj`` as it continues ``prompt``."""
    if not obj.strip():
        raise PromptError(f"the object of prompt {_short(prompt)} is empty; give the word the prompt should continue with")
    head, full = _ids(tokenizer, prompt), _ids(tokenizer, f"{prompt} {obj.strip()}")
    if full[: len(head)] != head or len(full) == len(head):
        rest = _ids(tokenizer, f" {obj.strip()}")[len(_ids(tokenizer, "")) :]
        if not rest:
            raise PromptError(f"object {_short(obj)} tokenizes to nothing; give an object the tokenizer can represent")
        first = rest[0]
    else:
        first = full[len(head)]
    if tokenizer.unk_token_id is not None and first == tokenizer.unk_token_id:
        raise PromptError(f"object {_short(obj)} maps to the unknown token {tokenizer.unk_token!r}: the model cannot "
                          "represent it, so its rank would be meaningless; give an object in the model's vocabulary")
    return first


def _unknown_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """How many of ``text``'s own tokens (special tokens aside) are the unknown token."""
    if tokenizer.unk_token_id is None:
        return 0
    return tokenizer(text, add_special_tokens=False)["input_ids"].count(tokenizer.unk_token_id)


def encode(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], objects: Sequence[str] | None, max_length: int
) -> Encoded:
    """Tokenise prompts (right padding) and their objects' first tokens; errors name the offending prompt."""
    rows = []
    for prompt in prompts:
        ids = _ids(tokenizer, prompt)
        if not prompt.strip() or not ids:
            raise PromptError(f"prompt {_short(prompt)} is empty or tokenizes to nothing; give a non-empty prompt")
        unknown = _unknown_tokens(tokenizer, prompt)
        if unknown:
            raise PromptError(f"prompt {_short(prompt)} has {unknown} word(s) the tokenizer maps to the unknown token "
                              f"{tokenizer.unk_token!r}; use words in the model's vocabulary")
        if len(ids) > max_length:
            raise PromptError(f"prompt {_short(prompt)} has {len(ids)} tokens, more than the model's context "
                              f"({max_length}); shorten it")
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    targets = [object_first_token(tokenizer, p, o) for p, o in zip(prompts, objects)] if objects else [-1] * len(rows)
    return Encoded(input_ids, mask, torch.tensor(targets))


def context_length(model: nn.Module) -> int:
    """The model's maximum context (max_position_embeddings)."""
    return int(getattr(model.config, "max_position_embeddings", 10**9))
