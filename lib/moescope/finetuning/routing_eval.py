"""How well an MoE's routing separates domains (DES-MoE, Li et al., EMNLP 2025): pure torch on recorded routing.

DES-MoE reports an expert-usage overlap between domains of 0.18 with its domain-guided masks against 0.47 without
(the overlap is not defined in the paper) and "+37% routing-assignment errors" for ESFT with an adaptive router.
This module fixes one reading of each, on the routing of N real tokens through L MoE layers:

- ``experts`` [N, L, K]: the K routed experts of each token in each layer, by weight (column 0 = top-1);
  ``domain`` [N] and ``sequence`` [N]: each token's domain index (into ``names``) and sequence id (one sequence,
  one domain); ``hidden`` [N, L, H]: the router's input at each layer.
- n(d, e): number of domain-d tokens whose top-1 expert is e (one layer); N = sum n(d, e).
- Purity = sum_e max_d n(d, e) / N (1 when every expert serves one domain).
- NMI = I(D; E) / ((H(D) + H(E)) / 2), natural log, from p(d, e) = n(d, e) / N (0 when H(D) + H(E) = 0).
- Assignment accuracy (one reading of "routing-assignment errors" = 1 - accuracy; the claim's own is the share of
  tokens routed otherwise than ESFT's router would, :func:`.evaluate.routing_scores`), cross-fitted so that a routing
  that merely scatters tokens cannot score well by overfitting: each expert is given the domain that sends it the
  most top-1 tokens from even-numbered sequences (sequence id % 2 == 0; ties -> smallest domain index; an expert
  with none of those tokens -> the most frequent domain among them), and the score is the share of tokens of
  odd-numbered sequences whose top-1 expert is given their own domain. Splitting by sequence, not by token, keeps
  the tokens of one text on one side.
- Expert sets (the overlap): A[d, e] = share of domain-d tokens whose K experts include e; S_d = {e : A[d, e] >=
  phi * max_e A[d, e]}, the DGES rule of :class:`.desmoe.Affinity` (phi = 0.6); overlap = Jaccard |S_a ∩ S_b| /
  |S_a ∪ S_b|, averaged over the pairs of domains that have tokens.

:func:`routing_report` averages each metric over layers and sets two nulls beside it. ``shuffled``: the domain
labels permuted across sequences (each sequence keeps its tokens together and takes another sequence's domain),
which keeps the routing and the domain sizes and breaks only the link between them; mean and 2.5%/97.5% quantiles
over permutations. ``hidden``: the routing replaced by k-means (k = n_experts) on each layer's router input, the
domain separation the hidden states alone carry (expert-usage similarity is argued to follow hidden-state
similarity); a router that separates domains better than its own input's clusters adds separation of its own.

Everything is vectorised over tokens (bincount / index_add / matrix products); loops run over layers, permutations
and Lloyd iterations only. Counts are float64 integers, so token- and sequence-level sums agree exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

METRICS = ("accuracy", "purity", "nmi", "jaccard")
_F = torch.float64


# ----------------------------------------------------------------------------------------------- validation


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_dims(name: str, t: torch.Tensor, dims: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}; got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} has {dims} dims {layout}; got shape {_shape(t)}")


def _check_integer(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor; got {t.dtype}")


def _check_range(name: str, t: torch.Tensor, high: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= high):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"{name} holds index {bad} outside [0, {what}={high})")


def _check_labels(top1: torch.Tensor, domain: torch.Tensor, n_experts: int, n_domains: int,
                  top1_name: str = "top1", layout: str = "[N]") -> None:
    """One layer's routing ``top1`` (dims as ``layout``, N first) and ``domain`` [N], both integer and in range."""
    _check_dims(top1_name, top1, len(layout.split(",")), layout)
    _check_dims("domain", domain, 1, "[N]")
    _check_integer(top1_name, top1)
    _check_integer("domain", domain)
    if top1.shape[0] != domain.shape[0]:
        raise ValueError(f"{top1_name} has {top1.shape[0]} tokens but domain has {domain.shape[0]}")
    if domain.shape[0] == 0:
        raise ValueError("no tokens: N = 0")
    _check_range(top1_name, top1, n_experts, "n_experts")
    _check_range("domain", domain, n_domains, "n_domains")


def _sequence_domain(domain: torch.Tensor, sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [S], inverse [N], label [S]): the distinct sequence ids, each token's row in them, each sequence's
    domain; ValueError if a sequence mixes domains."""
    _check_dims("sequence", sequence, 1, "[N]")
    _check_integer("sequence", sequence)
    if sequence.shape[0] != domain.shape[0]:
        raise ValueError(f"sequence has {sequence.shape[0]} tokens but domain has {domain.shape[0]}")
    ids, inverse = torch.unique(sequence, return_inverse=True)
    label = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, domain.long())
    mixed = label[inverse] != domain
    if bool(mixed.any()):
        raise ValueError(f"sequence {int(sequence[mixed][0])} mixes domains; each sequence must have one domain")
    return ids, inverse, label


# ------------------------------------------------------------------------------------- metrics on count tables


def _joint(top1: torch.Tensor, domain: torch.Tensor, n_experts: int, n_domains: int) -> torch.Tensor:
    """n[d, e] = #{tokens of domain d with top-1 expert e}, float64 [D, E]."""
    flat = domain.long() * n_experts + top1.long()
    return torch.bincount(flat, minlength=n_domains * n_experts).view(n_domains, n_experts).to(_F)


def _purity(joint: torch.Tensor) -> float:
    """sum_e max_d n[d, e] / sum n."""
    return float(joint.amax(dim=0).sum() / joint.sum())


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over p > 0."""
    p = p[p > 0]
    return -(p * p.log()).sum()


def _nmi(joint: torch.Tensor) -> float:
    """2 I(D;E) / (H(D) + H(E)), I = sum_{p(d,e)>0} p(d,e) log(p(d,e) / (p(d) p(e))) clamped at 0 (it is >= 0 up to
    rounding); 0.0 when H(D) + H(E) == 0."""
    p = joint / joint.sum()
    pd, pe = p.sum(1), p.sum(0)
    denom = _entropy(pd) + _entropy(pe)
    if float(denom) == 0.0:
        return 0.0
    nz = p > 0
    outer = pd[:, None] * pe[None, :]
    info = (p[nz] * (p[nz] / outer[nz]).log()).sum().clamp(min=0)
    return float(2 * info / denom)


def _accuracy(fit: torch.Tensor, test: torch.Tensor) -> float:
    """With map(e) = argmax_d fit[d, e] (first maximum; experts with sum_d fit[d, e] = 0 get argmax_d sum_e fit[d, e]),
    sum_e test[map(e), e] / sum test."""
    if float(fit.sum()) == 0:
        raise ValueError("assignment_accuracy: no tokens of even-numbered sequences to fit the expert-domain map")
    if float(test.sum()) == 0:
        raise ValueError("assignment_accuracy: no tokens of odd-numbered sequences to score the expert-domain map")
    mapping = fit.argmax(dim=0)
    fallback = fit.sum(1).argmax()
    mapping = torch.where(fit.sum(0) > 0, mapping, fallback)
    correct = test.gather(0, mapping[None, :]).sum()
    return float(correct / test.sum())


def _sets(counts: torch.Tensor, tokens: torch.Tensor, phi: float) -> torch.Tensor:
    """A = counts / tokens; A[d, e] >= phi * max_e A[d, e], False where tokens[d] == 0."""
    share = counts / tokens.clamp(min=1)[:, None]
    return (share >= phi * share.amax(dim=1, keepdim=True)) & (tokens > 0)[:, None]


def _hits(experts_layer: torch.Tensor, n_experts: int) -> torch.Tensor:
    """hit[t, e] = e in experts_layer[t] (duplicates in a row count once), bool [N, E]."""
    hit = torch.zeros(experts_layer.shape[0], n_experts, dtype=torch.bool)
    return hit.scatter_(1, experts_layer.long(), True)


# ---------------------------------------------------------------------------------------------- public metrics


def purity(top1: torch.Tensor, domain: torch.Tensor, n_experts: int, n_domains: int) -> float:
    """Purity of one layer's top-1 routing: sum_e max_d n(d, e) / N, n(d, e) = #{domain-d tokens with top-1 e}."""
    _check_labels(top1, domain, n_experts, n_domains)
    return _purity(_joint(top1, domain, n_experts, n_domains))


def nmi(top1: torch.Tensor, domain: torch.Tensor, n_experts: int, n_domains: int) -> float:
    """NMI = I(D; E) / ((H(D) + H(E)) / 2) with p(d, e) = n(d, e) / N, natural log; 0.0 when H(D) + H(E) == 0."""
    _check_labels(top1, domain, n_experts, n_domains)
    return _nmi(_joint(top1, domain, n_experts, n_domains))


def assignment_accuracy(top1: torch.Tensor, domain: torch.Tensor, sequence: torch.Tensor, n_experts: int,
                        n_domains: int) -> float:
    """Cross-fitted expert -> domain assignment accuracy of one layer's top-1 routing.

    Fit on tokens of even sequences (sequence % 2 == 0): map(e) = argmax_d n_fit(d, e), ties -> smallest d; an
    expert with no fit token maps to argmax_d n_fit(d) (the most frequent fit domain, ties -> smallest d). Score on
    tokens of odd sequences: #{t : map(top1[t]) == domain[t]} / #{odd tokens}. ValueError if either half is empty.
    """
    _check_labels(top1, domain, n_experts, n_domains)
    _check_dims("sequence", sequence, 1, "[N]")
    _check_integer("sequence", sequence)
    if sequence.shape[0] != domain.shape[0]:
        raise ValueError(f"sequence has {sequence.shape[0]} tokens but domain has {domain.shape[0]}")
    even = sequence % 2 == 0
    fit = _joint(top1[even], domain[even], n_experts, n_domains)
    test = _joint(top1[~even], domain[~even], n_experts, n_domains)
    return _accuracy(fit, test)


def expert_sets(experts_layer: torch.Tensor, domain: torch.Tensor, n_experts: int, n_domains: int,
                phi: float = 0.6) -> torch.Tensor:
    """DGES expert sets of one layer, bool [D, E]: A[d, e] = #{domain-d tokens whose K experts include e} /
    #{domain-d tokens}; set_d = {e : A[d, e] >= phi * max_e A[d, e]}; all False for a domain without tokens."""
    _check_labels(experts_layer, domain, n_experts, n_domains, "experts_layer", "[N, K]")
    counts = torch.zeros(n_domains, n_experts, dtype=_F).index_add_(0, domain.long(),
                                                                     _hits(experts_layer, n_experts).to(_F))
    tokens = torch.bincount(domain.long(), minlength=n_domains).to(_F)
    return _sets(counts, tokens, phi)


def jaccard(sets: torch.Tensor) -> torch.Tensor:
    """J[a, b] = |S_a ∩ S_b| / |S_a ∪ S_b| for bool sets [D, E], float64 [D, D]; 0 where the union is empty, and
    J[a, a] = 1 (also for an empty set)."""
    _check_dims("sets", sets, 2, "[D, E]")
    s = sets.bool().to(_F)
    inter = s @ s.T
    size = s.sum(1)
    union = size[:, None] + size[None, :] - inter
    out = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return out.fill_diagonal_(1.0)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of (token, layer) pairs whose K-expert sets agree: mean_{t,l} [sort(a[t, l]) == sort(b[t, l])]
    (order within K ignored)."""
    _check_dims("a", a, 3, "[N, L, K]")
    _check_dims("b", b, 3, "[N, L, K]")
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape: {_shape(a)} vs {_shape(b)}")
    if a.numel() == 0:
        raise ValueError(f"agreement of empty routing: shape {_shape(a)}")
    same = (a.sort(dim=-1).values == b.sort(dim=-1).values).all(dim=-1)
    return float(same.to(_F).mean())


def permuted_domains(domain: torch.Tensor, sequence: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Domain labels permuted across sequences: with label[s] the domain of sequence s and pi a uniform random
    permutation of the S sequences (``torch.randperm`` with ``generator``), token t of sequence s gets
    label[pi(s)]. Every sequence stays whole and the multiset of sequence labels is kept."""
    _check_dims("domain", domain, 1, "[N]")
    _, inverse, label = _sequence_domain(domain, sequence)
    perm = torch.randperm(len(label), generator=generator)
    return label[perm][inverse]


# --------------------------------------------------------------------------------------------------- k-means


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 = ||x_i||^2 - 2 x_i.c_j + ||c_j||^2, clamped at 0, [N, k]."""
    return ((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]).clamp(min=0)


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centre uniform; each next one drawn with probability proportional to the
    squared distance to the nearest chosen centre (uniform if every point sits on a centre)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    nearest = _sq_dist(x, x[first][None]).squeeze(1)
    for _ in range(1, k):
        if float(nearest.sum()) > 0:
            pick = int(torch.multinomial(nearest, 1, generator=generator))
        else:
            pick = int(torch.randint(n, (1,), generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, _sq_dist(x, x[pick][None]).squeeze(1))
    return torch.stack(centres)


def kmeans_assign(x: torch.Tensor, k: int, top: int = 1, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """Indices [N, top] of each point's ``top`` nearest k-means centroids, nearest first (ties -> smaller index).

    x [N, H] in float64; k-means++ seeding from ``torch.Generator().manual_seed(seed)``, then at most ``iters``
    Lloyd steps c_j <- mean{x_i : argmin_j' ||x_i - c_j'||^2 = j} (an empty cluster keeps its centroid), stopping
    early when the centroids no longer move. Euclidean distance on the raw vectors (no normalisation)."""
    _check_dims("x", x, 2, "[N, H]")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans_assign needs 1 <= k <= N; got k={k}, N={n}")
    if not 1 <= top <= k:
        raise ValueError(f"kmeans_assign needs 1 <= top <= k; got top={top}, k={k}")
    x = x.detach().to(_F)
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeans_pp(x, k, generator)
    for _ in range(iters):
        assign = _sq_dist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        size = torch.bincount(assign, minlength=k)
        moved = torch.where((size > 0)[:, None], sums / size.clamp(min=1)[:, None].to(_F), centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return _sq_dist(x, centres).argsort(dim=1, stable=True)[:, :top]


# ---------------------------------------------------------------------------------------------------- report


class _Tables:
    """Per-sequence counts of one routing ([N, L, K]) that every metric of a labelling of the sequences needs:
    top1[l] [S, E] (top-1 counts), hits[l] [S, E] (tokens whose K experts include e), tokens [S], even [S]."""

    def __init__(self, experts: torch.Tensor, inverse: torch.Tensor, ids: torch.Tensor, n_experts: int):
        s = len(ids)
        self.n_experts = n_experts
        self.tokens = torch.bincount(inverse, minlength=s).to(_F)
        self.even = ids % 2 == 0
        self.top1, self.hits = [], []
        for layer in range(experts.shape[1]):
            flat = inverse * n_experts + experts[:, layer, 0].long()
            self.top1.append(torch.bincount(flat, minlength=s * n_experts).view(s, n_experts).to(_F))
            hit = _hits(experts[:, layer], n_experts).to(_F)
            self.hits.append(torch.zeros(s, n_experts, dtype=_F).index_add_(0, inverse, hit))

    def scores(self, label: torch.Tensor, n_domains: int, pairs: list[tuple[int, int]],
               phi: float) -> tuple[dict[str, float], torch.Tensor]:
        """Layer means of accuracy, purity, NMI and the mean pairwise Jaccard for sequence labels ``label`` [S];
        and the layer-mean Jaccard matrix [D, D]."""
        def by_domain(table: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
            out = torch.zeros(n_domains, *table.shape[1:], dtype=_F)
            return out.index_add_(0, label[rows], table[rows])

        tokens = by_domain(self.tokens)
        i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        per_layer = {m: [] for m in METRICS}
        matrices = []
        for top1, hits in zip(self.top1, self.hits):
            joint = by_domain(top1)
            per_layer["purity"].append(_purity(joint))
            per_layer["nmi"].append(_nmi(joint))
            per_layer["accuracy"].append(_accuracy(by_domain(top1, self.even), by_domain(top1, ~self.even)))
            matrix = jaccard(_sets(by_domain(hits), tokens, phi))
            per_layer["jaccard"].append(float(matrix[i, j].mean()))
            matrices.append(matrix)
        means = {m: sum(v) / len(v) for m, v in per_layer.items()}
        return means, torch.stack(matrices).mean(0)


def _check_report(experts: torch.Tensor, domain: torch.Tensor, sequence: torch.Tensor, names: Sequence[str],
                  n_experts: int, hidden: torch.Tensor | None) -> None:
    _check_dims("experts", experts, 3, "[N, L, K]")
    _check_integer("experts", experts)
    if 0 in experts.shape:
        raise ValueError(f"experts is empty [N, L, K]; got shape {_shape(experts)}")
    _check_dims("domain", domain, 1, "[N]")
    _check_integer("domain", domain)
    if domain.shape[0] != experts.shape[0]:
        raise ValueError(f"domain has {domain.shape[0]} tokens but experts has {experts.shape[0]}")
    _check_dims("sequence", sequence, 1, "[N]")
    if sequence.shape[0] != experts.shape[0]:
        raise ValueError(f"sequence has {sequence.shape[0]} tokens but experts has {experts.shape[0]}")
    _check_range("experts", experts, n_experts, "n_experts")
    _check_range("domain", domain, len(names), "len(names)")
    present = torch.unique(domain)
    if len(present) < 2:
        raise ValueError(f"fewer than 2 domains present: {[names[int(d)] for d in present]}")
    if hidden is not None:
        _check_dims("hidden", hidden, 3, "[N, L, H]")
        if _shape(hidden)[:2] != _shape(experts)[:2]:
            raise ValueError(f"hidden has shape {_shape(hidden)} but experts has [N, L] = {_shape(experts)[:2]}")
        if experts.shape[0] < n_experts:
            raise ValueError(f"hidden-state null needs N >= n_experts clusters; got N={experts.shape[0]}, "
                             f"n_experts={n_experts}")
        if experts.shape[2] > n_experts:
            raise ValueError(f"experts has K={experts.shape[2]} > n_experts={n_experts}")


def routing_report(experts: torch.Tensor, domain: torch.Tensor, sequence: torch.Tensor, names: Sequence[str],
                   n_experts: int, hidden: torch.Tensor | None = None, phi: float = 0.6, permutations: int = 20,
                   seed: int = 0) -> dict:
    """Domain separation of a routing ``experts`` [N, L, K], each metric the mean over the L layers (JSON-ready).

    Keys: "accuracy" (:func:`assignment_accuracy`), "purity", "nmi" (top-1 = experts[:, l, 0]); "jaccard": mean
    over pairs a < b of domains with tokens of :func:`jaccard` of :func:`expert_sets` (phi), then over layers;
    "jaccard_pairs": {"<a>|<b>": layer-mean Jaccard} in the order of ``names``; "shuffled": for each of the four
    metrics {"mean", "low", "high"} (mean and 2.5% / 97.5% quantiles, linear interpolation) over ``permutations``
    relabellings by :func:`permuted_domains` (one ``torch.Generator`` seeded with ``seed``; omitted when
    permutations = 0); "hidden" (when ``hidden`` [N, L, H] is given): the four metrics with each layer's routing
    replaced by :func:`kmeans_assign` of hidden[:, l] with k = n_experts and top = K (seed ``seed``); "tokens" N,
    "layers" L, "domains" list(names)."""
    _check_report(experts, domain, sequence, names, n_experts, hidden)
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0; got {permutations}")
    n, n_layers, k = experts.shape
    n_domains = len(names)
    ids, inverse, label = _sequence_domain(domain, sequence)
    even = ids % 2 == 0
    if not bool(even.any()) or bool(even.all()):
        raise ValueError("routing_report needs sequences with both even ids (fit) and odd ids (scored) for accuracy")
    present = torch.unique(label).tolist()
    pairs = [(a, b) for a in present for b in present if a < b]

    tables = _Tables(experts, inverse, ids, n_experts)
    observed, matrix = tables.scores(label, n_domains, pairs, phi)
    report: dict = dict(observed)
    report["jaccard_pairs"] = {f"{names[a]}|{names[b]}": float(matrix[a, b]) for a, b in pairs}

    if permutations:
        generator = torch.Generator().manual_seed(seed)
        null = {m: [] for m in METRICS}
        for _ in range(permutations):
            shuffled = label[torch.randperm(len(label), generator=generator)]
            for m, v in tables.scores(shuffled, n_domains, pairs, phi)[0].items():
                null[m].append(v)
        q = torch.tensor([0.025, 0.975], dtype=_F)
        report["shuffled"] = {}
        for m, values in null.items():
            low, high = torch.quantile(torch.tensor(values, dtype=_F), q).tolist()
            report["shuffled"][m] = {"mean": sum(values) / len(values), "low": low, "high": high}

    if hidden is not None:
        pseudo = torch.stack([kmeans_assign(hidden[:, layer], n_experts, top=k, seed=seed)
                              for layer in range(n_layers)], dim=1)
        report["hidden"] = _Tables(pseudo, inverse, ids, n_experts).scores(label, n_domains, pairs, phi)[0]

    return report | {"tokens": int(n), "layers": int(n_layers), "domains": list(names)}
