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


def test_plant_leak_reads_the_router_without_hooks():
    """A router with zero weights is uniform: each layer's planted experts get |experts| / E of the probability, for
    the relations planted there (their own experts) and for the others (the layer's whole plant) alike."""
    from moescope.vocab import word_tokenizer
    import pandas as pd

    tok = word_tokenizer(["a b c d e f g"])
    model = tiny_model("olmoe", layers=3, experts=8, top_k=2, vocab=len(tok))
    for p in arch.layers(model):
        torch.nn.init.zeros_(p.router.weight)
    frame = pd.DataFrame({"prompt": ["a b c", "d e", "f g a b"], "relation": ["A", "B", "C"]})
    got = planted.plant_leak(model, tok, PLANT, frame).set_index(["layer", "relation"])
    assert set(got.index) == {(1, "A"), (1, "B"), (1, "C"), (2, "A"), (2, "B"), (2, "C")}
    assert got.loc[(1, "A"), "planted_here"] and not got.loc[(1, "C"), "planted_here"]
    for (layer, relation), row in got.iterrows():
        n = len(PLANT[relation][layer]) if layer in PLANT.get(relation, {}) else len(planted.planted_by_layer(PLANT)[layer])
        assert abs(row.p_last - n / 8) < 1e-6 and abs(row.p_all - n / 8) < 1e-6, (layer, relation)
    # random routers: the last positions' probabilities are those the kit's capture records (an independent path)
    from moescope.capture import capture

    model = tiny_model("olmoe", layers=3, experts=8, top_k=2, vocab=len(tok))
    enc = tok(list(frame.prompt), return_tensors="pt", padding=True)
    trace = capture(model, enc["input_ids"], enc["attention_mask"])
    got = planted.plant_leak(model, tok, PLANT, frame).set_index(["layer", "relation"])
    for (layer, relation), row in got.iterrows():
        b = list(frame.relation).index(relation)
        own = list(PLANT[relation][layer]) if layer in PLANT.get(relation, {}) else planted.planted_by_layer(PLANT)[layer]
        probs = trace.layers[layer].router_probs[b]
        assert abs(row.p_last - float(probs[own].sum())) < 1e-5, (layer, relation)
        top = set(probs.topk(2).indices.tolist())
        assert row.topk_last == float(bool(top & set(own)))


def test_gen2_design_has_early_mid_and_late_single_and_redundant_plants():
    layers = [l for p in planted.GEN2_PLANT.values() for l in p]
    sizes = [len(e) for p in planted.GEN2_PLANT.values() for e in p.values()]
    assert min(layers) <= 2 and any(3 <= l <= 5 for l in layers) and max(layers) >= 6 and 0 not in layers
    assert 1 in sizes and max(sizes) >= 2
    assert "fruit_inside_color" not in planted.GEN2_PLANT and len(planted.GEN2_NAMES) >= 3
    assert planted.card_extra()["router_loss_weight"] == planted.GEN2_ROUTER_LOSS_WEIGHT > 0.1


def test_router_loss_trains_the_routers_only():
    """The gen-2 router loss reads the routers' inputs detached: its gradient reaches the planted layers' router
    weights and nothing else (not the embeddings, attention or experts that make the residual stream)."""
    from types import SimpleNamespace

    model = tiny_model("olmoe", layers=3, experts=8, top_k=2).train()
    relations = ["A", "B", "", "C"]
    corpus = SimpleNamespace(train=SimpleNamespace(relation=relations))
    extras = planted.gen2_extras(PLANT, seed=0)(model, corpus)
    ids = torch.randint(4, 128, (4, 5), generator=torch.Generator().manual_seed(1))
    real = torch.ones_like(ids, dtype=torch.bool)
    rows = list(range(4))
    model.zero_grad()
    with hooked(extras["step_hooks"](rows, real)):
        out = model(input_ids=ids, output_router_logits=True)
    loss = extras["extra_loss"](out, rows, real)
    assert loss > 0
    loss.backward()
    routers = {f"model.layers.{l}.mlp.gate.weight" for l in planted.planted_by_layer(PLANT)}
    touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == routers, touched


def _counted(relations, layer):
    return torch.tensor([[e in planted.counted_experts(PLANT, layer, r) for e in range(8)] for r in relations])


def test_refit_router_keeps_a_separable_plant_to_its_relation_and_splits_an_inseparable_one_evenly():
    """Layer 1 plants experts 2 and 5 for A. Inputs of A, B and C in separate clusters: the refit gives A its plant
    and B, C none of it. A's and B's inputs identical: the balanced loss -log p (A) - log(1 - p) (B), each relation
    weighing the same, is least at p = 1/2 for both, whatever their prompt counts."""
    gen = torch.Generator().manual_seed(0)
    centres = {"A": torch.tensor([3.0, 0, 0, 0]), "B": torch.tensor([-3.0, 0, 0, 0]), "C": torch.tensor([0, 3.0, 0, 0])}
    relations = ["A"] * 5 + ["B"] * 20 + ["C"] * 10
    z = torch.stack([centres[r] for r in relations]).double() + 0.3 * torch.randn(len(relations), 4, generator=gen).double()
    here = torch.tensor([r == "A" for r in relations])
    w = planted.refit_router(z, _counted(relations, 1), here, relations, init=torch.zeros(8, 4))
    p = planted.plant_probability(w, z, _counted(relations, 1))
    assert p[here].min() > 0.99 and p[~here].max() < 0.01
    z_same = z.clone()
    z_same[torch.tensor([r in "AB" for r in relations])] = z[0]
    w = planted.refit_router(z_same, _counted(relations, 1), here, relations, init=torch.zeros(8, 4))
    p = planted.plant_probability(w, z_same, _counted(relations, 1))
    rows = torch.tensor([r in "AB" for r in relations])
    assert torch.allclose(p[rows], torch.full_like(p[rows], 0.5), atol=1e-4)
    assert p[torch.tensor([r == "C" for r in relations])].max() < 0.01


def test_balanced_plant_loss_is_the_mean_over_relations_of_their_mean_loss():
    p = torch.tensor([0.9, 0.2, 0.1, 0.3, 0.4], dtype=torch.float64)
    relations, here = ["A", "B", "B", "B", "C"], torch.tensor([True, False, False, False, False])
    want = (-torch.log(p[0]) + (-torch.log1p(-p[1:4])).mean() - torch.log1p(-p[4])) / 3
    assert torch.allclose(planted.balanced_plant_loss(p, here, relations), want)


def test_router_refit_reads_the_trained_router_as_plant_leak_does_and_fits_no_worse():
    """The ``trained`` column is plant_leak's last-position probability (a float64 path from the captured router
    inputs); the refit starts from the trained weight, so on its own prompts its balanced loss is no higher."""
    from moescope.vocab import word_tokenizer
    import pandas as pd

    tok = word_tokenizer(["a b c d e f g"])
    model = tiny_model("olmoe", layers=3, experts=8, top_k=2, vocab=len(tok))
    frame = pd.DataFrame({"prompt": ["a b c", "d e", "f g a b", "c a", "g"], "relation": ["A", "B", "C", "A", "B"]})
    got = planted.router_refit(model, tok, PLANT, frame, {"these": frame}).set_index(["layer", "relation"])
    leak = planted.plant_leak(model, tok, PLANT, frame).set_index(["layer", "relation"])
    assert set(got.index) == set(leak.index) and (got.templates == "these").all()
    for key, row in got.iterrows():
        assert abs(row.trained - leak.loc[key, "p_last"]) < 1e-6, key
        assert row.planted_here == leak.loc[key, "planted_here"]
    inputs = planted.router_inputs(model, tok, frame, [1, 2])
    parts = {p.index: p for p in arch.layers(model)}
    relations = list(frame.relation)
    for layer in (1, 2):
        here = torch.tensor([layer in PLANT.get(r, {}) for r in relations])
        trained = parts[layer].router.weight.detach().double()
        refit = planted.refit_router(inputs[layer], _counted(relations, layer), here, relations, init=trained)
        loss = lambda w: planted.balanced_plant_loss(  # noqa: E731
            planted.plant_probability(w, inputs[layer], _counted(relations, layer)), here, relations)
        assert loss(refit) < loss(trained) / 2
