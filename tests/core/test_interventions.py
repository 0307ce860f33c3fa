"""Interventions do what they name, are identities when empty, and never leak (also on exceptions)."""
import pytest
import torch

from conftest import random_batch, tiny_model
from moescope import arch, interventions as iv, routing
from moescope.capture import capture
from moescope.routing import RoutingEdit, RoutingEditError, decision, route


def logits_of(model):
    ids, mask = random_batch()
    return model(input_ids=ids, attention_mask=mask).logits


def selected(model):
    ids, mask = random_batch()
    return [c.topk_index for c in capture(model, ids, mask).layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_route_without_edit_equals_router(moe_family, dtype):
    model = tiny_model(moe_family, dtype)
    x = torch.randn(50, model.config.hidden_size, dtype=dtype)
    for p in arch.layers(model):
        logits, weights, index = decision(p.router, p.router(x, *p.router_extra))
        w, i = route(p.router, logits, RoutingEdit(), *p.router_extra)
        assert torch.equal(i, index)
        assert torch.equal(w.to(weights.dtype), weights)  # as routing_hook hands them on


def test_blocking_nothing_is_the_identity(moe_family):
    model = tiny_model(moe_family)
    base = logits_of(model)
    with iv.block_experts(model, {p.index: [] for p in arch.layers(model)}):
        assert torch.equal(logits_of(model), base)
    with iv.zero_experts(model, {0: []}):
        assert torch.equal(logits_of(model), base)


def test_blocked_expert_is_never_selected_and_the_slot_is_refilled(moe_family):
    model = tiny_model(moe_family)
    blocked = selected(model)[0][0].tolist()  # the experts the first sequence's last token uses
    k = arch.top_k(model)
    with iv.block_experts(model, {0: blocked}):
        after = selected(model)
    assert not torch.isin(after[0], torch.tensor(blocked)).any()
    assert after[0].shape[1] == k and (after[0].sort(1).values.diff(dim=1) > 0).all()


def fixed_top_k(model) -> bool:
    """PhiMoE's sparsemixer always picks 2 experts: forcing and top_k edits are refused up front."""
    return any(routing.family(p.router) in routing.FIXED_TOP_K for p in arch.layers(model) if p.is_moe)


def test_forced_experts_are_always_selected(moe_family):
    model = tiny_model(moe_family)
    if fixed_top_k(model):
        with pytest.raises(RoutingEditError, match="cannot force experts or change top_k"):
            iv.force_experts(model, {1: [5]}).__enter__()
        assert all(not m._forward_hooks for m in model.modules())
        return
    with iv.force_experts(model, {1: [5]}):
        assert (selected(model)[1] == 5).any(dim=1).all()


def test_set_top_k_changes_the_number_of_experts(moe_family):
    model = tiny_model(moe_family)
    if fixed_top_k(model):
        with pytest.raises(RoutingEditError, match="cannot force experts or change top_k"):
            iv.set_top_k(model, 1).__enter__()
        return
    with iv.set_top_k(model, 1):
        assert all(s.shape[1] == 1 for s in selected(model))


def test_zeroing_an_expert_equals_removing_its_term(moe_family):
    model = tiny_model(moe_family, torch.float64)
    ids, mask = random_batch()
    tr = capture(model, ids, mask)
    c = tr.layers[-1]
    e = int(c.topk_index[0, 0])
    with iv.zero_experts(model, {len(tr.layers) - 1: [e]}):
        tr2 = capture(model, ids, mask)
    keep = (c.topk_index != e).unsqueeze(-1)
    expected = (c.expert_scale.unsqueeze(-1) * c.expert_out * keep).sum(1)
    if c.ffn_out is not None:
        expected += c.ffn_gate.unsqueeze(-1) * c.ffn_out
    torch.testing.assert_close(tr2.layers[-1].mlp_out, expected, rtol=0, atol=1e-12)


def test_drop_routed_and_shared(moe_family):
    model = tiny_model(moe_family, torch.float64)
    ids, mask = random_batch()
    c = capture(model, ids, mask).layers[0]
    with iv.drop_routed_experts(model, [0]):
        routed_dropped = capture(model, ids, mask).layers[0].mlp_out
    if c.ffn_out is None:
        assert torch.equal(routed_dropped, torch.zeros_like(routed_dropped))
        with pytest.raises(arch.ArchitectureError, match="no shared expert"):
            with iv.drop_shared_expert(model):
                pass
        return
    torch.testing.assert_close(routed_dropped, c.ffn_gate.unsqueeze(-1) * c.ffn_out, rtol=0, atol=1e-12)
    with iv.drop_shared_expert(model, [0]):
        shared_dropped = capture(model, ids, mask).layers[0].mlp_out
    torch.testing.assert_close(shared_dropped, (c.expert_scale.unsqueeze(-1) * c.expert_out).sum(1), rtol=0, atol=1e-12)


def test_inhibited_head_contributes_nothing(any_family):
    model = tiny_model(any_family, torch.float64)
    ids, mask = random_batch()
    with iv.inhibit_heads(model, {0: [1, 2]}):
        tr = capture(model, ids, mask)
    assert torch.equal(tr.layers[0].head_out[:, [1, 2]], torch.zeros_like(tr.layers[0].head_out[:, [1, 2]]))
    assert tr.layers[0].head_out[:, 0].abs().sum() > 0


def _used(model) -> int:
    """An expert that layer 0 selects for the first sequence's last token (so blocking it changes the logits)."""
    return int(selected(model)[0][0, 0])


def _unused(model) -> int:
    return next(e for e in range(arch.num_experts(model)) if e not in selected(model)[0][0].tolist())


FORCE, TOP_K = (lambda m: iv.force_experts(m, {0: [_unused(m)]})), (lambda m: iv.set_top_k(m, 1))


@pytest.mark.parametrize("make", [
    lambda m: iv.block_experts(m, {0: [_used(m)]}),
    lambda m: iv.zero_experts(m, {0: [_used(m)]}),
    FORCE,
    TOP_K,
    lambda m: iv.drop_routed_experts(m),
    lambda m: iv.inhibit_heads(m, {0: [0]}),
])
def test_model_is_bit_identical_after_an_intervention_that_raised(moe_family, make):
    model = tiny_model(moe_family)
    if fixed_top_k(model) and make in (FORCE, TOP_K):  # refused up front, before any hook is installed
        with pytest.raises(RoutingEditError):
            make(model).__enter__()
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        return
    base = logits_of(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with make(model):
            assert not torch.equal(logits_of(model), base)
            raise RuntimeError("boom")
    assert torch.equal(logits_of(model), base)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_dense_model_is_rejected_by_moe_interventions():
    model = tiny_model("llama")
    with pytest.raises(arch.ArchitectureError, match="needs a Mixture-of-Experts model"):
        with iv.block_experts(model, {0: [0]}):
            pass


def test_per_token_expert_sets_equal_the_same_set_for_every_token(moe_family):
    """Each sequence of a batch blocks (or zeroes) its own experts in one pass: the logits of each sequence equal
    a pass over the batch with that sequence's set for every token (every router family)."""
    model = tiny_model(moe_family)
    ids, mask = random_batch()
    b, s = ids.shape
    layer = next(p for p in arch.layers(model) if p.is_moe)
    n_experts = layer.experts.gate_up_proj.shape[0]
    sets = [[0], [1, 2]] + [[]] * (b - 2)
    per_token = torch.zeros(b, n_experts, dtype=torch.bool)
    for row, experts in enumerate(sets):
        per_token[row, experts] = True
    per_token = per_token.repeat_interleave(s, dim=0)
    makes = [iv.block_experts, iv.zero_experts]
    if routing.family(layer.router) in routing.REWEIGHTED_FAMILIES:
        makes.append(iv.mask_experts)
    for make in makes:
        with make(model, {layer.index: per_token}):
            batched = model(input_ids=ids, attention_mask=mask).logits
        for row, experts in enumerate(sets[:3]):
            with make(model, {layer.index: experts}):
                alone = model(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(batched[row], alone[row], rtol=1e-5, atol=1e-5)
    with pytest.raises(RoutingEditError, match="build it for this batch"):
        with iv.block_experts(model, {layer.index: per_token[:-1]}):
            model(input_ids=ids, attention_mask=mask)
