"""Router maths in one place (moescope.routing.logits / probabilities / weights_at) and the interventions built on
them: mask-after-softmax blocking, and recorded / replayed routing for mediation."""
import pytest
import torch

from conftest import random_batch, tiny_model
from moescope import arch, interventions as iv, routing
from moescope.capture import capture


def test_logits_probabilities_and_weights_equal_the_router_module(moe_family):
    model = tiny_model(moe_family, torch.float64)
    x = torch.randn(40, model.config.hidden_size, dtype=torch.float64)
    for p in [p for p in arch.layers(model) if p.is_moe]:
        fam = routing.family(p.router)
        if fam not in routing.REWEIGHTED_FAMILIES:  # refused by name, never a wrong weight
            with pytest.raises(routing.RoutingEditError, match=f"{type(p.router).__name__} \\({fam} routing\\)"):
                routing.weights_at(p.router, torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.long))
            with pytest.raises(routing.RoutingEditError, match="mask-after-softmax is defined for"):
                with iv.mask_experts(model, {p.index: [0]}):
                    pass
            continue
        logits, weights, index = p.router(x)
        torch.testing.assert_close(routing.logits(p.router, x).to(logits.dtype), logits)
        probs = routing.probabilities(p.router, logits)
        expected = logits.float().sigmoid() if fam in routing.SIGMOID_FAMILIES else logits.float().softmax(-1)
        torch.testing.assert_close(probs, expected)
        torch.testing.assert_close(routing.weights_at(p.router, logits, index).to(weights.dtype), weights)


def test_weights_at_other_experts_follow_the_router_rule():
    model = tiny_model("olmoe", torch.float64)  # norm_topk_prob False: raw softmax probabilities
    router = arch.layers(model)[0].router
    logits = torch.randn(5, model.config.num_experts, dtype=torch.float64)
    index = torch.tensor([[0, 3]] * 5)
    torch.testing.assert_close(routing.weights_at(router, logits, index), logits.float().softmax(-1)[:, [0, 3]])
    mixtral = arch.layers(tiny_model("mixtral", torch.float64))[0].router  # always renormalised over the top-k
    w = routing.weights_at(mixtral, logits[:, :8], index)
    torch.testing.assert_close(w.sum(-1), torch.ones(5))


def _mask_case(family):
    model = tiny_model(family, torch.float64)
    ids, mask = random_batch()
    clean = capture(model, ids, mask)
    layer = len(clean.layers) - 1
    blocked = [int(clean.layers[layer].topk_index[0, 0])]
    return model, ids, mask, layer, blocked


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "mixtral"])
def test_mask_after_softmax_selects_like_reroute_with_the_clean_probabilities(family):
    model, ids, mask, layer, blocked = _mask_case(family)
    with iv.block_experts(model, {layer: blocked}):
        rerouted = capture(model, ids, mask).layers[layer]
    with iv.mask_experts(model, {layer: blocked}):
        masked = capture(model, ids, mask).layers[layer]
    assert torch.equal(masked.topk_index, rerouted.topk_index)
    assert not torch.isin(masked.topk_index, torch.tensor(blocked)).any()
    p = masked.router_probs  # the clean softmax (the mask does not change the logits)
    if getattr(arch.layers(model)[layer].router, "norm_topk_prob", True):
        torch.testing.assert_close(masked.topk_weight, rerouted.topk_weight)  # renormalising routers: identical
    else:
        # re-routing renormalises over the unblocked experts: w_reroute = p / (1 - p_blocked); masking does not
        torch.testing.assert_close(masked.topk_weight, p.gather(1, masked.topk_index).to(masked.topk_weight.dtype))
        scale = 1 - p[:, blocked].sum(1, keepdim=True)
        torch.testing.assert_close(masked.topk_weight, rerouted.topk_weight * scale.to(masked.topk_weight.dtype))
    out = (masked.topk_weight.unsqueeze(-1) * masked.expert_out).sum(1)
    if masked.ffn_out is not None:
        out = out + masked.ffn_gate.unsqueeze(-1) * masked.ffn_out
    torch.testing.assert_close(masked.mlp_out, out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["olmoe", "mixtral"])
def test_mask_after_softmax_without_a_refill_is_zeroing_the_renormalised_weight(family):
    """Every expert selected (top-k = all): no expert can take the blocked slot, so masking after the softmax
    zeroes the blocked weight and renormalises the rest as the router does (OLMoE: not at all; Mixtral: to 1)."""
    model = tiny_model(family, torch.float64, experts=4, top_k=4)
    ids, mask = random_batch()
    clean = capture(model, ids, mask).layers[0]
    with iv.mask_experts(model, {0: [2]}):
        masked = capture(model, ids, mask).layers[0]
    assert torch.equal(masked.topk_index.sort(1).values, clean.topk_index.sort(1).values)
    w = clean.topk_weight.masked_fill(clean.topk_index == 2, 0.0)
    if family == "mixtral":
        w = w / w.sum(1, keepdim=True)
    order_m, order_c = masked.topk_index.argsort(1), clean.topk_index.argsort(1)
    torch.testing.assert_close(masked.topk_weight.gather(1, order_m), w.gather(1, order_c))
    if family == "olmoe":
        with iv.zero_experts(model, {0: [2]}):
            zeroed = model(input_ids=ids, attention_mask=mask).logits
        with iv.mask_experts(model, {0: [2]}):
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, zeroed, rtol=0, atol=1e-12)


def test_recorded_routing_replayed_is_the_identity(moe_family):
    model = tiny_model(moe_family, torch.float64)
    ids, mask = random_batch()
    with iv.recorded_routing(model) as clean:
        base = model(input_ids=ids, attention_mask=mask).logits
    assert set(clean) == {p.index for p in arch.layers(model) if p.is_moe}
    with iv.fixed_routing(model, clean):
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, base, rtol=0, atol=1e-12)


def test_mediation_uses_the_clean_routing_on_the_inhibited_hidden_states():
    """Heads inhibited, clean routing restored: every MoE layer's output is the clean experts with the clean
    weights applied to the *inhibited* input (plus its shared expert), not what the router would now pick."""
    model = tiny_model("qwen2_moe", torch.float64)
    ids, mask = random_batch()
    with iv.recorded_routing(model) as clean_routing:
        clean = capture(model, ids, mask)
    with iv.inhibit_heads(model, {0: [0, 1, 2]}), iv.fixed_routing(model, dict(clean_routing)):
        med = capture(model, ids, mask)
    with iv.inhibit_heads(model, {0: [0, 1, 2]}):
        free = capture(model, ids, mask)
    for l, (c, m) in enumerate(zip(clean.layers, med.layers)):
        assert torch.equal(m.topk_index, c.topk_index) and torch.equal(m.topk_weight, c.topk_weight)
        expected = (c.topk_weight.unsqueeze(-1) * m.expert_out).sum(1) + m.ffn_gate.unsqueeze(-1) * m.ffn_out
        torch.testing.assert_close(m.mlp_out, expected, rtol=0, atol=1e-12)
    assert not torch.equal(free.layers[1].topk_weight, clean.layers[1].topk_weight)  # inhibition moved the router


def test_fixed_routing_rejects_another_batch():
    model = tiny_model("olmoe")
    ids, mask = random_batch()
    with iv.recorded_routing(model) as clean:
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="same batch"):
        with iv.fixed_routing(model, dict(clean)):
            model(input_ids=ids[:2], attention_mask=mask[:2])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_mask_and_recording_leave_no_hook_behind_on_errors():
    model = tiny_model("olmoe")
    ids, mask = random_batch()
    base = model(input_ids=ids, attention_mask=mask).logits
    for make in (lambda m: iv.mask_experts(m, {0: [1]}), iv.recorded_routing):
        with pytest.raises(RuntimeError, match="boom"):
            with make(model):
                model(input_ids=ids, attention_mask=mask)
                raise RuntimeError("boom")
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
