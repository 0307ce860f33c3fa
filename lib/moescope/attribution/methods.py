"""Attribution methods benchmarked against a planted ground truth (notebook 46).

Every method gives each routed (layer l, expert j) pair a score per prompt i at the prompt's last position (the
position LPI reads); a relation's ranking sums the scores over its prompts (ties: layer, then expert). With
c_{i,l,j} = g_j E_j(x) the expert's contribution to the residual (0 when not selected), w the gold first token:

    lpi                 ExpertGain under the paper's lens (frozen final-norm scale; :mod:`.lpi`, lens 'final')
    lpi_local           ExpertGain read at the scale of the residual the expert writes into (lens 'local')
    lpi_contrastive     ExpertGain of log p(w) against the relation's other objects (lens 'contrastive')
    gate_frequency      1[j selected] (the router's top-k)
    gate_x_norm         ||c_{i,l,j}|| = routing weight x output norm
    grad_x_act          c_{i,l,j} . d log p(w) / d o_l (o_l the layer's MoE output at the last position; attribution
                        patching: the linear estimate of what removing the contribution costs)
    integrated_gradients c_{i,l,j} . (1/m) sum_s d log p(w) / d o_l at o_l -> a_s o_l, a_s = (s + 1/2) / m: the
                        path from a zero MoE output of layer l at the last position (downstream recomputed, the
                        router included); completeness: sum over the layer's units = f(o_l) - f(0)
    total_effect        log p(w) - log p(w | j removed from layer l's routing at the last position only; the next-best
                        expert takes the slot): the causal reference the others are judged by
    random              a seeded random ranking (the floor; its ranking scores are the mean over 200 of them)

Scores of the ranking (per planted relation, over all pairs and with layer 0 set apart, ``scope``):

    precision@|plant|   |top-|plant| pairs ∩ plant| / |plant|
    auc                 P(score of a planted pair > score of an unplanted pair), ties 1/2 (the rank percentile)
    best_rank           1 + #(unplanted pairs scoring above the best planted pair): the plant as a group (a
                        redundant plant is found when any of its experts comes first)
    spearman_te         rank correlation with the causal reference over the pairs of the scope
    faithfulness        the relation's MRR with the ranking's top-k pairs blocked (re-routing at every position,
                        :func:`moescope.attribution.blocking.blocked`), k = 1..K; area = mean_k (1 - MRR_k / MRR_0),
                        against the same k drawn uniformly among the scope's pairs (``draws`` draws, the matched
                        random control, :func:`moescope.attribution.blocking.random_specs`)

All prompts are scored in one batch (the planted organism's prompts fit easily); gradients are taken in float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import arch, interventions, metrics, statistics, verdicts
from ..capture import capture, last_positions
from ..hooks import hooked
from ..models import LoadedModel
from ..prompts import context_length, encode
from ..organisms import zoo
from . import blocking, ground_truth, summaries, tasks
from .ground_truth import GROUND_TRUTH, Plant, planted_pairs
from .lpi import relation_candidates

METHODS = ("lpi", "lpi_local", "lpi_contrastive", "gate_frequency", "gate_x_norm", "grad_x_act",
           "integrated_gradients", "total_effect", "random")
REFERENCE = "total_effect"
LENS_OF = {"lpi": "final", "lpi_local": "local", "lpi_contrastive": "contrastive"}
SCOPES = ("all layers", "without layer 0")
#: Random rankings averaged for the 'random' row of the ranking table.
RANDOM_RANKINGS = 200
PAPER = "planted ground truth"


@dataclass
class Scores:
    """``per_prompt``: {method: [prompts, pairs] scores}; ``pairs``: (layer, expert) per column; ``facts``: the prompts
    (relation, prompt, object, ...); ``depth``: per LPI lens, FFN gain with layer 0 included and set apart."""

    pairs: list[tuple[int, int]]
    facts: pd.DataFrame
    per_prompt: dict[str, np.ndarray]
    depth: pd.DataFrame = field(default_factory=pd.DataFrame)

    def columns(self, scope: str) -> np.ndarray:
        """Indices of the pairs in ``scope`` ('all layers' | 'without layer 0')."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        return np.array([c for c, (layer, _) in enumerate(self.pairs) if scope == SCOPES[0] or layer > 0])

    def rows(self, relation: str) -> np.ndarray:
        return np.flatnonzero(self.facts.relation.to_numpy() == relation)

    def total(self, method: str, relation: str, scope: str = SCOPES[0], rows: np.ndarray | None = None) -> np.ndarray:
        """The relation's summed score per pair of the scope (``rows``: a resample of its prompts)."""
        idx = self.rows(relation) if rows is None else rows
        return self.per_prompt[method][idx][:, self.columns(scope)].sum(0)

    def ranking(self, method: str, relation: str, scope: str = SCOPES[0]) -> list[tuple[int, int]]:
        """The scope's pairs, best first (ties: layer, then expert)."""
        cols = self.columns(scope)
        order = np.argsort(-self.total(method, relation, scope), kind="stable")
        return [self.pairs[cols[o]] for o in order]


def _pair_matrix(pairs: Sequence[tuple[int, int]], n: int, layer: int, index: torch.Tensor,
                 values: torch.Tensor, out: np.ndarray) -> None:
    """out[i, column of (layer, index[i, s])] += values[i, s]."""
    col = {p: c for c, p in enumerate(pairs)}
    cols = np.array([[col[(layer, int(e))] for e in row] for row in index.tolist()])
    np.add.at(out, (np.repeat(np.arange(n), cols.shape[1]), cols.ravel()), values.detach().double().numpy().ravel())


def _lpi(lm: LoadedModel, fr: pd.DataFrame, pairs, lens: str) -> tuple[np.ndarray, pd.DataFrame]:
    kw = {"lens": lens} | ({"candidates": relation_candidates(fr)} if lens == "contrastive" else {})
    attr = tasks.attribution(lm, fr, neurons=False, **kw)
    col = {p: c for c, p in enumerate(pairs)}
    ex = attr.experts[attr.experts.expert >= 0]
    out = np.zeros((len(fr), len(pairs)))
    np.add.at(out, (ex.sample_id.to_numpy(), [col[(l, e)] for l, e in zip(ex.layer, ex.expert)]), ex.gain.to_numpy())
    depth = summaries.layer_zero_apart(attr.layers).assign(lens=lens)
    return out, depth


def _last_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: each row's last real token."""
    last = torch.zeros(mask.shape, dtype=torch.bool)
    last[torch.arange(len(mask)), last_positions(mask)] = True
    return last


def mlp_gradients(lm: LoadedModel, enc, scale: dict[int, float] | None = None) -> dict[int, torch.Tensor]:
    """{MoE layer: d sum_i log p(w_i) / d o_l[i]} [B, H], o_l the MoE block's output at each prompt's last position,
    with o_l multiplied by ``scale[l]`` there (default 1) before it joins the residual stream."""
    model, scale = lm.model, scale or {}
    device = next(model.parameters()).device
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    pos, rows = last_positions(mask), torch.arange(len(ids), device=device)
    eps: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def add(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            shaped = out.reshape(*ids.shape, -1)
            e = torch.zeros(len(ids), shaped.shape[-1], dtype=shaped.dtype, device=device, requires_grad=True)
            eps[layer] = e
            at = shaped[rows, pos] * scale.get(layer, 1.0) + e
            new = shaped.index_put((rows, pos), at).reshape(out.shape)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return add

    parts = [p for p in arch.layers(model) if p.is_moe]
    with torch.enable_grad(), hooked((p.mlp, "forward", hook(p.index)) for p in parts):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, pos].float()
        lp = torch.log_softmax(logits, -1).gather(1, enc.target_ids.to(device)[:, None]).sum()
        grads = torch.autograd.grad(lp, [eps[p.index] for p in parts])
    return {p.index: g.detach().cpu() for p, g in zip(parts, grads)}


def _gradient_scores(lm: LoadedModel, enc, trace, pairs, ig_steps: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(enc.input_ids)
    gxa, ig = np.zeros((n, len(pairs))), np.zeros((n, len(pairs)))
    parts = {p.index: p for p in arch.layers(lm.model)}
    grads = mlp_gradients(lm, enc)
    for l, c in enumerate(trace.layers):
        if c.topk_index is None:
            continue
        contrib = (c.expert_scale.unsqueeze(-1) * c.expert_out).float() / parts[l].residual_scale  # [B, k, H]
        _pair_matrix(pairs, n, l, c.topk_index, (contrib * grads[l][:, None].float()).sum(-1), gxa)
        mean = sum(mlp_gradients(lm, enc, {l: (s + 0.5) / ig_steps})[l] for s in range(ig_steps)) / ig_steps
        _pair_matrix(pairs, n, l, c.topk_index, (contrib * mean[:, None].float()).sum(-1), ig)
    return gxa, ig


@torch.no_grad()
def total_effects(lm: LoadedModel, enc, pairs) -> np.ndarray:
    """[prompts, pairs]: log p(w) - log p(w | the pair removed from routing at the last position only), by
    :func:`moescope.interventions.block_experts` (logit -> -inf: the next-best expert takes the slot, and a router
    that normalises over all experts reweights the others, so an unselected pair can matter a little too)."""
    n, model = len(enc.input_ids), lm.model
    last = _last_mask(enc.attention_mask).reshape(-1)
    gold = enc.target_ids[:, None]

    def logprob():
        logits = metrics.last_token_logits(model, enc, batch_size=n)
        return torch.log_softmax(logits.double(), -1).gather(1, gold).squeeze(1).numpy()

    before, out = logprob(), np.zeros((n, len(pairs)))
    for col, (layer, expert) in enumerate(pairs):
        with interventions.block_experts(model, {layer: [expert]}, tokens=last):
            out[:, col] = before - logprob()
    return out


def scores(lm: LoadedModel, fr: pd.DataFrame, methods: Sequence[str] = METHODS, ig_steps: int = 8,
           seed: int = 0) -> Scores:
    """Per-prompt scores of every (MoE layer, routed expert) pair by each method (:data:`METHODS`)."""
    if bad := sorted(set(methods) - set(METHODS)):
        raise ValueError(f"unknown methods {bad}; choose among {METHODS}")
    pairs = blocking.all_pairs(lm.model)
    enc = encode(lm.tokenizer, list(fr.prompt), list(fr.object), context_length(lm.model))
    device = next(lm.model.parameters()).device
    trace = capture(lm.model, enc.input_ids.to(device), enc.attention_mask.to(device))
    n, out, depth = len(fr), {}, []
    for m in methods:
        if m in LENS_OF:
            out[m], d = _lpi(lm, fr, pairs, LENS_OF[m])
            depth.append(d)
    if {"gate_frequency", "gate_x_norm"} & set(methods):
        freq, norm = np.zeros((n, len(pairs))), np.zeros((n, len(pairs)))
        for l, c in enumerate(trace.layers):
            if c.topk_index is not None:
                _pair_matrix(pairs, n, l, c.topk_index.cpu(), torch.ones(c.topk_index.shape), freq)
                size = (c.expert_scale.unsqueeze(-1) * c.expert_out).norm(dim=-1).cpu()
                _pair_matrix(pairs, n, l, c.topk_index.cpu(), size, norm)
        out |= {k: v for k, v in (("gate_frequency", freq), ("gate_x_norm", norm)) if k in methods}
    if {"grad_x_act", "integrated_gradients"} & set(methods):
        gxa, ig = _gradient_scores(lm, enc, trace, pairs, ig_steps)
        out |= {k: v for k, v in (("grad_x_act", gxa), ("integrated_gradients", ig)) if k in methods}
    if "total_effect" in methods:
        out["total_effect"] = total_effects(lm, enc, pairs)
    if "random" in methods:
        rng = np.random.default_rng(seed)
        out["random"] = np.zeros((n, len(pairs)))
        for relation in dict.fromkeys(fr.relation):
            rows = np.flatnonzero(fr.relation.to_numpy() == relation)
            out["random"][rows] = rng.permutation(len(pairs)) / len(pairs) / len(rows)
    frame = pd.concat(depth, ignore_index=True) if depth else pd.DataFrame()
    return Scores(pairs, fr.reset_index(drop=True), {m: out[m] for m in methods}, frame)


def ranking_scores(total: np.ndarray, planted: np.ndarray, reference: np.ndarray | None = None) -> dict[str, float]:
    """precision@|plant|, auc, best_rank (and spearman_te against ``reference``) of one ranking's scores ``total``
    [pairs]; ``planted`` [pairs] bool."""
    k = int(planted.sum())
    if k == 0:
        return {"precision": np.nan, "auc": np.nan, "best_rank": np.nan, "spearman_te": np.nan}
    order = np.argsort(-total, kind="stable")
    sp, su = total[planted][:, None], total[~planted][None, :]
    out = {"precision": float(planted[order[:k]].sum() / k),
           "auc": float(((sp > su) + 0.5 * (sp == su)).mean()),
           "best_rank": int(1 + (su > sp.max()).sum())}
    if reference is not None:
        out["spearman_te"] = float(pd.Series(total).rank().corr(pd.Series(reference).rank()))
    return out


def ranking_table(sc: Scores, plant: Plant, seed: int = 0) -> pd.DataFrame:
    """Per planted relation, method and scope: planted count, chance precision and :func:`ranking_scores`; for
    'random' the mean over :data:`RANDOM_RANKINGS` random rankings (its faithfulness curve uses one of them)."""
    rows = []
    for relation in plant:
        for scope in SCOPES:
            cols = sc.columns(scope)
            planted = np.array([sc.pairs[c] in planted_pairs(plant, relation) for c in cols])
            ref = sc.total(REFERENCE, relation, scope) if REFERENCE in sc.per_prompt else None
            for m in sc.per_prompt:
                if m == "random":  # the floor as an expectation: the mean over many random rankings
                    rng = np.random.default_rng([seed, len(rows)])
                    draws = [ranking_scores(rng.permutation(len(cols)).astype(float), planted, ref)
                             for _ in range(RANDOM_RANKINGS)]
                    got = pd.DataFrame(draws).mean().to_dict()
                else:
                    got = ranking_scores(sc.total(m, relation, scope), planted, ref)
                rows.append({"relation": relation, "method": m, "scope": scope, "planted": int(planted.sum()),
                             "pairs": len(cols), "chance_precision": planted.sum() / len(cols), **got})
    return pd.DataFrame(rows)


def top_spec(ranking: Sequence[tuple[int, int]], k: int) -> dict[int, list[int]]:
    """The first k pairs of a ranking as {layer: [expert, ...]}."""
    return blocking.top_spec(pd.DataFrame(list(ranking[:k]), columns=["layer", "expert"]), k)


def faithfulness(lm: LoadedModel, sc: Scores, plant: Plant, ks: Sequence[int] = range(1, 11), draws: int = 10,
                 seed: int = 0, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per planted relation, scope, method (and 'matched random', one row per draw) and k: the relation's per-prompt
    reciprocal ranks with the top-k pairs blocked (re-routing, every position); k = 0 is the unblocked model.

    Columns: relation, scope, method, draw, k, mrr, drop (1 - MRR_k / MRR_0), rr (list, per prompt).
    """
    fr, methods = sc.facts, list(methods or sc.per_prompt)
    base = tasks.scores(lm, fr).rr.to_numpy()
    cache: dict[tuple, np.ndarray] = {}

    def rr(spec: dict[int, list[int]], idx: np.ndarray) -> np.ndarray:
        """Reciprocal ranks of the prompts ``idx`` with ``spec`` blocked (each spec and prompt set scored once)."""
        key = (tuple(sorted((l, tuple(sorted(e))) for l, e in spec.items())), tuple(idx))
        if key not in cache:
            with blocking.blocked(lm.model, "reroute", spec):
                cache[key] = tasks.scores(lm, fr.iloc[idx]).rr.to_numpy()
        return cache[key]

    out = []

    def add(relation, scope, method, draw, k, r, r0):
        out.append({"relation": relation, "scope": scope, "method": method, "draw": draw, "k": k, "mrr": r.mean(),
                    "drop": 1 - r.mean() / r0.mean() if r0.mean() else np.nan, "rr": r.tolist(),
                    "rr_before": r0.tolist()})

    planted_rows = np.flatnonzero(fr.relation.isin(list(plant)).to_numpy())
    for scope in SCOPES:
        pairs = [sc.pairs[c] for c in sc.columns(scope)]
        random = {k: blocking.random_specs(pairs, k, draws, seed + k) for k in ks}
        for relation in plant:
            idx = sc.rows(relation)
            where = np.searchsorted(planted_rows, idx)  # the relation's prompts among the planted relations' prompts
            for m in methods:
                add(relation, scope, m, 0, 0, base[idx], base[idx])
                ranked = sc.ranking(m, relation, scope)
                for k in ks:
                    add(relation, scope, m, 0, k, rr(top_spec(ranked, k), idx), base[idx])
            for d in range(draws):
                add(relation, scope, "matched random", d, 0, base[idx], base[idx])
                for k in ks:  # one pass over every planted relation's prompts per draw
                    add(relation, scope, "matched random", d, k, rr(random[k][d], planted_rows)[where], base[idx])
    return pd.DataFrame(out)


def areas(curves: pd.DataFrame) -> pd.DataFrame:
    """Per relation, scope and method: faithfulness area = mean over k >= 1 of the drop (random: mean over draws of
    each draw's area, with the draws' 2.5-97.5% range), and the excess over the matched random area."""
    c = curves[curves.k > 0]
    per = c.groupby(["relation", "scope", "method", "draw"], as_index=False, sort=False)["drop"].mean()
    rnd = per[per.method == "matched random"].groupby(["relation", "scope"])["drop"]
    base = rnd.mean().rename("random_area").to_frame().join(rnd.quantile(0.025).rename("random_low")).join(
        rnd.quantile(0.975).rename("random_high"))
    out = per.groupby(["relation", "scope", "method"], as_index=False, sort=False)["drop"].mean().rename(
        columns={"drop": "faithfulness"})
    out = out.join(base, on=["relation", "scope"])
    out["excess"] = out.faithfulness - out.random_area
    return out


def method_table(ranks: pd.DataFrame, area: pd.DataFrame) -> pd.DataFrame:
    """The benchmark's table: per relation, method and scope, precision@|plant|, auc, best_rank, spearman_te,
    faithfulness area, the matched random area and the excess."""
    keys = ["relation", "scope", "method"]
    return ranks.merge(area[area.method != "matched random"], on=keys, how="left").reindex(columns=
        keys + ["planted", "pairs", "chance_precision", "precision", "auc", "best_rank", "spearman_te",
                "faithfulness", "random_area", "excess"])


def plot(curves: pd.DataFrame, scope: str = SCOPES[0], methods: Sequence[str] | None = None):
    """One panel per planted relation: relation MRR as each method's top-k pairs are blocked, against the matched
    random control (grey band: the draws' range)."""
    import matplotlib.pyplot as plt

    c = curves[curves.scope == scope]
    relations = list(dict.fromkeys(c.relation))
    methods = [m for m in (methods or dict.fromkeys(c.method)) if m != "matched random"]
    fig, axes = plt.subplots(1, max(1, len(relations)), figsize=(4.2 * max(1, len(relations)), 3.4), squeeze=False)
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors))
    for ax, relation in zip(axes[0], relations):
        r = c[c.relation == relation]
        rnd = r[r.method == "matched random"].groupby("k").mrr
        ax.fill_between(rnd.min().index, rnd.min(), rnd.max(), color="#bbbbbb", alpha=0.5, label="matched random")
        for m in methods:
            g = r[r.method == m].sort_values("k")
            ax.plot(g.k, g.mrr, marker=".", lw=1.6 if m in ("lpi", REFERENCE) else 1.0, color=colors.get(m), label=m,
                    ls="--" if m == "random" else "-")
        ax.set(title=f"{relation} ({scope})", xlabel="top-k pairs blocked", ylabel="relation MRR")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return fig


CLAIMS = {
    "reference": verdicts.Claim(
        "planted: the causal reference ranks the plant first", PAPER, "attribution.methods",
        "the total effect of removing each expert at the last position ranks the relation's planted experts first",
        "ground truth", "precision@|planted| of the total-effect ranking, all layers (seeds, then prompts)",
        verdicts.at_least(0.5), "random ranking: |planted| / pairs",
        GROUND_TRUTH, role="self-check"),
    "lpi": verdicts.Claim(
        "planted: paper LPI ranks the plant first", PAPER, "attribution.methods",
        "LPI under the paper's lens ranks the relation's planted experts first", "ground truth",
        "precision@|planted| of the LPI ranking, all layers (seeds, then prompts)", verdicts.at_least(0.5),
        "random ranking: |planted| / pairs", GROUND_TRUTH, role="self-check"),
    "lpi_without_layer0": verdicts.Claim(
        "planted: paper LPI ranks the plant first with layer 0 set apart", PAPER, "attribution.methods",
        "LPI under the paper's lens ranks the planted experts first among the pairs of layers 1..L-1",
        "ground truth", "precision@|planted| of the LPI ranking without layer 0 (seeds, then prompts)",
        verdicts.at_least(0.5), "random ranking: |planted| / pairs of layers 1..L-1",
        GROUND_TRUTH, role="self-check"),
    "lpi_faithful": verdicts.Claim(
        "planted: blocking paper LPI's top experts hurts more than random", PAPER, "attribution.methods",
        "blocking the top-k LPI pairs (k = 1..K) lowers the relation's MRR more than blocking k random pairs",
        "ground truth", "faithfulness area of the LPI ranking, all layers (seeds, then prompts)",
        verdicts.exceeds_control(0.0), "k random pairs of the scope (mean over the draws), paired on the same prompts",
        GROUND_TRUTH, role="self-check"),
}


def _precision_estimate(sc: Scores, method: str, relation: str, scope: str, planted: set, reps: int,
                        seed: int) -> verdicts.Estimate:
    rows = sc.rows(relation)
    cols = sc.columns(scope)
    is_planted = np.array([sc.pairs[c] in planted for c in cols])
    k = int(is_planted.sum())

    def statistic(idx):
        order = np.argsort(-sc.total(method, relation, scope, rows[idx]), kind="stable")
        return float(is_planted[order[:k]].sum() / k)

    return verdicts.bootstrap(statistic, len(rows), reps, seed)


def _auc_estimate(sc: Scores, method: str, relation: str, scope: str, planted: set, reps: int,
                  seed: int) -> verdicts.Estimate:
    rows = sc.rows(relation)
    is_planted = np.array([sc.pairs[c] in planted for c in sc.columns(scope)])
    return verdicts.bootstrap(lambda idx: ranking_scores(sc.total(method, relation, scope, rows[idx]), is_planted)["auc"],
                              len(rows), reps, seed)


def _area_statistic(curves: pd.DataFrame, relation: str, scope: str, method: str):
    """statistic(idx) -> the faithfulness area on the prompts ``idx`` (for 'matched random': the mean over draws)."""
    c = curves[(curves.relation == relation) & (curves.scope == scope) & (curves.method == method) & (curves.k > 0)]
    after = np.array(c.rr.tolist()).reshape(c.draw.nunique(), c.k.nunique(), -1)  # [draws, ks, prompts]
    before = np.asarray(c.rr_before.iloc[0])

    def statistic(idx):
        b = before[idx].mean()
        return float((1 - after[:, :, idx].mean(-1) / b).mean()) if b else np.nan

    return statistic


def _area_estimate(curves: pd.DataFrame, relation: str, scope: str, method: str, reps: int,
                   seed: int) -> verdicts.Estimate:
    return verdicts.bootstrap(_area_statistic(curves, relation, scope, method), len(_prompts(curves, relation)),
                              reps, seed)


def _prompts(curves: pd.DataFrame, relation: str) -> list:
    return curves[curves.relation == relation].rr_before.iloc[0]


def _excess_estimate(curves: pd.DataFrame, relation: str, scope: str, method: str, reps: int,
                     seed: int) -> verdicts.Estimate:
    """The area minus the matched random area, paired over the same prompt resamples."""
    kit, rnd = (_area_statistic(curves, relation, scope, m) for m in (method, "matched random"))
    return verdicts.bootstrap(lambda idx: kit(idx) - rnd(idx), len(_prompts(curves, relation)), reps, seed)


#: the statistics of the method table that get an interval over seeds
TABLE_STATISTICS = ("precision", "auc", "faithfulness", "excess")


def seed_estimates(sc: Scores, curves: pd.DataFrame, plant: Plant, reps: int = 1000,
                   seed: int = 0) -> dict[tuple[str, str, str], dict[str, verdicts.Estimate]]:
    """{(relation, scope, method): {statistic: estimate}} of one seed, each a bootstrap over the relation's prompts
    (the same resamples for every statistic, so differences pair): precision@|plant| and AUC re-rank each resample;
    faithfulness is the area, excess the area minus the matched random area on the same resample. 'random' is the
    mean of :data:`RANDOM_RANKINGS` random rankings (no interval within a seed) for precision and AUC."""
    out = {}
    ranks = ranking_table(sc, plant, seed)
    for relation in plant:
        planted = planted_pairs(plant, relation)
        for scope in SCOPES:
            for m in sc.per_prompt:
                est = {"faithfulness": _area_estimate(curves, relation, scope, m, reps, seed),
                       "excess": _excess_estimate(curves, relation, scope, m, reps, seed)}
                if m == "random":
                    r = ranks[(ranks.relation == relation) & (ranks.scope == scope) & (ranks.method == m)].iloc[0]
                    est |= {"precision": verdicts.Estimate(r.precision), "auc": verdicts.Estimate(r.auc)}
                else:
                    est |= {"precision": _precision_estimate(sc, m, relation, scope, planted, reps, seed),
                            "auc": _auc_estimate(sc, m, relation, scope, planted, reps, seed)}
                out[(relation, scope, m)] = est
    return out


def _over_seeds(estimates: Sequence[verdicts.Estimate]) -> verdicts.Estimate:
    if len(estimates) > 1 and all(not len(e.draws) for e in estimates):
        return statistics.t_interval([e.value for e in estimates])
    return statistics.over_seeds(list(estimates))


def interval_table(per_seed: Sequence[dict]) -> pd.DataFrame:
    """The method table over seeds: per relation, scope and method, each of :data:`TABLE_STATISTICS` as the mean
    over seeds with its :func:`moescope.statistics.over_seeds` interval (seeds, then prompts; a t interval over the
    seeds for the random floor); ``seeds``: how many."""
    rows = []
    for key in per_seed[0] if per_seed else []:
        row = dict(zip(("relation", "scope", "method"), key)) | {"seeds": len(per_seed)}
        for stat in TABLE_STATISTICS:
            e = _over_seeds([s[key][stat] for s in per_seed])
            row |= {stat: e.value, f"{stat}_low": e.low, f"{stat}_high": e.high}
        rows.append(row)
    return pd.DataFrame(rows)


def show_intervals(table: pd.DataFrame, scope: str = SCOPES[0], digits: int = 2) -> pd.DataFrame:
    """:func:`interval_table` rows of ``scope`` as text, 'value [low, high]' per statistic, one row per relation and
    method."""
    t = table[table.scope == scope]
    out = t[["relation", "method"]].copy()
    for stat in TABLE_STATISTICS:
        out[stat] = [f"{v:.{digits}f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(lo) and np.isfinite(hi)
                     else "") for v, lo, hi in zip(t[stat], t[f"{stat}_low"], t[f"{stat}_high"])]
    return out.reset_index(drop=True)


def claim_rows(per_seed: Sequence[dict], evidence: Sequence[dict], plant: Plant, model: str = "") -> pd.DataFrame:
    """One verdict row per planted relation and check (:data:`CLAIMS`) over the seeds' :func:`seed_estimates`, by the
    rules fixed above, with the ground-truth preconditions (:data:`moescope.attribution.ground_truth.GROUND_TRUTH`:
    the relation known beyond its prior, the plant causally confirmed) from the seeds' blocking ``evidence``;
    without a plant, one 'not testable' row per check."""
    if not plant or not per_seed:
        return verdicts.table([verdicts.decide(c, {"planted": False}, None, model=model) for c in CLAIMS.values()])
    rows = []
    for relation in plant:
        planted = planted_pairs(plant, relation)
        note = f"relation {relation}; plant {sorted(planted)}"
        facts = ground_truth.relation_facts(evidence, plant, relation)
        for check, method, scope in (("reference", REFERENCE, SCOPES[0]), ("lpi", "lpi", SCOPES[0]),
                                     ("lpi_without_layer0", "lpi", SCOPES[1])):
            key = (relation, scope, method)
            if key not in per_seed[0]:
                continue
            est = _over_seeds([s[key]["precision"] for s in per_seed])
            chance = verdicts.Estimate(len(planted) / _pairs_in(per_seed, scope, plant))
            rows.append(_row(check, facts, est, chance, note, relation, model))
        key = (relation, SCOPES[0], "lpi")
        if key in per_seed[0]:
            kit = _over_seeds([s[key]["faithfulness"] for s in per_seed])
            diff = _over_seeds([s[key]["excess"] for s in per_seed])
            control = verdicts.Estimate(kit.value - diff.value, n=kit.n, over=kit.over)
            rows.append(_row("lpi_faithful", facts, kit, control, note, relation, model, diff))
    return verdicts.table(rows)


def _pairs_in(per_seed: Sequence[dict], scope: str, plant: Plant) -> int:
    return per_seed[0]["_pairs"][scope]


def _row(check: str, facts: dict, kit, control, note: str, relation: str, model: str, diff=None) -> dict:
    row = verdicts.decide(CLAIMS[check], facts, kit, control, note=note, model=model, diff=diff)
    return row | {"claim": f"{row['claim']} ({relation})"}


def run(model: str | Sequence[str], relations: Sequence[str], n_samples: int | None, ks: Sequence[int] = range(1, 11),
        draws: int = 10, ig_steps: int = 8, methods: Sequence[str] = METHODS, seed: int = 0,
        templates: tasks.Templates = tasks.HELD_OUT, device: str = "cpu", dtype: str | None = None,
        across_seeds: bool = True, reps: int = 1000) -> dict[str, pd.DataFrame]:
    """Every table of the benchmark in one call, for ``model`` and (``across_seeds``) its registered seeds: plant,
    per-method ranking scores, faithfulness curves and areas, the method table (each with a model column), the
    method table over seeds with intervals (``intervals``), the LPI lenses' depth statistics with layer 0 set apart,
    verdict rows over the seeds. A model without a plant (or a dense one) gets empty tables and 'not testable'
    verdicts. Only the planted relations' prompts are scored."""
    names = ground_truth.seed_models(model, across_seeds)
    plant = ground_truth.load_plant(names[0], relations)
    empty = pd.DataFrame()
    label = ground_truth.seed_label(names)
    fr = tasks.facts(relations, n_samples, templates)
    fr = fr[fr.relation.isin(list(plant))].reset_index(drop=True)  # only planted relations are ranked
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in ("ranks", "curves", "areas", "table", "depth")}
    per_seed, evidence, kept = [], [], {}
    for name in names:
        torch.manual_seed(seed)
        lm = tasks.loaded(zoo.require_trained(name), device, dtype)
        if not plant or not any(p.is_moe for p in arch.layers(lm.model)):
            continue
        sc = scores(lm, fr, methods, ig_steps, seed)
        ranks = ranking_table(sc, plant, seed)
        curves = faithfulness(lm, sc, plant, ks, draws, seed)
        area = areas(curves)
        for k, v in (("ranks", ranks), ("curves", curves), ("areas", area), ("table", method_table(ranks, area)),
                     ("depth", sc.depth)):
            out[k].append(v.assign(model=name))
        blocked = ground_truth.blocking_table(lm, fr, plant, seed=seed)
        evidence.append(ground_truth.seed_evidence(empty, blocked, fr, plant, len(sc.pairs), reps, seed))
        per_seed.append(seed_estimates(sc, curves, plant, reps, seed)
                        | {"_pairs": {scope: len(sc.columns(scope)) for scope in SCOPES}})
        kept[name] = sc
    tables = {k: pd.concat(v, ignore_index=True) if v else empty for k, v in out.items()}
    estimates = [{k: v for k, v in s.items() if k != "_pairs"} for s in per_seed]
    return {"plant": ground_truth.plant_table(plant), **tables, "intervals": interval_table(estimates),
            "scores": kept, "claims": claim_rows(per_seed, evidence, plant, model=label)}
