"""LoRA on fused experts through PEFT: identity at initialisation, only adapters train, every part is reached."""
from __future__ import annotations

import pytest
import torch

from moescope import configs
from moescope.determinism import set_determinism
from moescope.finetuning import domains, evaluate
from moescope.finetuning.batches import encode
from moescope.finetuning.lora import add_adapters, adapter_targets
from moescope.finetuning.methods import LoRA
from moescope.finetuning.train import TrainConfig, train
from moescope.vocab import word_tokenizer


@pytest.fixture(scope="module")
def tok_and_examples():
    splits = domains.domain_splits(("math", "law"), n_train=32, n_val=4, n_test=8)
    examples = [e for s in splits.values() for e in s.train]
    return word_tokenizer([t for e in examples for t in (e.prompt, e.answer)]), examples


def deepseek(vocab: int):
    """DeepSeek-V2 layout as in the base organism: layer 0 dense, then shared + routed experts."""
    set_determinism(0)
    cfg = configs.tiny_config("deepseek_v2", configs.Shape(vocab=vocab, hidden=32, layers=3, experts=8,
                                                           expert_width=16))
    cfg.first_k_dense_replace, cfg.n_shared_experts, cfg.intermediate_size = 1, 2, 64
    return configs.build(cfg)


@pytest.mark.parametrize("family", ["deepseek_v2", "qwen2_moe", "olmoe"])
def test_adapters_start_as_identity_and_reach_every_linear_part(family, tok_and_examples):
    tok, examples = tok_and_examples
    model = deepseek(len(tok)) if family == "deepseek_v2" else configs.build(
        configs.tiny_config(family, configs.Shape(vocab=len(tok), hidden=32, experts=8)))
    data = encode(tok, examples[:8])
    with torch.no_grad():
        before = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    modules, params = adapter_targets(model)
    n = add_adapters(model)
    with torch.no_grad():
        after = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    assert torch.equal(before, after) and n > 0
    names = [k for k, _ in model.named_parameters() if "lora_A" in k]
    assert any(".mlp.experts." in k for k in names) and any(".mlp.gate." in k for k in names)
    assert any("self_attn" in k for k in names) and not any("lm_head" in k or "embed" in k for k in names)
    if family == "deepseek_v2":
        assert any("shared_experts.gate_proj" in k for k in names)  # a name PEFT would otherwise rewrite
        assert any("layers.0.mlp.down_proj" in k for k in names)  # the dense first layer
    assert all(p.requires_grad == ("lora_" in k) for k, p in model.named_parameters())
    assert len(params) >= 3 and modules


def test_lora_training_moves_only_the_adapters(tok_and_examples):
    tok, examples = tok_and_examples
    model = deepseek(len(tok))
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    method = LoRA()
    train(model, tok, examples, method, TrainConfig(steps=3, batch_size=16, lr=1e-2, weight_decay=0.1))
    now = dict(model.named_parameters())
    lora = {k: p for k, p in now.items() if "lora_" in k}
    assert any(not torch.equal(p, torch.zeros_like(p)) for k, p in lora.items() if "lora_B" in k)  # B moved off 0
    for key, old in base.items():  # PEFT keeps each base tensor (under base_layer); all bit-identical
        match = [p for k, p in now.items() if "lora_" not in k and k.replace(".base_layer", "") == key]
        assert len(match) == 1 and torch.equal(match[0], old), key
    assert method.summary()["adapter_params"] == sum(p.numel() for p in lora.values())


def test_routing_of_a_lora_model_is_recorded_through_the_adapters():
    """arch reads through PEFT's wrappers and routing through the parametrized router class: the recorded routing
    of a LoRA model follows its adapters (B set non-zero changes it) and is the routers' own (no hooks)."""
    splits = domains.domain_splits(("math", "law"), n_train=8, n_val=4, n_test=8)
    examples = [e for s in splits.values() for e in s.test]
    tok = word_tokenizer([t for e in examples for t in (e.prompt, e.answer)])
    model = configs.build(configs.tiny_config("qwen2_moe", configs.Shape(vocab=len(tok), hidden=16, experts=8,
                                                                          expert_width=8, shared_width=16)))
    data = encode(tok, examples)
    before = evaluate.record_routing(model, data, ["law", "math"])
    add_adapters(model)
    assert torch.equal(evaluate.record_routing(model, data, ["law", "math"]).experts, before.experts)  # B = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    after = evaluate.record_routing(model, data, ["law", "math"])
    assert not torch.equal(after.experts, before.experts) and torch.equal(after.experts, after.unhooked)
