"""The lens as a named choice (lpi.LENSES): each variant against an independent float64 reference, one vector at a
time, and the exact identities that tie the variants together."""
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from moescope import arch
from moescope.attribution import summaries
from moescope.attribution.lpi import LENSES, attribute
from moescope.vocab import word_tokenizer
from test_lpi import OBJECTS, PROMPTS, WORDS, _trace, _units, reference_logprob

#: the objects each prompt's gold is read against under the contrastive lens (gold itself is added by the kit)
CANDIDATES = [["tokyo", "ottawa", "french"], ["french", "red"], ["ottawa", "tokyo", "red", "red"]]
FAMILIES = ["olmoe", "qwen2_moe"]  # a plain routed MoE and one with a gated shared expert


def _model(family):
    tok = word_tokenizer([" ".join(WORDS)])
    return tiny_model(family, torch.float64, vocab=len(tok), hidden=32, expert_width=16, shared_width=24), tok


def _attr(model, tok, **kw):
    return attribute(model, tok, PROMPTS, OBJECTS, dtype=torch.float64, progress=False, **kw)


def reference_contrastive(model, x, h_final, w, cands):
    """log p(w | x) - logsumexp_c log p(c | x) over the distinct candidate ids (w among them), frozen final scale."""
    ids = sorted({w, *cands})
    lps = torch.tensor([reference_logprob(model, x, h_final, c) for c in ids], dtype=torch.float64)
    return reference_logprob(model, x, h_final, w) - torch.logsumexp(lps, 0).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lens_is_the_paper_lens_bit_for_bit(family):
    model, tok = _model(family)
    default, final = _attr(model, tok), _attr(model, tok, lens="final")
    for name, table in default.tables().items():
        pd.testing.assert_frame_equal(table, final.tables()[name], check_exact=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_lens_matches_reference(family):
    """Each component read at the scale of the residual it writes into (float64, one vector at a time)."""
    model, tok = _model(family)
    attr, parts = _attr(model, tok, lens="local"), arch.layers(model)
    for i in range(len(PROMPTS)):
        tr, w = _trace(model, tok, i), int(attr.samples.target_token_id[i])
        for l, c in enumerate(tr.layers):
            at_mid = lambda x: reference_logprob(model, x, c.resid_mid[0], w)  # noqa: E731
            at_post = lambda x: reference_logprob(model, x, c.resid_post[0], w)  # noqa: E731
            row = attr.layers[(attr.layers.sample_id == i) & (attr.layers.layer == l)].iloc[0]
            pre, mid = c.resid_pre[0], c.resid_mid[0]
            assert row.attn_gain == pytest.approx(at_mid(pre + c.attn_out[0]) - at_mid(pre), abs=1e-6)
            assert row.ffn_gain == pytest.approx(at_post(mid + c.mlp_out[0]) - at_post(mid), abs=1e-6)
            heads = attr.heads[(attr.heads.sample_id == i) & (attr.heads.layer == l)].sort_values("head")
            ref = [at_mid(pre + c.head_out[0, h]) - at_mid(pre) for h in range(c.head_out.shape[1])]
            assert heads.gain.tolist() == pytest.approx(ref, abs=1e-6)
            u = c.resid_mid[0]
            for e, _, factor, out, coef, w_down, _ in _units(model, parts[l], c):
                sel = (attr.experts.sample_id == i) & (attr.experts.layer == l) & (attr.experts.expert == e)
                assert attr.experts[sel].gain.item() == pytest.approx(at_post(u + factor * out) - at_post(u), abs=1e-6)
                n = attr.neurons[(attr.neurons.sample_id == i) & (attr.neurons.layer == l) & (attr.neurons.expert == e)]
                n = n.sort_values("neuron")
                for k in range(0, coef.shape[0], 5):
                    ref = at_post(u + factor * coef[k] * w_down[:, k]) - at_post(u)
                    assert n.score.iloc[k] == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_lens_reads_the_plain_logit_lens_and_agrees_at_the_last_layer(family):
    """Under 'local', FFNGain_l's first term is log p(w | norm(h_l)) by the model's own final norm and head; the
    last layer writes into h_L itself, so its FFN, expert and neuron scores are the paper lens's."""
    model, tok = _model(family)
    local, final = _attr(model, tok, lens="local"), _attr(model, tok)
    head, norm = model.get_output_embeddings(), arch.final_norm(model)
    last = len(arch.layers(model)) - 1
    for i in range(len(PROMPTS)):
        tr, w = _trace(model, tok, i), int(local.samples.target_token_id[i])
        for l, c in enumerate(tr.layers):
            lens = torch.log_softmax(head(norm(c.resid_post[0])), -1)[w].item()
            lower = reference_logprob(model, c.resid_mid[0], c.resid_post[0], w)
            row = local.layers[(local.layers.sample_id == i) & (local.layers.layer == l)].iloc[0]
            assert row.ffn_gain + lower == pytest.approx(lens, abs=1e-6)
    for name in ("experts", "neurons"):
        a, b = (t[t.layer == last].reset_index(drop=True) for t in (getattr(local, name), getattr(final, name)))
        torch.testing.assert_close(torch.tensor(a.to_numpy(float)), torch.tensor(b.to_numpy(float)), rtol=0, atol=1e-12)
    la, fa = local.layers[local.layers.layer == last], final.layers[final.layers.layer == last]
    assert la.ffn_gain.to_numpy() == pytest.approx(fa.ffn_gain.to_numpy(), abs=1e-12)
    first = local.layers.layer == 0  # not vacuous: below the last layer the two lenses differ
    assert (local.layers[first].ffn_gain - final.layers[first].ffn_gain).abs().min() > 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_contrastive_lens_matches_reference(family):
    model, tok = _model(family)
    attr, parts = _attr(model, tok, lens="contrastive", candidates=CANDIDATES), arch.layers(model)
    for i in range(len(PROMPTS)):
        tr, w = _trace(model, tok, i), int(attr.samples.target_token_id[i])
        cands = [tok.convert_tokens_to_ids(o) for o in CANDIDATES[i]]
        lp = lambda x: reference_contrastive(model, x, tr.resid_final[0], w, cands)  # noqa: E731
        for l, c in enumerate(tr.layers):
            row = attr.layers[(attr.layers.sample_id == i) & (attr.layers.layer == l)].iloc[0]
            assert row.attn_gain == pytest.approx(lp(c.resid_pre[0] + c.attn_out[0]) - lp(c.resid_pre[0]), abs=1e-6)
            assert row.ffn_gain == pytest.approx(lp(c.resid_mid[0] + c.mlp_out[0]) - lp(c.resid_mid[0]), abs=1e-6)
            u = c.resid_mid[0]
            for e, _, factor, out, coef, w_down, _ in _units(model, parts[l], c):
                sel = (attr.experts.sample_id == i) & (attr.experts.layer == l) & (attr.experts.expert == e)
                assert attr.experts[sel].gain.item() == pytest.approx(lp(u + factor * out) - lp(u), abs=1e-6)
                n = attr.neurons[(attr.neurons.sample_id == i) & (attr.neurons.layer == l) & (attr.neurons.expert == e)]
                n = n.sort_values("neuron")
                for k in range(0, coef.shape[0], 3):
                    ref = lp(u + factor * coef[k] * w_down[:, k]) - lp(u)
                    assert n.score.iloc[k] == pytest.approx(ref, abs=1e-6)


def test_contrastive_against_the_gold_alone_is_zero_and_telescopes():
    """With no other candidate, log p_C(w) = 0 for every x: every score is exactly 0. With candidates, the
    contrastive layer gains (final scale) telescope to log p_C(w | h_L) - log p_C(w | embeddings)."""
    model, tok = _model("olmoe")
    alone = _attr(model, tok, lens="contrastive", candidates=[[o] for o in OBJECTS])
    for name in ("layers", "heads", "experts"):
        cols = [c for c in ("attn_gain", "ffn_gain", "gain") if c in getattr(alone, name)]
        assert (getattr(alone, name)[cols].to_numpy() == 0).all()
    assert (alone.neurons.score.abs() < 1e-12).all()
    attr = _attr(model, tok, lens="contrastive", candidates=CANDIDATES)
    for i in range(len(PROMPTS)):
        tr, w = _trace(model, tok, i), int(attr.samples.target_token_id[i])
        cands = [tok.convert_tokens_to_ids(o) for o in CANDIDATES[i]]
        lp = lambda x: reference_contrastive(model, x, tr.resid_final[0], w, cands)  # noqa: E731
        rows = attr.layers[attr.layers.sample_id == i]
        expected = lp(tr.resid_final[0]) - lp(tr.embed[0])
        assert (rows.attn_gain + rows.ffn_gain).sum() == pytest.approx(expected, abs=1e-6)


def test_bad_lens_and_missing_candidates():
    model, tok = _model("olmoe")
    with pytest.raises(ValueError, match="lens must be one of"):
        _attr(model, tok, lens="own")
    with pytest.raises(ValueError, match="needs the candidates"):
        _attr(model, tok, lens="contrastive")
    assert LENSES[0] == "final"


def test_layer_zero_apart_reports_both_readings():
    layers = pd.DataFrame({"sample_id": [0, 0, 0, 1, 1, 1], "layer": [0, 1, 2] * 2,
                           "attn_gain": [0.0] * 6, "ffn_gain": [3.0, 1.0, 0.0, 1.0, 0.0, 1.0]})
    got = summaries.layer_zero_apart(layers).set_index("reading")
    assert list(got.index) == ["all layers", "without layer 0"]
    assert got.loc["all layers", "ffn_gain"] == 3.0 and got.loc["without layer 0", "ffn_gain"] == 1.0
    assert got.loc["all layers", "per_layer_efficiency"] == 1.0
    assert got.loc["without layer 0", "per_layer_efficiency"] == 0.5
    assert got.loc["all layers", "layer0_share"] == pytest.approx(4 / 6)
    assert got.loc["all layers", "share_early"] == pytest.approx(4 / 6)
    # without layer 0, the stages keep the layers' place in the full depth: layer 1 is middle, layer 2 late
    assert got.loc["without layer 0", "share_early"] == 0.0
    assert got.loc["without layer 0", "share_middle"] == pytest.approx(0.5)
