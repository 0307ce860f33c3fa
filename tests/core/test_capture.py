"""Captured quantities reproduce the model's own computation exactly (float64) for every class."""
import pytest
import torch

from conftest import random_batch, tiny_model
from moescope import arch
from moescope.capture import capture
from moescope.routing import decision


@pytest.fixture
def traced(any_family):
    model = tiny_model(any_family, torch.float64)
    ids, mask = random_batch()
    return model, capture(model, ids, mask)


def test_residual_stream_decomposes_into_embeddings_attention_and_mlp(traced):
    model, tr = traced
    total = tr.embed + sum(c.attn_out + c.mlp_out for c in tr.layers)
    torch.testing.assert_close(total, tr.resid_final, rtol=0, atol=1e-12)
    for c in tr.layers:
        torch.testing.assert_close(c.resid_mid + c.mlp_out, c.resid_post, rtol=0, atol=1e-12)


def test_heads_sum_to_attention_output(traced):
    _, tr = traced
    for c in tr.layers:
        bias = c.attn_bias if c.attn_bias is not None else 0.0
        torch.testing.assert_close(c.head_out.sum(dim=1) + bias, c.attn_out, rtol=0, atol=1e-12)


def test_mlp_output_is_reconstructed_from_experts_and_shared_expert(traced):
    _, tr = traced
    for c in tr.layers:
        recon = torch.zeros_like(c.mlp_out)
        if c.topk_index is not None:
            recon += (c.expert_scale.unsqueeze(-1) * c.expert_out).sum(dim=1)
        if c.ffn_out is not None:
            recon += c.ffn_gate.unsqueeze(-1) * c.ffn_out
        torch.testing.assert_close(recon, c.mlp_out, rtol=0, atol=1e-12)


def test_logits_match_the_model_at_each_last_real_token(traced):
    model, tr = traced
    ids, mask = random_batch()
    full = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(tr.logits, full[torch.arange(3), mask.sum(1) - 1])
    assert tr.positions.tolist() == [6, 4, 6]


def test_attention_patterns_are_probability_rows(any_family):
    model = tiny_model(any_family, torch.float64)
    ids, mask = random_batch()
    if not arch.has_attention_everywhere(arch.layers(model)):  # linear-attention or Mamba layers
        with pytest.raises(arch.ArchitectureError, match="linear-attention or Mamba layers"):
            capture(model, ids, mask, attentions=True)
        return
    tr = capture(model, ids, mask, attentions=True)
    parts = arch.layers(model)
    # the head count the kit splits o_proj's input by is the attention's own (per layer for Laguna)
    assert [a.shape for a in tr.attentions] == [(3, p.n_heads, 7) for p in parts]
    heads = parts[0].n_heads
    rows = tr.attentions[0].sum(-1)
    if getattr(arch.layers(model)[0].attn, "sinks", None) is not None:  # a sink may take part of each row's mass
        assert ((rows > 0) & (rows <= 1 + 1e-6)).all()
    else:
        torch.testing.assert_close(rows, torch.ones(3, heads, dtype=torch.float32))


def test_router_capture_matches_router_module(moe_family):
    model = tiny_model(moe_family, torch.float64)
    ids, mask = random_batch()
    tr = capture(model, ids, mask)
    for p, c in zip(arch.layers(model), tr.layers):
        x = c.mlp_in
        logits, weights, index = decision(p.router, p.router(x, *p.router_extra))
        torch.testing.assert_close(c.router_logits, logits.to(c.router_logits.dtype))
        assert torch.equal(c.topk_index, index)
        torch.testing.assert_close(c.topk_weight, weights)
