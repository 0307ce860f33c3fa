"""Knowledge-prediction metrics: the rank of the gold object's first token, HIT@k and MRR (prompts are encoded
by :mod:`moescope.prompts`)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .capture import at_least_fp32, last_positions
from .prompts import Encoded, context_length, encode


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
