"""The attribution-method benchmark (attribution.methods): each method's maths against an independent reference on a
tiny float64 MoE, and the ranking and faithfulness statistics on hand-made cases."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from moescope import arch, interventions, metrics
from moescope.attribution import methods
from moescope.capture import capture
from moescope.hooks import hooked
from moescope.prompts import encode
from moescope.statistics import Estimate
from moescope.vocab import word_tokenizer
from test_lpi import OBJECTS, PROMPTS, WORDS


class LM:
    def __init__(self, model, tok):
        self.model, self.tokenizer, self.name = model, tok, "tiny"


@pytest.fixture(scope="module")
def setup():
    tok = word_tokenizer([" ".join(WORDS)])
    model = tiny_model("olmoe", torch.float64, vocab=len(tok), hidden=32, expert_width=16, layers=3, experts=8,
                       top_k=2)
    fr = pd.DataFrame({"relation": ["A", "B", "A"], "prompt": PROMPTS, "object": OBJECTS, "task": ["A", "B", "A"],
                       "family": "other"})
    lm = LM(model, tok)
    return lm, fr, encode(tok, PROMPTS, OBJECTS, 100)


def _lp(lm, enc, layer=None, delta=None):
    """sum_i log p(w_i) with ``delta`` [B, H] added to layer ``layer``'s MoE output at each last position (a hook
    written here, independent of the kit's)."""
    pos = enc.attention_mask.sum(1) - 1
    rows = torch.arange(len(pos))
    parts = arch.layers(lm.model)

    def hook(module, args, out):
        out = out.clone()
        out.view(*enc.input_ids.shape, -1)[rows, pos] += delta
        return out

    hooks = [] if layer is None else [(parts[layer].mlp, "forward", hook)]
    with torch.no_grad(), hooked(hooks):
        logits = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[rows, pos]
    return torch.log_softmax(logits, -1).gather(1, enc.target_ids[:, None]).squeeze(1)


def _reference_gradients(lm, enc):
    """d sum_i log p(w_i) / d (layer l's MoE output at each last position), through a full [B, S, H] leaf added to
    every position (a different hook and graph from the kit's)."""
    parts, leaves = arch.layers(lm.model), {}
    pos = enc.attention_mask.sum(1) - 1
    rows = torch.arange(len(pos))

    def hook(layer):
        def add(module, args, out):
            leaves[layer] = torch.zeros_like(out, requires_grad=True)
            return out + leaves[layer]
        return add

    with torch.enable_grad(), hooked((p.mlp, "forward", hook(p.index)) for p in parts):
        logits = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[rows, pos]
        torch.log_softmax(logits, -1).gather(1, enc.target_ids[:, None]).sum().backward()
    return {l: leaf.grad[rows, pos] for l, leaf in leaves.items()}


def test_gradient_times_activation_is_the_directional_derivative(setup):
    lm, fr, enc = setup
    tr = capture(lm.model, enc.input_ids, enc.attention_mask)
    sc = methods.scores(lm, fr, ["grad_x_act"])
    col = {p: c for c, p in enumerate(sc.pairs)}
    grads = _reference_gradients(lm, enc)
    for l, c in enumerate(tr.layers):
        o = (c.expert_scale.unsqueeze(-1) * c.expert_out).sum(1)
        # finite differences along the layer's whole output (the model's norms round in float32: a loose check)
        fd = (_lp(lm, enc, l, 1e-3 * o) - _lp(lm, enc, l, -1e-3 * o)) / 2e-3
        assert (grads[l] * o).sum(-1).tolist() == pytest.approx(fd.tolist(), rel=2e-2, abs=2e-3)
        for j in range(c.topk_index.shape[1]):
            v = c.expert_scale[:, j, None] * c.expert_out[:, j]
            got = [sc.per_prompt["grad_x_act"][i, col[(l, int(c.topk_index[i, j]))]] for i in range(len(fr))]
            assert got == pytest.approx((grads[l] * v).sum(-1).tolist(), rel=1e-5, abs=1e-9)


def test_integrated_gradients_are_complete(setup):
    """sum over a layer's selected experts of IG = f(o_l) - f(0) (routed experts only: olmoe has no shared one)."""
    lm, fr, enc = setup
    tr = capture(lm.model, enc.input_ids, enc.attention_mask)
    sc = methods.scores(lm, fr, ["integrated_gradients"], ig_steps=64)
    for l, c in enumerate(tr.layers):
        o = (c.expert_scale.unsqueeze(-1) * c.expert_out).sum(1)
        expected = _lp(lm, enc) - _lp(lm, enc, l, -o)
        got = sc.per_prompt["integrated_gradients"][:, [k for k, p in enumerate(sc.pairs) if p[0] == l]].sum(1)
        assert got == pytest.approx(expected.tolist(), abs=2e-3)


def test_total_effect_blocks_one_pair_at_the_last_position(setup):
    lm, fr, enc = setup
    tr = capture(lm.model, enc.input_ids, enc.attention_mask)
    sc = methods.scores(lm, fr, ["total_effect", "gate_frequency", "gate_x_norm"])
    te, freq = sc.per_prompt["total_effect"], sc.per_prompt["gate_frequency"]
    assert (freq.sum(1) == 3 * 2).all() and set(np.unique(freq)) <= {0.0, 1.0}
    for i in range(len(fr)):  # one prompt alone, blocked at its last token only (unpadded)
        one = encode(lm.tokenizer, [PROMPTS[i]], [OBJECTS[i]], 100)
        last = torch.zeros(one.input_ids.shape, dtype=torch.bool)
        last[0, -1] = True
        base = torch.log_softmax(metrics.last_token_logits(lm.model, one)[0], -1)[one.target_ids[0]]
        for c, (layer, e) in enumerate(sc.pairs):
            with interventions.block_experts(lm.model, {layer: [e]}, tokens=last.reshape(-1)):
                after = torch.log_softmax(metrics.last_token_logits(lm.model, one)[0], -1)[one.target_ids[0]]
            assert te[i, c] == pytest.approx(float(base - after), abs=1e-7)
    selected = te[freq == 1]
    assert np.abs(selected).mean() > 3 * np.abs(te[freq == 0]).mean()  # unselected pairs matter only by reweighting
    norms = sc.per_prompt["gate_x_norm"]
    layer0 = tr.layers[0]
    for i in range(len(fr)):
        for j, e in enumerate(layer0.topk_index[i].tolist()):
            ref = float((layer0.expert_scale[i, j] * layer0.expert_out[i, j]).norm())
            assert norms[i, sc.pairs.index((0, e))] == pytest.approx(ref)


def test_lpi_scores_are_the_attribution_gains_and_rankings_per_relation(setup):
    lm, fr, _ = setup
    sc = methods.scores(lm, fr, ["lpi", "lpi_local", "lpi_contrastive", "random"])
    assert set(sc.depth.lens) == {"final", "local", "contrastive"}
    assert not np.allclose(sc.per_prompt["lpi"], sc.per_prompt["lpi_local"])
    ranked = sc.ranking("lpi", "A")
    totals = sc.total("lpi", "A")
    assert totals[sc.pairs.index(ranked[0])] == totals.max() and len(ranked) == len(sc.pairs)
    assert all(layer > 0 for layer, _ in sc.ranking("lpi", "A", "without layer 0"))
    assert sorted(sc.total("random", "A")) == pytest.approx(np.arange(len(sc.pairs)) / len(sc.pairs))


def test_ranking_scores_on_a_hand_made_case():
    total = np.array([5.0, 4.0, 3.0, 3.0, 0.0, 0.0])
    planted = np.array([False, True, False, True, False, False])
    got = methods.ranking_scores(total, planted, reference=total)
    assert got["precision"] == 0.5  # top-2 = pairs 0, 1
    # pair 1 (4.0) beats 3 of 4 unplanted; pair 3 (3.0) beats 2, ties 1: (3 + 2.5) / 8
    assert got["auc"] == pytest.approx(5.5 / 8)
    assert got["best_rank"] == 2 and got["spearman_te"] == pytest.approx(1.0)
    assert np.isnan(methods.ranking_scores(total, np.zeros(6, bool))["precision"])


def test_faithfulness_curves_and_areas(setup):
    lm, fr, _ = setup
    sc = methods.scores(lm, fr, ["lpi", "random"])
    plant = {"A": {1: (2,)}}
    curves = methods.faithfulness(lm, sc, plant, ks=[1, 2], draws=3)
    base = curves[curves.k == 0]
    assert base.mrr.nunique() == 1 and (base["drop"] == 0).all()
    assert set(curves.method) == {"lpi", "random", "matched random"} and set(curves.scope) == set(methods.SCOPES)
    assert len(curves[(curves.method == "matched random") & (curves.k == 2)]) == 3 * 2
    area = methods.areas(curves)
    row = area[(area.method == "lpi") & (area.scope == "all layers")].iloc[0]
    c = curves[(curves.method == "lpi") & (curves.scope == "all layers") & (curves.k > 0)]
    assert row.faithfulness == pytest.approx(c["drop"].mean()) and row.excess == pytest.approx(
        row.faithfulness - row.random_area)
    ranks = methods.ranking_table(sc, plant)
    table = methods.method_table(ranks, area)
    floor = ranks[(ranks.method == "random") & (ranks.scope == "all layers")].iloc[0]
    assert floor.auc == pytest.approx(0.5, abs=0.1)
    assert floor.precision == pytest.approx(floor.chance_precision, abs=0.05)
    assert len(table) == 2 * 2 and table.faithfulness.notna().all()
    per_seed = methods.seed_estimates(sc, curves, plant, reps=50) | {
        "_pairs": {scope: len(sc.columns(scope)) for scope in methods.SCOPES}}
    est = per_seed[("A", "all layers", "lpi")]
    assert est["faithfulness"].value == pytest.approx(row.faithfulness)
    assert est["excess"].value == pytest.approx(row.excess)  # paired with the matched random area
    assert est["precision"].value == ranks[(ranks.method == "lpi") & (ranks.scope == "all layers")].precision.iloc[0]
    known = {"A": {"known": {"kit": Estimate(0.5, 0.4, 0.6)}, "confirmed": {"kit": Estimate(0.3, 0.2, 0.4)}}}
    rows = methods.claim_rows([per_seed], [known], plant)
    assert {r.split(" (")[0] for r in rows.claim} == {methods.CLAIMS[k].id for k in ("lpi", "lpi_without_layer0",
                                                                                      "lpi_faithful")}
    assert not any(v.startswith("not testable") for v in rows.verdict)
    # the ground-truth preconditions apply to every method check: an unconfirmed plant makes them not testable
    weak = {"A": {"known": {"kit": Estimate(0.5, 0.4, 0.6)}, "confirmed": {"kit": Estimate(0.02, -0.01, 0.05)}}}
    rows = methods.claim_rows([per_seed], [weak], plant)
    assert all(v.startswith("not testable: the plant's MRR drop above matched random blocking") for v in rows.verdict)
    # over seeds: the table's intervals resample seeds, then prompts; the random floor gets a t interval
    table = methods.interval_table([{k: v for k, v in per_seed.items() if k != "_pairs"}] * 3)
    lpi = table[(table.method == "lpi") & (table.scope == "all layers")].iloc[0]
    assert lpi.seeds == 3 and lpi.faithfulness == pytest.approx(row.faithfulness)
    assert lpi.faithfulness_low <= lpi.faithfulness <= lpi.faithfulness_high
    assert {f"{s}_low" for s in methods.TABLE_STATISTICS} <= set(table.columns)


def test_without_a_plant_every_check_is_not_testable():
    rows = methods.claim_rows([], [], {}, model="some/model")
    assert len(rows) == len(methods.CLAIMS) and set(rows.model) == {"some/model"}
    assert all(v.startswith("not testable: the model lacks a planted ground truth") for v in rows.verdict)
    with pytest.raises(ValueError, match="unknown methods"):
        methods.scores(None, pd.DataFrame(), ["shap"])
