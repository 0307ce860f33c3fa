"""Every attribution level against an independent slow reference (one vector at a time, float64)."""
import pytest
import torch

from conftest import tiny_model
from moescope import arch
from moescope.attribution import lpi as attribution
from moescope.attribution.lpi import attribute, shifted_logsumexp
from moescope.vocab import word_tokenizer

WORDS = "the capital of canada is ottawa japan tokyo people in france speak french a rose is red".split()
PROMPTS = ["the capital of canada is", "people in france speak", "a rose is"]
#: attribute() runs the prompts as one padded batch, the references one prompt at a time. Eager attention takes
#: its softmax in float32 even in a float64 model, so the two agree to ~1e-9, not to float64 precision.
BATCH_TOL = 1e-7
OBJECTS = ["ottawa", "french", "red"]


def reference_logprob(model, x, h_final, w):
    """log p(w | x) by the model's own final norm and lm_head, the norm's scale frozen to h_final's (float64);
    a LayerNorm centres and adds its bias, Granite divides the logits by logits_scaling."""
    norm = arch.final_norm(model)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    layer_norm = isinstance(norm, torch.nn.LayerNorm)
    bias = norm.bias.double() if layer_norm and norm.bias is not None else 0.0

    def inv_rms(v):
        v = v.double() - v.double().mean() if layer_norm else v.double()
        return 1.0 / torch.sqrt(v.pow(2).mean() + eps)

    frozen = (norm(x.double()) - bias) * (inv_rms(h_final) / inv_rms(x)) + bias
    logits = model.get_output_embeddings()(frozen) / getattr(model.config, "logits_scaling", 1.0)
    return torch.log_softmax(logits, -1)[w].item()


def reference_expert_output(parts, e, x, weight):
    """Expert e's output for x [H] by the experts module's own forward (weight 1; Llama 4 scales the input)."""
    experts = parts.experts
    if parts.expert_kind == "llama4":
        routed = torch.zeros(experts.gate_up_proj.shape[0], x.shape[-1], dtype=x.dtype)
        routed[e] = weight * x
        return experts(routed)[e]
    return experts(x[None], torch.tensor([[e]]), torch.ones(1, 1, dtype=x.dtype))[0]


@pytest.fixture
def setup(any_family):
    tok = word_tokenizer([" ".join(WORDS)])
    model = tiny_model(any_family, torch.float64, vocab=len(tok), hidden=32, expert_width=16, shared_width=24)
    attr = attribute(model, tok, PROMPTS, OBJECTS, dtype=torch.float64, progress=False)
    return model, tok, attr


def _trace(model, tok, i):
    from moescope.capture import capture
    ids = torch.tensor([tok(PROMPTS[i])["input_ids"]])
    return capture(model, ids)


def test_layer_and_head_gains_match_reference(setup):
    model, tok, attr = setup
    for i in range(len(PROMPTS)):
        tr = _trace(model, tok, i)
        w = int(attr.samples.target_token_id[i])
        lp = lambda x: reference_logprob(model, x[0], tr.resid_final[0], w)  # noqa: E731
        for l, c in enumerate(tr.layers):
            row = attr.layers[(attr.layers.sample_id == i) & (attr.layers.layer == l)].iloc[0]
            assert row.attn_gain == pytest.approx(lp(c.resid_pre + c.attn_out) - lp(c.resid_pre), abs=1e-5)
            assert row.ffn_gain == pytest.approx(lp(c.resid_mid + c.mlp_out) - lp(c.resid_mid), abs=1e-5)
            heads = attr.heads[(attr.heads.sample_id == i) & (attr.heads.layer == l)].sort_values("head")
            ref = [lp(c.resid_pre + c.head_out[:, h]) - lp(c.resid_pre) for h in range(c.head_out.shape[1])]
            assert heads.gain.tolist() == pytest.approx(ref, abs=1e-5)


def _units(model, parts, c):
    """(expert id, routing weight, factor on its output, its output by the module, its coefficients, W_down [H,I],
    output bias) of every unit of one layer at the first position; independent of the kit's capture maths except
    for the coefficients, which are checked to rebuild the module's output."""
    m = getattr(model.config, "residual_multiplier", 1.0)
    x, units = c.mlp_in[0], []
    if c.topk_index is not None:
        for j, (e, g) in enumerate(zip(c.topk_index[0].tolist(), c.topk_weight[0].tolist())):
            out = reference_expert_output(parts, e, x, g)
            routed = getattr(parts.mlp, "routed_scaling_factor", 1.0)  # Laguna scales the experts' sum
            factor = m * routed * (1.0 if parts.expert_kind == "llama4" else g)
            bias = parts.experts.down_proj_bias[e] if hasattr(parts.experts, "down_proj_bias") else 0.0
            units.append((e, g, factor, out, c.expert_coef[0, j], arch.expert_down(parts, e), bias))
    if c.ffn_out is not None:
        gate = float(torch.sigmoid(parts.ffn_gate(x)).detach()) if parts.ffn_gate is not None else 1.0
        down = arch.ffn_down(parts)
        units.append((-1, m * gate, m * gate, parts.ffn(x), c.ffn_coef[0], down.weight, 0.0))
    return units


def test_expert_and_neuron_scores_match_reference(setup):
    model, tok, attr = setup
    parts = arch.layers(model)
    for i in range(len(PROMPTS)):
        tr = _trace(model, tok, i)
        w = int(attr.samples.target_token_id[i])
        lp = lambda x: reference_logprob(model, x, tr.resid_final[0], w)  # noqa: E731
        for l, c in enumerate(tr.layers):
            u = c.resid_mid[0]
            for e, g, factor, out, coef, w_down, bias in _units(model, parts[l], c):
                erow = attr.experts[(attr.experts.sample_id == i) & (attr.experts.layer == l) & (attr.experts.expert == e)]
                assert erow.gate.item() == pytest.approx(g)
                assert erow.gain.item() == pytest.approx(lp(u + factor * out) - lp(u), abs=1e-5)
                nrows = attr.neurons[(attr.neurons.sample_id == i) & (attr.neurons.layer == l) & (attr.neurons.expert == e)]
                nrows = nrows.sort_values("neuron")
                for k in range(0, coef.shape[0], 5):
                    ref = lp(u + factor * coef[k] * w_down[:, k]) - lp(u)
                    assert nrows.score.iloc[k] == pytest.approx(ref, abs=1e-5)
                assert nrows.coef.tolist() == pytest.approx(coef.tolist(), rel=0, abs=BATCH_TOL)
                # the neurons' contributions (plus the expert's output bias, gpt-oss) rebuild the module's output
                torch.testing.assert_close(w_down @ coef + bias, out, rtol=0, atol=1e-12)


def test_sample_table_agrees_with_model(setup):
    model, tok, attr = setup
    for i in range(len(PROMPTS)):
        ids = torch.tensor([tok(PROMPTS[i])["input_ids"]])
        logits = model(ids).logits[0, -1]
        w = int(attr.samples.target_token_id[i])
        assert attr.samples.logprob[i] == pytest.approx(torch.log_softmax(logits, -1)[w].item(), rel=0, abs=BATCH_TOL)
        assert attr.samples["rank"][i] == int((logits > logits[w]).sum()) + 1
        assert attr.samples.target[i] == OBJECTS[i]


def test_top1_target_is_the_prediction(any_family):
    tok = word_tokenizer([" ".join(WORDS)])
    model = tiny_model(any_family, vocab=len(tok))
    attr = attribute(model, tok, PROMPTS, target="top1", neurons=False, progress=False)
    assert (attr.samples["rank"] == 1).all()


def test_online_logsumexp_equals_direct():
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(3, 50, generator=g, dtype=torch.float64), -1)
    a, proj = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(50, 7, generator=g, dtype=torch.float64)
    direct = torch.logsumexp(lp[:, :, None] + a[:, None, :] * proj[None], dim=1)
    torch.testing.assert_close(shifted_logsumexp(lp, a, proj, chunk=8), direct)


def test_overflow_is_detected_not_returned():
    lp = torch.log_softmax(torch.zeros(1, 4), -1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        attribution.neuron_scores(lp, torch.tensor([0]), torch.tensor([[1e30]]), torch.ones(4, 1) * 1e30)


def test_bad_target_and_missing_objects():
    tok = word_tokenizer([" ".join(WORDS)])
    model = tiny_model("olmoe", vocab=len(tok))
    with pytest.raises(ValueError, match="target must be"):
        attribute(model, tok, PROMPTS, OBJECTS, target="best")
    with pytest.raises(ValueError, match="needs the objects"):
        attribute(model, tok, PROMPTS)


def _float64_lse(lp, a, proj_t):
    return torch.logsumexp(lp.double()[:, None, :] + a.double()[:, :, None] * proj_t.double()[None], dim=-1)


@pytest.mark.parametrize("proj_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_logsumexp_is_exact_at_vocabulary_size(proj_dtype):
    """OLMoE's vocabulary (50304), a bf16 or fp32 projection, one row pushed past the fused kernel's reach."""
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(3 * torch.randn(3, 50304, generator=g), -1)
    a, proj_t = 0.05 * torch.randn(3, 40, generator=g), torch.randn(40, 50304, generator=g).to(proj_dtype)
    a[2, 5] = 40.0  # |a P| > FUSED_MAX_REACH: row 2 goes the plain way
    # what both kernels approximate: lse(lp + aP) - lse(lp); float32 lp's own lse is 1 + ~3e-6, not exactly 0
    ref = _float64_lse(lp, a, proj_t) - torch.logsumexp(lp.double(), -1, keepdim=True)
    fused = attribution.fused_logsumexp(lp, a, proj_t)
    assert not attribution._fused_failure
    assert (fused[:2].double() - ref[:2]).abs().max() < 1e-6
    assert (fused[2].double() - ref[2]).abs().max() < 1e-5 * ref[2].abs().max()
    plain = shifted_logsumexp(lp, a, proj_t.T)
    assert (plain.double() - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max())


def test_neuron_scores_fused_and_plain_agree_and_blocks_do_not_matter(monkeypatch):
    tok = word_tokenizer([" ".join(WORDS)])
    model = tiny_model("qwen2_moe", vocab=len(tok), expert_width=16, shared_width=24)
    plain = attribute(model, tok, PROMPTS, OBJECTS, progress=False, kernel="plain").neurons
    monkeypatch.setattr(attribution, "PROJECTION_BLOCK", 5 * len(tok))  # 5 neurons per projection block
    fused = attribute(model, tok, PROMPTS, OBJECTS, progress=False, kernel="fused").neurons
    assert len(plain) == len(fused) > 0
    assert (plain.score - fused.score).abs().max() < 1e-6 and plain.coef.equals(fused.coef)


def test_a_failing_compiler_falls_back_to_the_plain_path(monkeypatch):
    def broken():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(attribution, "_compiled_increment", broken)
    monkeypatch.setattr(attribution, "_fused_failure", [])
    lp = torch.log_softmax(torch.randn(2, 30), -1)
    a, proj_t = torch.randn(2, 4) * 0.1, torch.randn(4, 30)
    with pytest.warns(UserWarning, match="no compiler"):
        out = attribution.fused_logsumexp(lp, a, proj_t)
    torch.testing.assert_close(out, shifted_logsumexp(lp, a, proj_t.T))
    with pytest.raises(ValueError, match="kernel must be"):
        attribution.neuron_scores(lp, torch.tensor([0, 1]), a, proj_t, kernel="triton")
