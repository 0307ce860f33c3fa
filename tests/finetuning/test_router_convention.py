"""finetuning reads routers through the core's convention (routing.decision / probabilities / repack), so its
recorders and losses work on a router whose output is not (logits, weights, index): Llama 4's (scores, logits)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moescope import arch, configs, routing
from moescope.determinism import set_determinism
from moescope.finetuning import desmoe, domains, esft
from moescope.finetuning.base import BalancedPretraining
from moescope.finetuning.batches import encode
from moescope.finetuning.methods import ESFT, DESMoE
from moescope.finetuning.train import TrainConfig, train
from moescope.hooks import hooked
from moescope.vocab import word_tokenizer

#: a softmax router returning (logits, weights, index) and Llama 4's topk_sigmoid router returning (scores, logits)
FAMILIES = ("olmoe", "llama4_text")


@pytest.fixture(scope="module")
def tok_and_examples():
    splits = domains.domain_splits(("math", "law"), n_train=16, n_val=4, n_test=4)
    examples = [e for s in splits.values() for e in s.train]
    return word_tokenizer([t for e in examples for t in (e.prompt, e.answer)]), examples


def tiny(family: str, vocab: int):
    set_determinism(0)
    shape = configs.Shape(vocab=vocab, hidden=32, layers=2, heads=4, experts=8, top_k=2, expert_width=16)
    return configs.build(configs.tiny_config(family, shape))


def raw_outputs(model, batch):
    """The routers' own outputs of one forward (no finetuning hook installed)."""
    routers = [p.router for p in arch.layers(model) if p.is_moe]
    seen: list = [None] * len(routers)

    def keep(i):
        def hook(module, args, output):
            seen[i] = output
        return hook

    with hooked((r, "forward", keep(i)) for i, r in enumerate(routers)), torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return routers, seen, out


def test_llama4_router_output_is_not_the_triple(tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny("llama4_text", len(tok))
    routers, seen, _ = raw_outputs(model, encode(tok, examples[:4]))
    assert routing.family(routers[0]) == "topk_sigmoid" and len(seen[0]) == 2  # output[2] would raise


@pytest.mark.parametrize("family", FAMILIES)
def test_esft_log_and_desmoe_recorder_read_the_decision(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    data = encode(tok, examples[:4])
    routers, seen, _ = raw_outputs(model, data)
    with esft.routing_log(model) as log, torch.no_grad():
        model(input_ids=data.input_ids, attention_mask=data.attention_mask)
    method = DESMoE(alr=False)
    method.prepare(model, encode(tok, examples), 4)
    with hooked(method.hooks()), torch.no_grad():
        model(input_ids=data.input_ids, attention_mask=data.attention_mask)
    for row, (router, output) in enumerate(zip(routers, seen)):
        _, weights, index = routing.decision(router, output)
        assert index.shape[-1] == router.top_k
        assert torch.equal(log[row][0][0], weights) and torch.equal(log[row][0][1], index)
        assert torch.equal(method._index[row], index)


@pytest.mark.parametrize("family", FAMILIES)
def test_alr_at_initialisation_returns_the_routers_own_output(family, tok_and_examples):
    """W2 = 0: the ALR hook hands back the router's own decision in the router's own convention (Llama 4: the
    same dense scores; its logits outside the selection -inf, as routing.repack writes an edited decision)."""
    tok, examples = tok_and_examples
    model = tiny(family, len(tok))
    data = encode(tok, examples[:4])
    routers, seen, before = raw_outputs(model, data)
    alr = desmoe.AdaptiveRouting(model)
    hooked_seen: list = [None] * len(routers)

    def keep(i):
        def hook(module, args, output):
            hooked_seen[i] = output
        return hook

    with hooked(alr.hooks() + [(r, "forward", keep(i)) for i, r in enumerate(routers)]), torch.no_grad():
        after = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    for router, a, b in zip(routers, seen, hooked_seen):
        assert len(a) == len(b) and torch.equal(a[0], b[0])
        assert all(torch.equal(x, y) for x, y in zip(routing.decision(router, a)[1:], routing.decision(router, b)[1:]))
    assert torch.equal(before, after)
    keep_all = data.attention_mask
    assert float(alr.kd_loss(keep_all)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_methods_train_on_the_family(family, tok_and_examples):
    tok, examples = tok_and_examples
    for method in (DESMoE(), ESFT("token", 0.2), BalancedPretraining()):
        model = tiny(family, len(tok))
        result = train(model, tok, examples, method, TrainConfig(steps=2, batch_size=8, lr=1e-2))
        assert all(torch.isfinite(torch.tensor(x)) for x in result.losses)


def test_balance_loss_uses_the_routers_scores(tok_and_examples):
    """Llama 4: P_e is the mean sigmoid score (routing.probabilities), not a softmax over experts."""
    tok, examples = tok_and_examples
    model = tiny("llama4_text", len(tok))
    data = encode(tok, examples[:4])
    method = BalancedPretraining()
    method.prepare(model, data, 4)
    with hooked(method.hooks()), torch.no_grad():
        model(input_ids=data.input_ids, attention_mask=data.attention_mask)
    keep = data.attention_mask.reshape(-1).bool()
    expected = []
    for logits, index in zip(method._logits, method._index):
        probs = logits[keep].float().sigmoid()
        share = torch.bincount(index[keep].reshape(-1), minlength=8).float() / index[keep].numel()
        expected.append(8 * (share * probs.mean(0)).sum())
    assert torch.equal(method.balance_loss(data.attention_mask), torch.stack(expected).mean())


def test_router_kl_per_family():
    gen = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    soft, sig = tiny("olmoe", 64), tiny("llama4_text", 64)
    r_soft = next(p.router for p in arch.layers(soft) if p.is_moe)
    r_sig = next(p.router for p in arch.layers(sig) if p.is_moe)
    expected_soft = F.kl_div(F.log_softmax(s / 0.7, -1), F.log_softmax(t / 0.7, -1), log_target=True,
                             reduction="batchmean")
    assert torch.equal(desmoe.router_kl(r_soft, t, s, 0.7), expected_soft)  # the shipped (softmax) loss, unchanged
    p, q = torch.sigmoid(t / 0.7), torch.sigmoid(s / 0.7)
    bern = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    assert torch.allclose(desmoe.router_kl(r_sig, t, s, 0.7), bern, atol=1e-6)
    assert float(desmoe.router_kl(r_sig, t, t, 0.7)) == pytest.approx(0.0, abs=1e-7)
