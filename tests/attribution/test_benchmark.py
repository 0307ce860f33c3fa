"""The benchmark's bookkeeping (what it counts as the floor), not its speed: speed is measured, never asserted."""
import pytest
import torch

from moescope import arch, configs
from moescope.attribution import benchmark, realshape
from moescope.determinism import set_determinism


@pytest.fixture(scope="module")
def olmoe():
    set_determinism(0)
    model = configs.build(configs.reduced_config("allenai/OLMoE-1B-7B-0924")).eval()
    tok = realshape.synthetic_tokenizer(model.config.vocab_size)
    return model, tok, realshape.random_prompts(6, 5, model.config.vocab_size)


def test_projection_columns_are_shared_within_a_batch(olmoe):
    model, tok, prompts = olmoe
    n = benchmark.neurons_per_prompt(model)
    width, k = arch.layers(model)[0].experts.down_proj.shape[-1], int(model.config.num_experts_per_tok)
    assert n == len(arch.layers(model)) * k * width
    alone = benchmark.projected_columns(model, tok, prompts, batch_size=1)
    together = benchmark.projected_columns(model, tok, prompts, batch_size=len(prompts))
    assert alone == len(prompts) * n  # one prompt per batch: nothing shared
    experts = arch.num_experts(model)
    assert n <= together <= len(arch.layers(model)) * experts * width < alone


def test_row_is_consistent_and_exact(olmoe):
    model, tok, prompts = olmoe
    row = benchmark.run(model, tok, prompts, batch_size=3, label="reduced olmoe")
    assert row["floor_ms_per_prompt"] == pytest.approx(row["floor_projection_ms"] + row["floor_exp_ms"])
    assert row["ratio_to_floor"] == pytest.approx(row["kit_ms_per_prompt"] / row["floor_ms_per_prompt"])
    assert row["single_prompt_floor_ms"] > row["floor_ms_per_prompt"]
    assert row["max_abs_err"] <= 1e-5 < row["max_abs_score"]
    assert row["numerics"] in ("pinned", "native") and row["prompts"] == 6 and row["layers"] == 2


def test_bf16_projection_is_exact_to_1e4():
    """The GPU setting (bf16 weights, bf16 vocabulary projection), checked on the CPU at reduced width."""
    set_determinism(0)
    model = configs.build(configs.reduced_config("Qwen/Qwen1.5-MoE-A2.7B"), dtype=torch.bfloat16).eval()
    tok = realshape.synthetic_tokenizer(model.config.vocab_size)
    row = realshape.check(model, tok, realshape.random_prompts(3, 6, model.config.vocab_size),
                          projection_dtype=torch.bfloat16, kernel="fused")
    assert row["tolerance"] == 1e-4 and row["max_abs_err"] <= 1e-4 < row["max_abs_score"]

