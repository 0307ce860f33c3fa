"""A model too large for its memory budget: accelerate offloads some layers (and the unembedding) to disk, and
capture, attribution at every level, blocking and head inhibition give the numbers of the in-memory model."""
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from moescope import arch, metrics, models, offload
from moescope.attribution import attribute, coordination
from moescope.capture import capture
from moescope.interventions import block_experts, inhibit_heads, zero_experts
from moescope.vocab import word_tokenizer

PROMPTS = ["the capital of canada is", "people in france speak", "a rose is", "the capital of japan is"]
OBJECTS = ["ottawa", "french", "red", "tokyo"]


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same saved Qwen2-MoE (shared expert with gate), loaded in memory and under a memory cap."""
    folder = tmp_path_factory.mktemp("model")
    tok = word_tokenizer(PROMPTS + OBJECTS)
    model = tiny_model("qwen2_moe", vocab=len(tok), layers=4, hidden=32, expert_width=16, shared_width=24)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    in_memory = models.load_model(str(folder))
    layer = _bytes(model.model.layers[0])
    budget = _bytes(model.model.embed_tokens) + int(2.5 * layer)  # accelerate keeps one layer's size in reserve
    offloaded = models.load_model(str(folder), device_map="auto", max_memory={"cpu": budget},
                                  offload_folder=tmp_path_factory.mktemp("offload"))
    return in_memory, offloaded


def test_the_memory_cap_offloads_some_layers_to_disk(pair):
    _, off = pair
    placement = off.model.hf_device_map
    assert "disk" in placement.values() and "cpu" in placement.values()
    assert offload.is_offloaded(off.model)
    disk_layers = [p for p in arch.layers(off.model) if placement.get(f"model.layers.{p.index}") == "disk"]
    assert disk_layers and all(p.experts.down_proj.device.type == "meta" for p in disk_layers)
    with offload.materialized(disk_layers[0].experts):
        assert disk_layers[0].experts.down_proj.device.type == "cpu"
    assert disk_layers[0].experts.down_proj.device.type == "meta"  # back on meta after the block
    assert off.device == torch.device("cpu")


def test_capture_is_identical(pair):
    mem, off = pair
    ids = mem.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    a, b = (capture(lm.model, ids["input_ids"], ids["attention_mask"]) for lm in (mem, off))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    for ca, cb in zip(a.layers, b.layers):
        for name in ("resid_mid", "head_out", "expert_coef", "expert_out", "ffn_coef", "ffn_out", "ffn_gate"):
            torch.testing.assert_close(getattr(ca, name), getattr(cb, name), rtol=0, atol=0, msg=name)
    assert all(p.experts.down_proj.device.type in ("cpu", "meta") for p in arch.layers(off.model))


@pytest.mark.parametrize("kernel", ["plain", "fused"])
def test_attribution_is_identical(pair, kernel):
    mem, off = pair
    a, b = (attribute(lm.model, lm.tokenizer, PROMPTS, OBJECTS, progress=False, kernel=kernel) for lm in (mem, off))
    for name, table in a.tables().items():
        pd.testing.assert_frame_equal(table, b.tables()[name], check_exact=False, rtol=0, atol=1e-7, obj=name)
    assert len(a.neurons) > 0 and a.neurons.expert.eq(-1).any()  # shared-expert neurons included


def test_blocking_and_head_inhibition_are_identical(pair):
    mem, off = pair
    spec, heads = {1: [0, 3], 3: [2]}, {0: [1], 2: [0, 3]}
    results = []
    for lm in (mem, off):
        with block_experts(lm.model, spec):
            rerouted = metrics.score_prompts(lm.model, lm.tokenizer, PROMPTS, OBJECTS)
        with zero_experts(lm.model, spec):
            zeroed = metrics.score_prompts(lm.model, lm.tokenizer, PROMPTS, OBJECTS)
        with inhibit_heads(lm.model, heads):
            inhibited = metrics.score_prompts(lm.model, lm.tokenizer, PROMPTS, OBJECTS)
        results.append((rerouted, zeroed, inhibited))
    clean = metrics.score_prompts(mem.model, mem.tokenizer, PROMPTS, OBJECTS)
    for a, b in zip(*results):
        pd.testing.assert_frame_equal(a, b)
        assert not a.logprob.equals(clean.logprob)  # each intervention changed something


def test_offload_options_need_a_device_map(tmp_path):
    with pytest.raises(ValueError, match="need a device_map"):
        models.load_model("olmoe-like", max_memory={"cpu": "1GiB"})


def test_router_integrated_gradients_are_identical(pair):
    """Router IG reads router weights outside the forward: offloaded ones are brought in for the read."""
    mem, off = pair
    ids = mem.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    traces = [capture(lm.model, ids["input_ids"], ids["attention_mask"]) for lm in (mem, off)]
    layer = len(traces[0].layers) - 1
    expert = traces[0].layers[layer].topk_index[:, 0]
    a, b = (coordination.router_ig(lm.model, t, layer, expert, steps=4) for lm, t in zip((mem, off), traces))
    for name in ("ig", "f_x", "f_0"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
