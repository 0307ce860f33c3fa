"""Gen-2 planting (redundant and late plants, gradient stops); the ground-truth study is tested in
tests/attribution/test_ground_truth.py."""
import torch

from moescope import arch
from moescope.hooks import hooked
from moescope.organisms import planted
from conftest import tiny_model

PLANT = {"A": {1: (2, 5)}, "C": {2: (7,)}}


def test_gen1_plant_table_is_unchanged():
    assert planted.planted_by_layer() == {0: [2, 6], 1: [5, 1]}
    assert planted.planted_by_layer(PLANT) == {1: [2, 5], 2: [7]}


def _grads(model, relations, loss_row):
    """Gradients of every layer's fused expert weights for a loss on one row, under the planting hooks."""
    ids = torch.randint(4, 128, (len(relations), 6), generator=torch.Generator().manual_seed(3))
    real = torch.ones_like(ids, dtype=torch.bool)
    model.zero_grad()
    gen = torch.Generator().manual_seed(0)
    with hooked(planted.gen2_hooks(model, PLANT, relations, real, gen)):
        out = model(input_ids=ids, output_router_logits=True)
    out.logits[loss_row].sum().backward()
    return {p.index: p.experts.gate_up_proj.grad.abs().sum(dim=(1, 2)) for p in arch.layers(model)}


def test_planted_rows_train_only_their_experts():
    model = tiny_model("olmoe", layers=3, experts=8, top_k=2).train()
    relations = ["A", "B", ""]
    g = _grads(model, relations, 0)  # a fact of planted relation A
    assert g[0].sum() == 0 and g[2].sum() == 0, "experts outside A's planted layer must not learn from A"
    learnt = set(torch.nonzero(g[1]).flatten().tolist())
    assert learnt and learnt <= {2, 5}, learnt
    g = _grads(model, relations, 1)  # an unplanted fact: never reaches planted experts
    assert g[1][[2, 5]].sum() == 0 and g[2][7] == 0 and g[0].sum() > 0


def test_redundant_subsets_cover_each_expert_alone():
    gen = torch.Generator().manual_seed(0)
    seen = {planted._random_subset((4, 9, 13), gen) for _ in range(200)}
    assert () not in seen and {(4,), (9,), (13,), (4, 9, 13)} <= seen
    assert planted._random_subset((6,), gen) == (6,)


def test_router_loss_matches_a_per_token_reference():
    torch.manual_seed(0)
    logits = tuple(torch.randn(2 * 3, 8) for _ in range(3))
    relations, real = ["A", "B"], torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    got = planted.gen2_router_loss(logits, PLANT, relations, real)
    per_layer = []
    for layer, experts in {1: [2, 5], 2: [7]}.items():
        p = logits[layer].softmax(-1).view(2, 3, 8)
        terms = []
        for b, r in enumerate(relations):
            for s in range(3):
                if not real[b, s]:
                    continue
                if layer in PLANT.get(r, {}):
                    terms.append(-torch.log(p[b, s, list(PLANT[r][layer])].sum() + 1e-9))
                else:
                    terms.append(-torch.log1p(-p[b, s, experts].sum()))
        per_layer.append(torch.stack(terms).mean())
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-6)
