"""Every attribution path on each real configuration: at reduced width with the real family settings (fast), and
at the real width, cut to its first layers, one process per model (``pytest -m realshape``, minutes and GBs each).
"""
import json
import subprocess
import sys

import pytest
import torch

from moescope import arch, configs
from moescope.attribution import realshape
from moescope.determinism import set_determinism

REAL = sorted(configs.REAL_CONFIGS)
DTYPES = [torch.float32, torch.bfloat16]
#: the MoE output and head-sum identities hold to rounding of the model's own precision
IDENTITY_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def reduced(model_id: str, dtype: torch.dtype):
    set_determinism(0)
    model = configs.build(configs.reduced_config(model_id), dtype=dtype).eval()
    return model, realshape.synthetic_tokenizer(model.config.vocab_size)


def assert_checked(row: dict, dtype: torch.dtype, moe: bool) -> None:
    assert row["neurons_checked"] == 48 and row["max_abs_score"] > 10 * row["tolerance"]
    assert row["max_abs_err"] <= row["tolerance"]
    assert row["layer_gain_max_abs_err"] <= 1e-5
    assert row["inhibited_max_abs_output"] == 0.0 and row["heads_sum_rel_err"] <= IDENTITY_TOL[dtype]
    if moe:
        assert row["blocked"] == 2 and row["blocked_reselected"] == 0
        assert row["zeroed_output_rel_err"] <= IDENTITY_TOL[dtype]


def test_reduced_configs_keep_the_family_settings():
    for model_id in REAL:
        real, small = configs.REAL_CONFIGS[model_id], configs.reduced_config(model_id).to_dict()
        for key in ("model_type", "norm_topk_prob", "routed_scaling_factor", "first_k_dense_replace", "topk_method",
                    "num_experts_per_tok", "n_shared_experts", "decoder_sparse_step"):
            if key in real:
                assert small[key] == real[key], (model_id, key)
        assert small["hidden_size"] == configs.REDUCED_SIZES["hidden_size"]
    qwen = configs.build(configs.reduced_config("Qwen/Qwen1.5-MoE-A2.7B"))
    assert all(p.ffn_gate is not None for p in arch.layers(qwen))  # sigmoid-gated shared expert
    deepseek = configs.build(configs.reduced_config("deepseek-ai/DeepSeek-V2-Lite"))
    assert [p.is_moe for p in arch.layers(deepseek)] == [False, True, True]  # first dense layer


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model_id", REAL)
def test_every_path_at_reduced_width(model_id, dtype):
    model, tok = reduced(model_id, dtype)
    row = realshape.check(model, tok, realshape.random_prompts(3, 6, model.config.vocab_size), kernel="plain")
    assert_checked(row, dtype, arch.is_moe(model))


def test_fused_kernel_through_attribute_with_routed_scaling():
    """Fused kernel on a DeepSeek-V2 family model whose routed weights are scaled (g = 2.5 p)."""
    set_determinism(0)
    config = configs.reduced_config("deepseek-ai/DeepSeek-V2-Lite")
    config.routed_scaling_factor = 2.5
    model = configs.build(config).eval()
    tok = realshape.synthetic_tokenizer(model.config.vocab_size)
    row = realshape.check(model, tok, realshape.random_prompts(3, 6, model.config.vocab_size), kernel="fused")
    assert_checked(row, torch.float32, True)
    assert row["max_abs_err"] <= 1e-7  # the fused form sums p (e^d - 1): float32 to ~1e-9 here


def test_real_config_cut_keeps_widths():
    cfg = configs.real_config("mistralai/Mixtral-8x7B-v0.1", layers=1)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts) == (1, 4096, 14336, 8)
    assert configs.first_moe_layer("deepseek-ai/DeepSeek-V2-Lite") == 1
    with pytest.raises(ValueError, match="cannot cut"):
        configs.real_config("huggyllama/llama-7b", layers=33)


@pytest.mark.slow
@pytest.mark.realshape
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_id", REAL)
def test_real_width(model_id, dtype, tmp_path):
    """Real hidden size, experts, expert width, top-k and vocabulary, cut to the first MoE layer; own process."""
    from moescope import paths

    out = paths.RUNS / "realshape" / f"{model_id.replace('/', '__')}__{dtype}.json"
    subprocess.run([sys.executable, "-m", "moescope.attribution.realshape", model_id, "--dtype", dtype,
                    "--prompts", "1", "--out", str(out)], check=True)
    row = json.loads(out.read_text())
    assert row["layers"] == configs.first_moe_layer(model_id) + 1
    assert_checked(row, getattr(torch, dtype), configs.REAL_CONFIGS[model_id]["model_type"] in configs.MOE_FAMILIES)
