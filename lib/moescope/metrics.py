"""Knowledge-prediction metrics: the rank of the gold object's first token, HIT@k and MRR.

The target token is found the same way for every tokenizer: tokenise ``prompt + " " + object`` and take the
first token after the prompt's tokens. This respects each tokenizer's leading-space convention (GPT-2's "Ġ",
SentencePiece's "▁", or none for the kit's word-level tokenizers).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .capture import at_least_fp32, last_positions


class PromptError(ValueError):
    """A prompt or object cannot be scored (tokenises to nothing, or exceeds the context)."""


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
        raise PromptError(f"object {obj!r} of prompt {prompt!r} is empty")
    head, full = _ids(tokenizer, prompt), _ids(tokenizer, f"{prompt} {obj.strip()}")
    if full[: len(head)] != head or len(full) == len(head):
        rest = _ids(tokenizer, f" {obj.strip()}")[len(_ids(tokenizer, "")) :]
        if not rest:
            raise PromptError(f"object {obj!r} tokenizes to nothing")
        return rest[0]
    return full[len(head)]


def encode(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], objects: Sequence[str] | None, max_length: int
) -> Encoded:
    """Tokenise prompts (right padding) and their objects' first tokens; errors name the offending prompt."""
    rows = []
    for prompt in prompts:
        ids = _ids(tokenizer, prompt)
        if not ids:
            raise PromptError(f"prompt {prompt!r} tokenizes to nothing")
        if len(ids) > max_length:
            raise PromptError(f"prompt {prompt!r} has {len(ids)} tokens, more than the model's context ({max_length})")
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


def ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among the logits: 1 + #(tokens scoring strictly higher)."""
    target_logit = logits.gather(1, targets.view(-1, 1).to(logits.device))
    return (logits > target_logit).sum(dim=1) + 1


@torch.no_grad()
def last_token_logits(model: nn.Module, enc: Encoded, batch_size: int = 64) -> torch.Tensor:
    """Next-token logits [N, V] (at least float32) at each prompt's last token."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(enc.input_ids), batch_size):
        ids = enc.input_ids[start : start + batch_size].to(device)
        mask = enc.attention_mask[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        pos = last_positions(mask)
        out.append(at_least_fp32(logits[torch.arange(len(ids), device=device), pos]).cpu())
    return torch.cat(out)


def score_prompts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    objects: Sequence[str],
    target: str = "gold",
) -> pd.DataFrame:
    """Per prompt: target token, its rank and log-probability. ``target`` is 'gold' or 'top1' (the prediction)."""
    enc = encode(tokenizer, prompts, objects, context_length(model))
    logits = last_token_logits(model, enc)
    targets = enc.target_ids if target == "gold" else logits.argmax(dim=1)
    if target not in ("gold", "top1"):
        raise ValueError(f"target must be 'gold' or 'top1', not {target!r}")
    logp = torch.log_softmax(logits, dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
    return pd.DataFrame({
        "prompt": list(prompts), "object": list(objects), "target_token_id": targets.tolist(),
        "target": tokenizer.convert_ids_to_tokens(targets.tolist()),
        "rank": ranks(logits, enc.target_ids).tolist(), "logprob": logp.tolist(),
    })


def hit_mrr(ranks_: Sequence[int] | pd.Series, k: int = 10) -> dict[str, float]:
    """HIT@k = mean 1[rank <= k]; MRR = mean 1/rank."""
    r = pd.Series(ranks_, dtype=float)
    return {f"hit@{k}": float((r <= k).mean()), "mrr": float((1.0 / r).mean())}


def summarize(scores: pd.DataFrame, by: str = "relation", k: int = 10) -> pd.DataFrame:
    """HIT@k and MRR per group of ``scores`` (a frame with a 'rank' column)."""
    rows = [{by: key, "n": len(g), **hit_mrr(g["rank"], k)} for key, g in scores.groupby(by, sort=False)]
    return pd.DataFrame(rows)
