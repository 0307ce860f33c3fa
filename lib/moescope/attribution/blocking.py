"""Table 5: block the top-k attributed (layer, expert) pairs of a task and re-score it, beside two baselines.

Selection and test use disjoint templates of the same facts (:data:`moescope.attribution.tasks.SELECTION`,
``TEST``): the pairs are ranked on the selection prompts and blocked on the test prompts, so a ranking cannot
fit the prompts it is judged on.

Rankings, per task, on its selection prompts (:func:`rankings`):

    attributed : (layer, routed expert) by sum_i ExpertGain_{i,l,j} (the paper's LPI ranking)
    frequency  : (layer, routed expert) by how many prompts select it at the last position (the router's own
                 top-k: a ranking that needs no attribution, the baseline LPI must beat)
    random     : ``n_random`` draws matched to the attributed top-k: the same number of experts in each layer,
                 each drawn among the :data:`POOL` non-attributed experts of its layer nearest to it in selection
                 frequency (:func:`matched_specs`), so depth and routing frequency cannot explain the difference

Three ways to block (hooks, restored on exit): reroute (logit -> -inf before the softmax, the next-best expert
takes the slot, weights renormalised; :func:`moescope.interventions.block_experts`), mask (probability -> 0 after
the softmax, refilled with its own probability; ``mask_experts``), zero (routing kept, outputs x 0;
``zero_experts``). Random draws run under re-routing at every k and under the three methods at the largest k
(where the attributed-vs-random controls are decided). k is also the paper's share of pairs (its top-10 of
Qwen1.5-MoE's 24 x 60 pairs, of OLMoE's 16 x 64) carried over. drop = 1 - MRR_blocked / MRR (per task).

Layer 0 set apart (the lens artefact of notebook 46; reading :data:`moescope.attribution.evidence.WITHOUT_LAYER0`):
the same three rankings with the first layer's pairs left out of every ranking and draw, blocked under re-routing
at every k with :data:`LAYER0_DRAWS` matched random draws (:meth:`Blocking.without_layer0`).

Every blocked condition of a k and method runs in one batch: each prompt carries its own expert set (per-token
routing edits), and the test prompts are encoded once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from .. import arch
from ..capture import last_positions
from ..interventions import block_experts, mask_experts, zero_experts
from ..metrics import ranks
from ..models import LoadedModel
from ..prompts import Encoded, context_length, encode
from . import paper, summaries, tasks

METHODS = {"reroute": block_experts, "mask": mask_experts, "zero": zero_experts}
SELECTIONS = ("attributed", "frequency", "random")
#: random draws per condition, and the non-attributed experts of a layer a matched draw chooses among
N_RANDOM, POOL = 20, 4
#: matched random draws per k of the reading with layer 0 set apart (re-routing only)
LAYER0_DRAWS = 10
#: prompts per forward pass of the blocked conditions
BATCH_ROWS = 1024
Spec = dict[int, list[int]]


@dataclass
class Blocking:
    """``ranks``: task, sample_id, fact, method, k, selection ('original' | one of :data:`SELECTIONS`), draw,
    n_blocked, fraction, rank, rr (test prompts). ``ranking``: task, layer, expert, gain, selected, mean_gate
    (the attributed order, from the selection prompts). ``paper_ks``: {paper model: k with the paper's top-10
    share of pairs}. ``facts``: the model's and the test prompts' facts, with each task's baseline MRR under
    ``task_mrr`` and its prior under ``task_prior`` (empty tables for a dense model). ``ranks_without_layer0``:
    the blocked conditions of the reading with layer 0 set apart (same columns; empty when not run)."""

    ranks: pd.DataFrame
    ranking: pd.DataFrame
    paper_ks: dict[str, int]
    facts: dict
    ranks_without_layer0: pd.DataFrame = field(default_factory=pd.DataFrame)

    def without_layer0(self) -> Blocking:
        """The reading with layer 0 set apart: the original test ranks with the conditions ranked, drawn and
        blocked among the pairs of layers 1..L-1 only (``fraction`` stays a share of all the model's pairs)."""
        if self.ranking.empty:  # a dense model: nothing was ranked or blocked
            return self
        if self.ranks_without_layer0.empty:
            raise ValueError(f"{self.facts.get('model')}: the reading without layer 0 was not run "
                             "(blocking.run(..., layer0_apart=True))")
        original = self.ranks[self.ranks.selection == "original"]
        return Blocking(pd.concat([original, self.ranks_without_layer0], ignore_index=True),
                        self.ranking[self.ranking.layer > 0].reset_index(drop=True), self.paper_ks, self.facts)

    @cached_property
    def rr(self) -> dict[tuple, np.ndarray]:
        """{(task, selection, method, k): rr [draws, facts]}, each fact's rr averaged over its test templates
        (facts are the resampling unit: a fact's templates are not independent prompts); the original under
        (task, 'original', 'none', 0)."""
        return {key: g.pivot_table(index="draw", columns="fact", values="rr", aggfunc="mean").to_numpy()
                for key, g in self.ranks.groupby(["task", "selection", "method", "k"], sort=False)}

    def table(self) -> pd.DataFrame:
        """MRR and drop per task, method, k and selection (random draws averaged)."""
        r = self.ranks
        orig = r[r.selection == "original"].groupby("task").rr.mean()
        out = (r[r.selection != "original"].groupby(["task", "method", "k", "selection"], as_index=False, sort=False)
               .agg(n_blocked=("n_blocked", "mean"), fraction=("fraction", "mean"), mrr=("rr", "mean")))
        out.insert(4, "orig_mrr", out.task.map(orig).astype(float))  # float also when nothing was blocked
        out["drop"] = 1 - out.mrr / out.orig_mrr
        return out


def blocked(model, method: str, spec: Mapping[int, Sequence[int] | torch.Tensor]):
    """The context manager that blocks ``spec`` ({layer: [expert, ...]} or per-token sets) by ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, not {method!r}")
    return METHODS[method](model, spec)


def all_pairs(model) -> list[tuple[int, int]]:
    """Every (MoE layer, routed expert) pair of the model."""
    return [(p.index, e) for p in arch.layers(model) if p.is_moe for e in range(p.experts.gate_up_proj.shape[0])]


def random_specs(pairs: Sequence[tuple[int, int]], k: int, draws: int, seed: int = 0) -> list[Spec]:
    """``draws`` sets of k distinct pairs drawn uniformly among ``pairs`` without replacement (unmatched)."""
    if k > len(pairs):
        raise ValueError(f"cannot draw {k} distinct pairs from {len(pairs)}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        spec: Spec = {}
        for i in sorted(rng.choice(len(pairs), size=k, replace=False)):
            layer, expert = pairs[i]
            spec.setdefault(layer, []).append(expert)
        out.append(spec)
    return out


def paper_share_ks(n_pairs: int) -> dict[str, int]:
    """{paper model: round(n_pairs * share of pairs its top-10 blocked)} (0 when the share is under one pair)."""
    return {m: int(round(n_pairs * paper.blocked_fraction(m))) for m in paper.TABLE5_MODEL.values()}


def rankings(lm: LoadedModel, fr: pd.DataFrame) -> pd.DataFrame:
    """Per task, the (layer, routed expert) pairs ranked by summed ExpertGain over the task's prompts ``fr``, with
    ``selected`` (how many of them select the pair at the last position) and ``prompts`` (how many there are)."""
    attr = tasks.attribution(lm, fr, neurons=False)
    experts = tasks.with_samples(attr.experts, attr.samples)
    return pd.concat([summaries.expert_ranking(g).assign(task=t, prompts=int((fr.task == t).sum()))
                      for t, g in experts.groupby("task", sort=False)], ignore_index=True)


def frequencies(ranking: pd.DataFrame, pairs: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """Every pair with its selection frequency in one task's ranking (0 for a pair no prompt selects)."""
    freq = pd.DataFrame(pairs, columns=["layer", "expert"]).merge(ranking[["layer", "expert", "selected"]],
                                                                 on=["layer", "expert"], how="left")
    return freq.fillna({"selected": 0}).astype({"selected": int})


def frequency_ranking(ranking: pd.DataFrame, pairs: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """The pairs ordered by selection frequency, most selected first (ties: layer, expert)."""
    return frequencies(ranking, pairs).sort_values(["selected", "layer", "expert"], ascending=[False, True, True],
                                                   ignore_index=True)


def top_spec(ranking: pd.DataFrame, k: int) -> Spec:
    """The first k pairs of a ranking (layer, expert columns, best first) as {layer: [expert, ...]}."""
    spec: Spec = {}
    for row in ranking.head(k).itertuples():
        spec.setdefault(int(row.layer), []).append(int(row.expert))
    return spec


def matched_specs(attributed: Spec, freq: pd.DataFrame, draws: int, rng: np.random.Generator,
                  pool: int = POOL) -> list[Spec]:
    """``draws`` random sets matched to ``attributed``: in each of its layers, for each attributed expert (most
    selected first), one expert drawn uniformly among the ``pool`` not-yet-used non-attributed experts of that
    layer nearest to it in selection frequency (``freq``: layer, expert, selected; ties by expert id)."""
    out = []
    for _ in range(draws):
        spec: Spec = {}
        for layer, chosen in attributed.items():
            f = freq[freq.layer == layer].set_index("expert").selected
            free = [e for e in f.index if e not in chosen]
            if len(free) < len(chosen):
                raise ValueError(f"layer {layer} has {len(free)} experts outside the {len(chosen)} to match")
            picked: list[int] = []
            for e in sorted(chosen, key=lambda x: (-f[x], x)):
                near = sorted((x for x in free if x not in picked), key=lambda x: (abs(f[x] - f[e]), x))[:pool]
                picked.append(int(near[rng.integers(len(near))]))
            spec[layer] = sorted(picked)
        out.append(spec)
    return out


def _expert_sets(spec_rows: Sequence[Spec], layers: Mapping[int, int], width: int) -> dict[int, torch.Tensor]:
    """Per MoE layer, bool [rows * width, experts]: row r's tokens carry the experts ``spec_rows[r]`` names."""
    out = {}
    for layer, n_experts in layers.items():
        rows = torch.zeros(len(spec_rows), n_experts, dtype=torch.bool)
        for r, spec in enumerate(spec_rows):
            rows[r, spec.get(layer, [])] = True
        out[layer] = rows.repeat_interleave(width, dim=0)
    return out


@torch.no_grad()
def score_conditions(lm: LoadedModel, enc: Encoded, rows: np.ndarray, specs: Sequence[Spec], method: str,
                     batch_rows: int = BATCH_ROWS) -> np.ndarray:
    """Rank of the gold token of prompt ``rows[i]`` of ``enc`` with the experts ``specs[i]`` blocked by
    ``method``, for every i, in batches of ``batch_rows`` prompts (each prompt its own expert set)."""
    layers = {p.index: p.experts.gate_up_proj.shape[0] for p in arch.layers(lm.model) if p.is_moe}
    width, out = enc.input_ids.shape[1], []
    for start in range(0, len(rows), batch_rows):
        idx = torch.as_tensor(rows[start:start + batch_rows])
        ids, mask = enc.input_ids[idx].to(lm.device), enc.attention_mask[idx].to(lm.device)
        sets = _expert_sets(specs[start:start + batch_rows], layers, width)
        with blocked(lm.model, method, sets):
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        last = logits[torch.arange(len(idx), device=logits.device), last_positions(mask)].float()
        out.append(ranks(last, enc.target_ids[idx]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


@torch.no_grad()
def score_clean(lm: LoadedModel, enc: Encoded, batch_rows: int = BATCH_ROWS) -> np.ndarray:
    """Rank of the gold token of every prompt of ``enc``, nothing blocked (batched as :func:`score_conditions`)."""
    out = []
    for start in range(0, len(enc.input_ids), batch_rows):
        ids = enc.input_ids[start:start + batch_rows].to(lm.device)
        mask = enc.attention_mask[start:start + batch_rows].to(lm.device)
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        last = logits[torch.arange(len(ids), device=logits.device), last_positions(mask)].float()
        out.append(ranks(last, enc.target_ids[start:start + batch_rows]).cpu().numpy())
    return np.concatenate(out)


def _conditions(test: pd.DataFrame, ranking: pd.DataFrame, pairs, ks: Sequence[int], methods: Sequence[str],
                n_random: int, seed: int) -> list[tuple[str, int, str, int, str, Spec]]:
    """(method, k, selection, draw, task, spec) of every blocked condition (see the module docstring)."""
    rng, out = np.random.default_rng(seed), []
    for task in test.task.unique():
        rk = ranking[ranking.task == task]
        by_freq, freq = frequency_ranking(rk, pairs), frequencies(rk, pairs)
        for k in ks:
            att = top_spec(rk, k)
            draws = matched_specs(att, freq, n_random, rng) if len(rk) >= k else []
            for method in methods:
                out += [(method, k, "attributed", 0, task, att), (method, k, "frequency", 0, task, top_spec(by_freq, k))]
                if method == "reroute" or k == max(ks):
                    out += [(method, k, "random", d, task, s) for d, s in enumerate(draws)]
    return out


def block_all(lm: LoadedModel, test: pd.DataFrame, enc: Encoded, ranking: pd.DataFrame, ks: Sequence[int],
              methods: Sequence[str], n_random: int, seed: int,
              pairs: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Ranks of every test prompt (``test``, encoded as ``enc``) under every condition of :func:`_conditions`
    among ``pairs`` (default: all of the model's), one batch per method and k."""
    pairs = all_pairs(lm.model) if pairs is None else pairs
    conditions = _conditions(test, ranking, pairs, ks, methods, n_random, seed)
    frames = []
    rows_of = {t: np.flatnonzero(test.task.values == t) for t in test.task.unique()}
    for method in methods:
        for k in ks:
            mine = [c for c in conditions if c[0] == method and c[1] == k]
            if not mine:
                continue
            rows = np.concatenate([rows_of[c[4]] for c in mine])
            specs = [c[5] for c in mine for _ in rows_of[c[4]]]
            rank = score_conditions(lm, enc, rows, specs, method)
            frames.append(pd.DataFrame({
                "task": test.task.values[rows], "sample_id": test.sample_id.values[rows],
                "fact": test.fact.values[rows], "method": method, "k": k,
                "selection": [c[2] for c in mine for _ in rows_of[c[4]]],
                "draw": [c[3] for c in mine for _ in rows_of[c[4]]],
                "n_blocked": [sum(map(len, c[5].values())) for c in mine for _ in rows_of[c[4]]],
                "rank": rank}))
    out = pd.concat(frames, ignore_index=True)
    return out.assign(rr=1.0 / out["rank"])


def run(model: str | LoadedModel, relations=tasks.DEFAULT_RELATIONS, n_samples: int | None = None,
        ks: Sequence[int] = (1, 5, 10), methods: Sequence[str] = tuple(METHODS), n_random: int = N_RANDOM,
        seed: int = 0, device: str = "cpu", dtype: str | None = None, layer0_apart: bool = True) -> Blocking:
    """Table 5 with its baselines on one model: rank on the selection templates, block on the test templates of
    the same ``n_samples`` facts per relation (stratified by object; None: all), at ``ks`` plus each paper
    model's top-10 share carried over as k; with ``layer0_apart`` also the reading without layer 0 (the same
    rankings among layers 1..L-1, re-routed, :data:`LAYER0_DRAWS` matched random draws per k)."""
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        raise ValueError(f"methods must be among {sorted(METHODS)}, not {bad}")
    lm = tasks.loaded(model, device, dtype)
    selection = tasks.facts(relations, n_samples, tasks.SELECTION, seed)
    test = tasks.facts(relations, n_samples, tasks.TEST, seed)
    enc = encode(lm.tokenizer, list(test.prompt), list(test.object), context_length(lm.model))
    base = test[["task", "sample_id", "fact", "family"]].assign(rank=score_clean(lm, enc))
    base["rr"] = 1.0 / base["rank"]
    facts = (tasks.model_facts(lm) | tasks.data_facts(base, test)
             | {"task_mrr": base.groupby("task").rr.mean().to_dict(),
                "task_prior": {t: tasks.prior_mrr(g) for t, g in test.groupby("task", sort=False)}})
    original = base.drop(columns="family").assign(method="none", k=0, selection="original", draw=0, n_blocked=0)
    if not facts["moe"]:
        return Blocking(original.assign(fraction=0.0), pd.DataFrame(), {}, facts)
    share_ks = paper_share_ks(facts["pairs"])
    all_ks = sorted(set(ks) | {k for k in share_ks.values() if k > 0})
    ranking = rankings(lm, selection)
    ranks_ = pd.concat([original, block_all(lm, test, enc, ranking, all_ks, methods, n_random, seed)], ignore_index=True)
    ranks_["fraction"] = ranks_.n_blocked / facts["pairs"]
    apart = pd.DataFrame()
    if layer0_apart:
        later = [(layer, e) for layer, e in all_pairs(lm.model) if layer > 0]
        apart = block_all(lm, test, enc, ranking[ranking.layer > 0], all_ks, ("reroute",), LAYER0_DRAWS, seed, later)
        apart["fraction"] = apart.n_blocked / facts["pairs"]
    return Blocking(ranks_, ranking, share_ks, facts, apart)


def summary(by_model: Mapping[str, Sequence[Blocking]]) -> pd.DataFrame:
    """Drop per model, task, method and k: attributed beside the frequency ranking and matched random (each the
    mean over the model's seeds)."""
    frames = [b.table().assign(model=m) for m, rs in by_model.items() for b in rs if len(b.ranking)]
    if not frames:
        return pd.DataFrame(columns=["model", "task", "method", "k", "fraction", "orig_mrr", *SELECTIONS])
    t = pd.concat(frames, ignore_index=True)
    t = t.groupby(["model", "task", "method", "k", "selection"], as_index=False, sort=False)[
        ["fraction", "orig_mrr", "drop"]].mean()
    wide = t.pivot_table(index=["model", "task", "method", "k"], columns="selection", values="drop", sort=False)
    keys = t[t.selection == "attributed"].set_index(["model", "task", "method", "k"])[["fraction", "orig_mrr"]]
    return keys.join(wide.reindex(columns=[s for s in SELECTIONS if s in wide.columns])).reset_index()
