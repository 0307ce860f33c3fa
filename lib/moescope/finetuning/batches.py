"""Examples -> padded tensors, and the single-domain batch stream every method trains on.

A sequence is tokenizer(prompt) + tokenizer(" " + answer, no specials) + <eos>; the loss (labels != -100) covers
the answer and <eos> only. Batches hold one domain each (DGES masks are per batch domain, eq. 7) and cycle
through the task domains in a fixed order, so every domain gets an equal share of the steps. When the data also
holds general rows (domain ``'general'``), every task batch is followed by a general batch of the same size: the
1:1 mix of task and general ("alignment") data that ESFT uses for every method.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .domains import GENERAL, Example

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` [N, S] and each row's domain."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    domains: tuple[str, ...]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor | Sequence[int], device: torch.device | str = "cpu") -> "Encoded":
        """The selected rows, trimmed to their longest sequence and moved to ``device``."""
        index = torch.as_tensor(index, dtype=torch.long)
        width = int(self.attention_mask[index].sum(1).max())
        pick = lambda t: t[index, :width].to(device)  # noqa: E731
        return Encoded(pick(self.input_ids), pick(self.attention_mask), pick(self.labels),
                       tuple(self.domains[i] for i in index.tolist()))


def encode(tokenizer, examples: Sequence[Example]) -> Encoded:
    """Tokenise (prompt, answer, domain) examples with ``tokenizer`` (any HF tokenizer with an eos token)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs an eos token to mark the end of answers")
    if not examples:
        raise ValueError("no examples to encode")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, labels = [], []
    for ex in examples:
        prompt = tokenizer(ex.prompt)["input_ids"]
        answer = tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, l) in enumerate(zip(seqs, labels)):
        ids[row, : len(s)] = torch.tensor(s)
        lab[row, : len(l)] = torch.tensor(l)
        mask[row, : len(s)] = 1
    return Encoded(ids, mask, lab, tuple(ex.domain for ex in examples))


def batch_cycle(domains: Sequence[str]) -> list[str]:
    """One round of batch domains: the task domains in sorted order, each followed by 'general' if present."""
    tasks = sorted(set(domains) - {GENERAL})
    if GENERAL not in domains:
        return tasks
    return [d for task in tasks for d in (task, GENERAL)] if tasks else [GENERAL]


def domain_batches(data: Encoded, batch_size: int, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Endless (domain, row indices) batches in :func:`batch_cycle` order; rows reshuffled each epoch."""
    gen = torch.Generator().manual_seed(seed)
    by_domain = {d: torch.tensor([i for i, x in enumerate(data.domains) if x == d]) for d in sorted(set(data.domains))}
    queues = {d: torch.empty(0, dtype=torch.long) for d in by_domain}
    cycle = batch_cycle(data.domains)
    while True:
        for d in cycle:
            rows = by_domain[d]
            while len(queues[d]) < min(batch_size, len(rows)):
                queues[d] = torch.cat([queues[d], rows[torch.randperm(len(rows), generator=gen)]])
            take = min(batch_size, len(rows))
            yield d, queues[d][:take]
            queues[d] = queues[d][take:]
