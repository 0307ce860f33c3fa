"""Tests of the domain-separation metrics of a routing (moescope.finetuning.routing_eval): exact identities, slow
pure-Python references on random routings, the sequence-level shuffled null, k-means and input validation."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from moescope.finetuning import routing_eval as re_

TOL = 1e-12


# ------------------------------------------------------------------------------------- independent references


def ref_purity(top1: list[int], domain: list[int], n_experts: int, n_domains: int) -> float:
    total = 0
    for e in range(n_experts):
        total += max(sum(1 for t, d in zip(top1, domain) if t == e and d == dd) for dd in range(n_domains))
    return total / len(top1)


def ref_nmi(top1: list[int], domain: list[int], n_experts: int, n_domains: int) -> float:
    n = len(top1)
    joint = {}
    for t, d in zip(top1, domain):
        joint[(d, t)] = joint.get((d, t), 0) + 1
    pd = [sum(v for (d, _), v in joint.items() if d == dd) / n for dd in range(n_domains)]
    pe = [sum(v for (_, e), v in joint.items() if e == ee) / n for ee in range(n_experts)]
    h = lambda ps: -sum(p * math.log(p) for p in ps if p > 0)  # noqa: E731
    info = sum(v / n * math.log((v / n) / (pd[d] * pe[e])) for (d, e), v in joint.items())
    denom = h(pd) + h(pe)
    return 0.0 if denom == 0 else max(info, 0.0) / (denom / 2)


def ref_accuracy(top1: list[int], domain: list[int], sequence: list[int], n_experts: int, n_domains: int) -> float:
    fit = [(t, d) for t, d, s in zip(top1, domain, sequence) if s % 2 == 0]
    test = [(t, d) for t, d, s in zip(top1, domain, sequence) if s % 2 == 1]
    per_domain = [sum(1 for _, d in fit if d == dd) for dd in range(n_domains)]
    fallback = 0
    for dd in range(n_domains):
        if per_domain[dd] > per_domain[fallback]:
            fallback = dd
    mapping = []
    for e in range(n_experts):
        counts = [sum(1 for t, d in fit if t == e and d == dd) for dd in range(n_domains)]
        if sum(counts) == 0:
            mapping.append(fallback)
            continue
        best = 0
        for dd in range(n_domains):
            if counts[dd] > counts[best]:
                best = dd
        mapping.append(best)
    return sum(1 for t, d in test if mapping[t] == d) / len(test)


def ref_sets(experts_layer: list[list[int]], domain: list[int], n_experts: int, n_domains: int,
             phi: float) -> list[list[bool]]:
    out = []
    for dd in range(n_domains):
        rows = [set(row) for row, d in zip(experts_layer, domain) if d == dd]
        if not rows:
            out.append([False] * n_experts)
            continue
        share = [sum(1 for r in rows if e in r) / len(rows) for e in range(n_experts)]
        out.append([a >= phi * max(share) for a in share])
    return out


def ref_jaccard(sets: list[list[bool]]) -> list[list[float]]:
    as_sets = [{e for e, x in enumerate(row) if x} for row in sets]
    return [[1.0 if i == j else (len(a & b) / len(a | b) if a | b else 0.0) for j, b in enumerate(as_sets)]
            for i, a in enumerate(as_sets)]


# ------------------------------------------------------------------------------------------------ fixtures


def random_routing(n_seq: int, n_domains: int, n_layers: int, n_experts: int, k: int, seed: int, bias: float = 1.0):
    """Sequences of 1-6 tokens, each of one domain, tokens shuffled (sequences interleaved); K distinct experts per
    token, drawn with a domain-dependent preference of strength ``bias``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (n_seq,), generator=g)
    seq_domain = torch.randint(n_domains, (n_seq,), generator=g)
    sequence = torch.repeat_interleave(torch.arange(n_seq), lengths)
    order = torch.randperm(len(sequence), generator=g)
    sequence = sequence[order]
    domain = seq_domain[sequence]
    n = len(sequence)
    pref = torch.randn(n_domains, n_layers, n_experts, generator=g) * bias
    scores = pref[domain] + torch.randn(n, n_layers, n_experts, generator=g)
    experts = scores.argsort(dim=-1, descending=True)[..., :k]
    return experts, domain, sequence


def separated(n_domains: int = 3, seqs_per_domain: int = 20, length: int = 4, n_experts: int = 6):
    """Domain d routes every token to top-1 expert d and second expert d + n_domains."""
    n_seq = n_domains * seqs_per_domain
    sequence = torch.arange(n_seq).repeat_interleave(length)
    domain = sequence % n_domains
    experts = torch.stack([domain, domain + n_domains], dim=-1)[:, None, :].expand(-1, 2, -1).clone()
    return experts, domain, sequence, n_experts


# -------------------------------------------------------------------------------------------------- identities


def test_perfect_separation_scores_one():
    experts, domain, sequence, n_experts = separated()
    top1 = experts[:, 0, 0]
    assert re_.purity(top1, domain, n_experts, 3) == 1.0
    assert re_.nmi(top1, domain, n_experts, 3) == pytest.approx(1.0, abs=TOL)
    assert re_.assignment_accuracy(top1, domain, sequence, n_experts, 3) == 1.0
    sets = re_.expert_sets(experts[:, 0], domain, n_experts, 3)
    assert sets.tolist() == [[e in (d, d + 3) for e in range(6)] for d in range(3)]
    assert torch.equal(re_.jaccard(sets), torch.eye(3, dtype=torch.float64))


def test_nmi_zero_and_purity_for_an_independent_table():
    rows, cols = [1, 2, 3], [2, 1, 1, 4]  # n(d, e) = rows[d] * cols[e]: D and E exactly independent
    domain = torch.tensor([d for d in range(3) for e in range(4) for _ in range(rows[d] * cols[e])])
    top1 = torch.tensor([e for d in range(3) for e in range(4) for _ in range(rows[d] * cols[e])])
    assert abs(re_.nmi(top1, domain, 4, 3)) < TOL
    assert re_.purity(top1, domain, 4, 3) == pytest.approx(max(rows) / sum(rows), abs=TOL)


def test_nmi_is_zero_without_entropy():
    one = torch.zeros(5, dtype=torch.long)
    assert re_.nmi(one, one, 3, 2) == 0.0


def test_jaccard_identities():
    sets = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]],
                        dtype=torch.bool)
    j = re_.jaccard(sets)
    assert j[0, 1] == 1.0 and j[0, 2] == 0.0 and j[2, 3] == pytest.approx(2 / 3) and j[1, 3] == pytest.approx(0.25)
    assert j[4, 0] == 0.0 and j[4, 4] == 1.0  # empty set: 0 against others, 1 with itself by convention
    assert torch.equal(j, j.T) and torch.equal(j.diagonal(), torch.ones(5, dtype=torch.float64))


def test_expert_sets_of_a_domain_without_tokens_are_empty():
    experts = torch.tensor([[0, 1], [1, 2], [0, 1]])
    sets = re_.expert_sets(experts, torch.tensor([0, 0, 2]), 4, 3)  # domain 0: A = (0.5, 1, 0.5, 0) -> {1}
    assert sets.tolist() == [[False, True, False, False], [False] * 4, [True, True, False, False]]
    at_threshold = re_.expert_sets(experts, torch.tensor([0, 0, 2]), 4, 3, phi=0.5)  # A >= phi * max: 0.5 is in
    assert at_threshold[0].tolist() == [True, True, True, False]


def test_agreement_ignores_order_within_k():
    experts, *_ = random_routing(30, 3, 2, 8, 3, seed=0)
    assert re_.agreement(experts, experts.flip(-1)) == 1.0
    other = experts.flip(-1).clone()
    other[5, 1] = torch.tensor([e for e in range(8) if e not in experts[5, 1].tolist()][:3])
    assert re_.agreement(experts, other) == pytest.approx(1 - 1 / (experts.shape[0] * 2), abs=TOL)


# ---------------------------------------------------------------------------------------- against references


@pytest.mark.parametrize("n_seq,n_experts,bias,seed", [(60, 8, 1.0, 0), (8, 10, 0.0, 1), (40, 5, 3.0, 2)])
def test_metrics_match_python_reference(n_seq, n_experts, bias, seed):
    experts, domain, sequence = random_routing(n_seq, 3, 2, n_experts, 2, seed=seed, bias=bias)
    if not (sequence % 2 == 0).any() or not (sequence % 2 == 1).any():
        pytest.skip("degenerate draw")
    d_list, s_list = domain.tolist(), sequence.tolist()
    for layer in range(2):
        top1 = experts[:, layer, 0]
        t_list = top1.tolist()
        assert re_.purity(top1, domain, n_experts, 3) == pytest.approx(ref_purity(t_list, d_list, n_experts, 3),
                                                                        abs=TOL)
        assert re_.nmi(top1, domain, n_experts, 3) == pytest.approx(ref_nmi(t_list, d_list, n_experts, 3), abs=TOL)
        assert re_.assignment_accuracy(top1, domain, sequence, n_experts, 3) == pytest.approx(
            ref_accuracy(t_list, d_list, s_list, n_experts, 3), abs=TOL)
        for phi in (0.6, 0.5, 0.3, 0.9):
            sets = re_.expert_sets(experts[:, layer], domain, n_experts, 3, phi)
            ref = ref_sets(experts[:, layer].tolist(), d_list, n_experts, 3, phi)
            assert sets.tolist() == ref
            assert re_.jaccard(sets).flatten().tolist() == pytest.approx(sum(ref_jaccard(ref), []), abs=TOL)
    noisy = experts.clone()
    noisy[::3, :, 1] = (noisy[::3, :, 1] + 1) % n_experts
    ref_agree = sum(set(a) == set(b) for ta, tb in zip(experts.tolist(), noisy.tolist()) for a, b in zip(ta, tb))
    assert re_.agreement(experts, noisy) == pytest.approx(ref_agree / (experts.shape[0] * 2), abs=TOL)


def test_accuracy_ties_and_unfitted_experts():
    # fit (even sequences): expert 0 gets one token of each domain (tie -> domain 0); expert 1 none (-> the most
    # frequent fit domain, 1); expert 2 two tokens of domain 1.
    top1 = torch.tensor([0, 0, 2, 2, 0, 1, 1, 2])
    domain = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0])
    sequence = torch.tensor([0, 2, 4, 4, 1, 3, 5, 7])
    # scored (odd): expert 0 / domain 1 wrong, expert 1 / domain 1 right, expert 1 / domain 0 wrong, expert 2 /
    # domain 0 wrong
    assert re_.assignment_accuracy(top1, domain, sequence, 3, 2) == 0.25
    assert ref_accuracy(top1.tolist(), domain.tolist(), sequence.tolist(), 3, 2) == 0.25


# ------------------------------------------------------------------------------------------------ the report


def test_report_is_the_layer_mean_of_the_metrics_and_the_null_uses_permuted_domains():
    experts, domain, sequence = random_routing(50, 3, 3, 8, 2, seed=3)
    names = ["code", "law", "math"]
    report = re_.routing_report(experts, domain, sequence, names, 8, permutations=5, seed=7)
    assert json.loads(json.dumps(report)) == report
    assert (report["tokens"], report["layers"], report["domains"]) == (len(domain), 3, names)

    def layer_means(dom: torch.Tensor) -> dict[str, float]:
        out = {m: 0.0 for m in re_.METRICS}
        for layer in range(3):
            top1 = experts[:, layer, 0]
            out["accuracy"] += re_.assignment_accuracy(top1, dom, sequence, 8, 3) / 3
            out["purity"] += re_.purity(top1, dom, 8, 3) / 3
            out["nmi"] += re_.nmi(top1, dom, 8, 3) / 3
            j = re_.jaccard(re_.expert_sets(experts[:, layer], dom, 8, 3))
            out["jaccard"] += float(j[0, 1] + j[0, 2] + j[1, 2]) / 9
        return out

    for m, v in layer_means(domain).items():
        assert report[m] == pytest.approx(v, abs=TOL), m
    pairs = {}
    for layer in range(3):
        j = re_.jaccard(re_.expert_sets(experts[:, layer], domain, 8, 3))
        for a, b in [(0, 1), (0, 2), (1, 2)]:
            pairs[f"{names[a]}|{names[b]}"] = pairs.get(f"{names[a]}|{names[b]}", 0.0) + float(j[a, b]) / 3
    assert list(report["jaccard_pairs"]) == ["code|law", "code|math", "law|math"]
    assert report["jaccard_pairs"] == pytest.approx(pairs, abs=TOL)

    g = torch.Generator().manual_seed(7)
    null = [layer_means(re_.permuted_domains(domain, sequence, g)) for _ in range(5)]
    for m in re_.METRICS:
        values = torch.tensor([x[m] for x in null], dtype=torch.float64)
        assert report["shuffled"][m]["mean"] == pytest.approx(float(values.mean()), abs=TOL)
        assert report["shuffled"][m]["low"] == pytest.approx(float(values.quantile(0.025)), abs=TOL)
        assert report["shuffled"][m]["high"] == pytest.approx(float(values.quantile(0.975)), abs=TOL)


def test_shuffled_null_of_a_separating_routing_sits_far_from_it():
    experts, domain, sequence, n_experts = separated()
    report = re_.routing_report(experts, domain, sequence, ["a", "b", "c"], n_experts, permutations=20)
    assert (report["accuracy"], report["purity"], report["jaccard"]) == (1.0, 1.0, 0.0)
    assert report["nmi"] == pytest.approx(1.0, abs=TOL)
    for m in re_.METRICS:
        null = report["shuffled"][m]
        assert null["low"] <= null["mean"] <= null["high"], m
    for m in ("accuracy", "purity", "nmi"):
        assert report["shuffled"][m]["high"] < report[m] - 0.3, m
    assert report["shuffled"]["jaccard"]["low"] > report["jaccard"] + 0.3


def test_permuted_domains_keeps_sequences_whole():
    _, domain, sequence = random_routing(40, 4, 1, 4, 1, seed=4)
    g = torch.Generator().manual_seed(0)
    original = {s: d for s, d in zip(sequence.tolist(), domain.tolist())}
    changed = False
    for _ in range(10):
        shuffled = re_.permuted_domains(domain, sequence, g)
        per_seq: dict[int, set[int]] = {}
        for s, d in zip(sequence.tolist(), shuffled.tolist()):
            per_seq.setdefault(s, set()).add(d)
        assert all(len(v) == 1 for v in per_seq.values())
        assert sorted(next(iter(v)) for v in per_seq.values()) == sorted(original.values())
        changed |= any(next(iter(per_seq[s])) != d for s, d in original.items())
    assert changed
    again = [re_.permuted_domains(domain, sequence, torch.Generator().manual_seed(s)) for s in (5, 5)]
    assert torch.equal(*again)


def test_hidden_null_is_kmeans_routing():
    experts, domain, sequence = random_routing(40, 2, 2, 6, 2, seed=5)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(domain), 2, 4, generator=g) + 3 * domain[:, None, None].float()
    report = re_.routing_report(experts, domain, sequence, ["x", "y"], 6, hidden=hidden, permutations=2, seed=3)
    pseudo = torch.stack([re_.kmeans_assign(hidden[:, layer], 6, top=2, seed=3) for layer in range(2)], dim=1)
    expect = re_.routing_report(pseudo, domain, sequence, ["x", "y"], 6, permutations=0)
    assert "shuffled" not in expect
    assert report["hidden"] == pytest.approx({m: expect[m] for m in re_.METRICS}, abs=TOL)
    assert report["hidden"]["purity"] > 0.9  # the hidden states carry the domain here


# --------------------------------------------------------------------------------------------------- k-means


def test_kmeans_recovers_blobs_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = 20 * torch.eye(4, 6)
    blob = torch.arange(4).repeat_interleave(25)[torch.randperm(100, generator=g)]
    x = centres[blob] + 0.3 * torch.randn(100, 6, generator=g)
    labels = re_.kmeans_assign(x, 4)
    assert labels.shape == (100, 1) and labels.dtype == torch.long
    mapping = {}
    for b, c in zip(blob.tolist(), labels[:, 0].tolist()):
        assert mapping.setdefault(b, c) == c
    assert len(set(mapping.values())) == 4
    assert torch.equal(re_.kmeans_assign(x, 4, top=3, seed=11)[:, 0], re_.kmeans_assign(x, 4, seed=11)[:, 0])
    assert torch.equal(re_.kmeans_assign(x, 4, top=3, seed=11), re_.kmeans_assign(x, 4, top=3, seed=11))
    ranked = re_.kmeans_assign(x, 4, top=4)
    assert all(sorted(r) == [0, 1, 2, 3] for r in ranked.tolist())
    # the second nearest centroid of a point of blob b is never its own blob's
    assert (ranked[:, 1] != labels[:, 0]).all()


def test_kmeans_ends_at_a_lloyd_fixed_point():
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = re_.kmeans_assign(x, 4, seed=1, iters=200)[:, 0]
    means = torch.stack([x[labels == c].mean(0) for c in range(4)])
    assert torch.equal(torch.cdist(x, means).argmin(1), labels)  # every point is nearest its own cluster's mean


def test_kmeans_with_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    labels = re_.kmeans_assign(x, 4, top=2, seed=0)
    assert labels.shape == (10, 2) and int(labels.max()) < 4
    assert len(set(labels[:5, 0].tolist())) == 1 and labels[0, 0] != labels[5, 0]


# ------------------------------------------------------------------------------------------------ validation


def _bad(**change):
    experts, domain, sequence, n_experts = separated(n_domains=2, seqs_per_domain=3, length=2, n_experts=4)
    args = {"experts": experts, "domain": domain, "sequence": sequence, "names": ["a", "b"], "n_experts": n_experts}
    return lambda: re_.routing_report(**(args | change), permutations=1)


@pytest.mark.parametrize("call,message", [
    (_bad(experts=torch.zeros(4, 2, dtype=torch.long)), "experts has 3 dims [N, L, K]; got shape (4, 2)"),
    (_bad(experts=torch.zeros(12, 2, 2)), "experts must be an integer tensor; got torch.float32"),
    (_bad(domain=torch.zeros(5, dtype=torch.long)), "domain has 5 tokens but experts has 12"),
    (_bad(sequence=torch.arange(3)), "sequence has 3 tokens but experts has 12"),
    (_bad(n_experts=3), "experts holds index 3 outside [0, n_experts=3)"),
    (_bad(names=["a"]), "domain holds index 1 outside [0, len(names)=1)"),
    (_bad(domain=torch.zeros(12, dtype=torch.long)), "fewer than 2 domains present: ['a']"),
    (_bad(sequence=torch.zeros(12, dtype=torch.long)), "sequence 0 mixes domains"),
    (_bad(sequence=torch.arange(12) // 2 * 2), "both even ids (fit) and odd ids"),
    (_bad(hidden=torch.zeros(12, 3, 4)), "hidden has shape (12, 3, 4) but experts has [N, L] = (12, 2)"),
    (lambda: re_.assignment_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 3]), 2, 2),
     "no tokens of even-numbered sequences"),
    (lambda: re_.purity(torch.tensor([0, 1]), torch.tensor([0]), 2, 2), "top1 has 2 tokens but domain has 1"),
    (lambda: re_.agreement(torch.zeros(2, 1, 2), torch.zeros(2, 1, 3)), "a and b differ in shape"),
    (lambda: re_.kmeans_assign(torch.zeros(3, 2), 4), "1 <= k <= N; got k=4, N=3"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        call()
    assert "\n" not in str(info.value)
