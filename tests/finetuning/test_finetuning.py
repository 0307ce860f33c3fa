"""Tests of moescope.finetuning on tiny random MoE configs (OLMoE-like and DeepSeek-V2-like with a shared expert)."""
from __future__ import annotations

import pytest
import torch

from moescope import arch, configs, routing
from moescope.finetuning import domains
from moescope.determinism import set_determinism
from moescope.finetuning import desmoe, esft, masks
from moescope.finetuning.batches import Encoded, domain_batches, encode
from moescope.finetuning.evaluate import exact_match, forgetting_reduction, record_routing
from moescope.finetuning.benchmark import desmoe_step_benchmark
from moescope.finetuning.methods import ESFT, DESMoE, FrozenRouterFT, Method, StepPlan
from moescope.finetuning.train import TrainConfig, parameter_groups, train
from moescope.hooks import hooked
from moescope.vocab import word_tokenizer

FAMILIES = ("olmoe", "deepseek_v2")


@pytest.fixture(scope="module")
def tok_and_examples():
    splits = domains.domain_splits(("math", "law"), n_train=32, n_val=4, n_test=8)
    examples = [e for s in splits.values() for e in s.train]
    tok = word_tokenizer([t for e in examples for t in (e.prompt, e.answer)])
    return tok, examples


def tiny(family: str, vocab: int):
    set_determinism(0)
    shape = configs.Shape(vocab=vocab, hidden=32, layers=2, heads=4, experts=8, top_k=2, expert_width=16)
    return configs.build(configs.tiny_config(family, shape))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model, name_part):
    return [n for n, p in model.named_parameters() if name_part in n and not torch.equal(before[n], p)]


class LateMask(Method):
    """All experts train for two steps (building AdamW momentum), then only experts (0, 1) of each layer."""

    def plan(self, step, total, domain):
        if step < 2:
            return StepPlan(frozenset(masks.BASE_PARTS))
        mask = torch.zeros(2, 8, dtype=torch.bool)
        mask[:, :2] = True
        return StepPlan(frozenset({"experts"}), mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_experts_are_bit_identical_despite_momentum_and_weight_decay(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    cfg = TrainConfig(steps=2, batch_size=16, lr=1e-2, weight_decay=0.1)
    # reproduce the first two steps' effect, then check that the masked steps leave experts 2..7 untouched
    train(model, tok, examples, LateMask(), cfg)
    after_two = snapshot(model)
    model = tiny(family, len(tok))
    train(model, tok, examples, LateMask(), TrainConfig(steps=5, batch_size=16, lr=1e-2, weight_decay=0.1))
    for parts in arch.layers(model):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{parts.index}.mlp.experts.{name}"
            now = getattr(parts.experts, name).detach()
            assert torch.equal(now[2:], after_two[key][2:])  # frozen: bit-identical
            assert not torch.equal(now[:2], after_two[key][:2])  # trained: moved
    assert not changed(after_two, model, "embed_tokens")  # requires_grad=False parts skipped by AdamW


def test_expert_mask_shape_is_checked(tok_and_examples):
    model = tiny("olmoe", len(tok_and_examples[0]))
    with pytest.raises(ValueError, match="expert mask has shape"):
        masks.ExpertFreezer(model).hold(torch.ones(3, 8, dtype=torch.bool))


def test_parameter_parts_cover_the_model_once():
    model = tiny("deepseek_v2", 64)
    parts = masks.parameter_parts(model)
    assert sum(len(v) for v in parts.values()) == len(list(model.parameters()))
    assert parts["shared"] and parts["router"] and len(parts["experts"]) == 4


def test_select_top_p_includes_the_crossing_expert():
    scores = torch.tensor([[0.05, 0.5, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]])
    assert esft.select_top_p(scores, 0.6).tolist() == [[False, True, True, False], [True, True, True, False]]
    assert esft.experts_needed(scores, 0.1).tolist() == [1, 1]
    assert esft.jaccard(torch.tensor([1, 1, 0], dtype=torch.bool), torch.tensor([0, 1, 1], dtype=torch.bool)) == 1 / 3


@pytest.mark.parametrize("family", FAMILIES)
def test_relevance_scores_are_normalised_per_layer(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    data = encode(tok, examples)
    rel = esft.relevance(model, [(data.input_ids, data.attention_mask)])
    assert torch.allclose(rel.token.sum(1), torch.ones(2), atol=1e-5)
    assert rel.tokens == int(data.attention_mask.sum())
    assert (rel.gate > 0).any() and torch.all(rel.gate.sum(1) <= 1 + 1e-5)


def test_dense_models_are_rejected(tok_and_examples):
    tok, examples = tok_and_examples
    dense = tiny("llama", len(tok))
    for method in (ESFT("gate"), DESMoE(), FrozenRouterFT()):
        with pytest.raises(arch.ArchitectureError, match="Mixture-of-Experts"):
            train(dense, tok, examples, method, TrainConfig(steps=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_esft_trains_only_selected_routed_experts(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    before = snapshot(model)
    method = ESFT("token", 0.2)
    train(model, tok, examples, method, TrainConfig(steps=4, batch_size=16, lr=1e-2, weight_decay=0.1))
    mask = method.mask
    assert 0 < int(mask.sum()) < mask.numel()
    assert all("experts.gate_up_proj" in n or "experts.down_proj" in n for n in changed(before, model, ""))
    for row, parts in enumerate(p for p in arch.layers(model) if p.is_moe):
        w = parts.experts.gate_up_proj.detach()
        old = before[f"model.layers.{parts.index}.mlp.experts.gate_up_proj"]
        assert torch.equal(w[~mask[row]], old[~mask[row]])
        assert not torch.equal(w[mask[row]], old[mask[row]])


def test_frozen_router_keeps_routers(tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny("olmoe", len(tok))
    before = snapshot(model)
    train(model, tok, examples, FrozenRouterFT(), TrainConfig(steps=2, batch_size=16, lr=1e-2))
    assert not changed(before, model, "mlp.gate.")
    assert changed(before, model, "self_attn")


@pytest.mark.parametrize("family", FAMILIES)
def test_alr_starts_as_the_original_router_and_hooks_are_removed(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    data = encode(tok, examples[:8])
    with torch.no_grad():
        ref = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
        routing = desmoe.AdaptiveRouting(model)
        with hooked(routing.hooks()):
            same = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
            assert float(routing.kd_loss(data.attention_mask)) == pytest.approx(0.0, abs=1e-7)
            routing.heads[0].down.bias.add_(torch.arange(8.0))
            moved = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
            assert float(routing.kd_loss(data.attention_mask)) > 0.1
        after = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    assert torch.equal(ref, same) and not torch.equal(ref, moved) and torch.equal(ref, after)
    assert all(not p.router._forward_hooks for p in arch.layers(model) if p.is_moe)


def test_schedule_and_distillation_weight():
    assert [desmoe.phase(t, 10) for t in (0, 1, 2, 6, 7, 9)] == ["warmup"] * 2 + ["stabilize"] * 2 + ["consolidate"] * 2
    assert desmoe.distillation_weight(0.0) == 1.0 and desmoe.distillation_weight(0.75) == 0.25
    assert desmoe.distillation_weight(1.5) == 0.0


def test_affinity_masks_use_phi_and_ema():
    aff = desmoe.Affinity(["a", "b"], n_layers=1, n_experts=4, momentum=0.9, phi=0.6)
    assert aff.masks().all()
    aff.observe("a", [torch.tensor([[0, 1], [0, 2], [0, 1], [0, 3]])], torch.ones(4))
    first = aff.refresh()
    assert first[0, 0].tolist() == [1.0, 0.5, 0.25, 0.25] and first[1].sum() == 0
    assert aff.masks()[0, 0].tolist() == [True, False, False, False]
    aff.observe("a", [torch.tensor([[1, 2]] * 4)], torch.ones(4))
    second = aff.refresh()
    assert torch.allclose(second[0, 0], torch.tensor([0.1, 0.95, 0.925, 0.025]))


def train_probed(model, tok, examples, **options) -> tuple[DESMoE, list]:
    """DES-MoE (t_update=2, ``options``) for 10 steps; after each step (the model's parameters, the ALR heads')."""
    states = []

    class Probe(DESMoE):
        def after_step(self, step, total, domain, batch):
            super().after_step(step, total, domain, batch)
            states.append((snapshot(model), [p.detach().clone() for p in self.routing.heads.parameters()]))

    method = Probe(t_update=2, **options)
    train(model, tok, examples, method, TrainConfig(steps=10, batch_size=16, lr=1e-2))
    return method, states


@pytest.mark.parametrize("family", FAMILIES)
def test_desmoe_phases_freeze_what_the_paper_says(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    before = snapshot(model)
    method, states = train_probed(model, tok, examples)
    warm, _ = states[1]  # end of warm-up (steps 0-1)
    assert [n for n in changed(before, _as_module(model, warm), "experts.")] == []
    assert changed(before, _as_module(model, warm), "self_attn")
    consolidated_start, heads_start = states[6]
    final, heads_end = states[9]
    diff = [n for n in final if not torch.equal(final[n], consolidated_start[n])]
    assert diff and all("mlp.experts." in n for n in diff)  # phase III: only routed experts move
    assert all(torch.equal(a, b) for a, b in zip(heads_start, heads_end))  # ALR frozen in phase III
    assert not changed(before, model, "shared_experts")
    assert set(method.snapshots) == {"t1", "t2", "T"}


def _as_module(model, state):
    class View:
        def named_parameters(self):
            return state.items()
    return View()


def test_exact_match_equals_greedy_decoding(tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny("olmoe", len(tok)).eval()
    data = encode(tok, examples[:6])
    rows = []
    for i in range(6):
        prompt = data.input_ids[i][data.labels[i] == -100][: int(data.attention_mask[i].sum())]
        ids = prompt.clone()
        for _ in range(3):
            nxt = model(input_ids=ids[None]).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt[None]])
        rows.append((ids, len(prompt)))
    width = max(len(r[0]) for r in rows)
    ids = torch.zeros(6, width, dtype=torch.long)
    labels = torch.full((6, width), -100)
    mask = torch.zeros(6, width, dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(rows):
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
        labels[i, n_prompt: len(seq)] = seq[n_prompt:]
    greedy = Encoded(ids, mask, labels, ("x",) * 6)
    assert exact_match(model, greedy).all()
    labels[0, rows[0][1] + 1] = (labels[0, rows[0][1] + 1] + 1) % len(tok)
    assert exact_match(model, greedy).tolist() == [False] + [True] * 5


def test_batches_are_single_domain_and_balanced(tok_and_examples):
    tok, examples = tok_and_examples
    data = encode(tok, examples)
    stream = domain_batches(data, 8, seed=0)
    seen = [next(stream) for _ in range(8)]
    assert [d for d, _ in seen] == ["law", "math"] * 4
    assert all({data.domains[i] for i in rows.tolist()} == {d} for d, rows in seen)
    assert forgetting_reduction(0.1, 0.5) == pytest.approx(0.8)


def test_benchmark_runs_on_cpu():
    bench = desmoe_step_benchmark(configs.tiny_config("deepseek_v2"), device="cpu", dtype=torch.float32,
                                  batch_size=2, seq_len=16, repeats=2)
    assert bench["step_seconds"] > 0 and bench["params"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_warmup_trains_the_experts_and_router_with_the_backbone_frozen(family, tok_and_examples):
    """The Fig. 1 caption's reading of phase I: routed experts and the ALR move, attention and embeddings do not."""
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    before = snapshot(model)
    method, states = train_probed(model, tok, examples, warmup="experts")
    heads = [h.down.weight.detach() for h in method.routing.heads]
    warm = _as_module(model, states[1][0])  # end of warm-up (steps 0-1)
    assert changed(before, warm, "experts.") and not changed(before, warm, "shared_experts")
    assert not changed(before, warm, "self_attn") and not changed(before, warm, "embed_tokens")
    assert any(h.abs().sum() > 0 for h in heads)  # the ALR's zero-initialised output layer has moved
    assert desmoe.phase(0, 10, t1=0.0) == desmoe.STABILIZE  # t1 = 0: no phase I at all
    with pytest.raises(ValueError, match="warmup must be one of backbone, experts"):
        DESMoE(warmup="router")
    with pytest.raises(ValueError, match="0 <= t1 <= t2 <= 1"):
        DESMoE(t1=0.8)


def test_backbone_rate_applies_to_the_backbone_only(tok_and_examples):
    """backbone_lr = 0 leaves embeddings and attention exactly as they were while the rest trains at lr; unset, one
    group at lr (the same update as before the option existed)."""
    tok, examples = tok_and_examples
    model = tiny("deepseek_v2", len(tok))
    before = snapshot(model)
    train(model, tok, examples, Method(), TrainConfig(steps=2, batch_size=16, lr=1e-2, backbone_lr=0.0))
    assert not changed(before, model, "self_attn") and not changed(before, model, "embed_tokens")
    assert changed(before, model, "experts.") and changed(before, model, "mlp.gate")
    part_map = masks.PartMap(model)
    groups = parameter_groups(part_map, [], TrainConfig(lr=1e-3, backbone_lr=2e-4))
    backbone = {id(p) for name in masks.BACKBONE for p in part_map.parts()[name]}
    assert groups[0]["lr"] == 2e-4 and {id(p) for p in groups[0]["params"]} == backbone
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert parameter_groups(part_map, [], TrainConfig(lr=1e-3)) == list(model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_routing_is_the_routing_the_model_uses(family, tok_and_examples):
    """record_routing: one row per real token, the domain and sequence of its row; ``experts`` equal the router's
    own top-K (ordered by weight) without hooks, and under an ALR hook ``unhooked`` still equals them while
    ``experts`` follow the adapted logits."""
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    data = encode(tok, examples[:12] + examples[-12:])
    names = sorted(set(data.domains))
    plain = record_routing(model, data, names)
    assert plain.experts.shape[0] == int(data.attention_mask.sum()) == len(plain.domain)
    assert torch.equal(plain.experts, plain.unhooked)
    first = [i for i, d in enumerate(data.domains) if d == names[1]][0]
    assert bool((plain.domain[plain.sequence == first] == 1).all())
    router = [p.router for p in arch.layers(model) if p.is_moe][0]
    hidden = plain.hidden[:, 0].to(router.weight.dtype)
    _, weights, index = routing.decision(router, router(hidden))
    reference = index.gather(1, weights.argsort(dim=1, descending=True, stable=True))
    assert torch.equal(plain.experts[:, 0], reference)
    alr = desmoe.AdaptiveRouting(model)
    with torch.no_grad():
        for head in alr.heads:
            head.down.weight.normal_(0, 5.0)
    with hooked(alr.hooks()):
        adapted = record_routing(model, data, names)
    assert not torch.equal(adapted.experts, plain.experts)
    assert torch.equal(adapted.unhooked[:, 0], plain.unhooked[:, 0])  # layer 0's input is unchanged by the ALR
