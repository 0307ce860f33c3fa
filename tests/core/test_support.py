"""Every MoE causal-LM class of the installed transformers is supported exactly or refused by name.

The exactness tests proper run over every supported family through the conftest fixtures (test_capture,
test_interventions, tests/attribution/test_lpi); this file adds the readout identity, edits that change nothing,
the quirks the tiny configs switch on, and the support table.
"""
from pathlib import Path

import pytest
import torch

from conftest import random_batch, tiny_model
from moescope import arch, configs, interventions as iv, models, routing, support
from moescope.attribution.lpi import Readout
from moescope.capture import capture
from moescope.hooks import hooked

ROOT = Path(__file__).resolve().parents[2]


def test_readout_of_the_final_residual_is_the_models_log_probability(any_family):
    """log_softmax(W (h_L * s) + b) == the model's own log-softmax: (1 + w) norms, LayerNorm centring and bias,
    lm_head bias and logits divisors included. Tolerance 1e-6: transformers' norms compute in float32 even in
    a float64 model (a missed quirk moves it by > 1e-2)."""
    model = tiny_model(any_family, torch.float64)
    ids, mask = random_batch()
    tr = capture(model, ids, mask)
    r = Readout(model, torch.float64)
    ours = r.log_probs(tr.resid_final, r.scale(tr.resid_final))
    torch.testing.assert_close(ours, torch.log_softmax(tr.logits.double(), -1), rtol=0, atol=1e-6)


def _selected(model, ids, mask) -> dict[int, set[int]]:
    """Per MoE layer, the experts some position of the batch selects."""
    seen: dict[int, set[int]] = {}

    def record(l):
        return lambda router, args, out: seen.setdefault(l, set()).update(routing.decision(router, out)[2].flatten().tolist())

    with hooked((p.router, "forward", record(p.index)) for p in arch.layers(model) if p.is_moe):
        model(input_ids=ids, attention_mask=mask)
    return seen


def test_edits_that_change_nothing_are_the_identity(moe_family):
    """Blocking or forcing nothing, zeroing an expert no token selects, and top-k = the model's own k leave
    every logit bit-identical (each edit re-routes through routing.route, so this is route's exactness)."""
    model = tiny_model(moe_family, torch.float64)
    ids, _ = random_batch(batch=2, seq=3)
    mask = torch.ones_like(ids)  # 6 tokens leave experts unused in each layer
    base = model(input_ids=ids, attention_mask=mask).logits
    used = _selected(model, ids, mask)
    unused = {l: [e for e in range(arch.num_experts(model)) if e not in s][:1] for l, s in used.items()}
    assert any(unused.values()), "the batch uses every expert of every layer: nothing to zero"
    edits = [iv.block_experts(model, {l: [] for l in used}), iv.force_experts(model, {l: [] for l in used}),
             iv.zero_experts(model, unused)]
    if not any(routing.family(p.router) in routing.FIXED_TOP_K for p in arch.layers(model) if p.is_moe):
        edits.append(iv.set_top_k(model, arch.top_k(model)))
    for edit in edits:
        with edit:
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)


def test_tiny_configs_switch_the_quirks_on():
    """The quirks the kit claims to handle are active in the tiny models the tests use (else the tests above
    would pass with the quirk ignored)."""
    granite = tiny_model("granitemoe", torch.float64)
    assert {granite.config.embedding_multiplier, granite.config.residual_multiplier, granite.config.logits_scaling} \
        .isdisjoint({1.0})
    oss = tiny_model("gpt_oss", torch.float64)
    ids, mask = random_batch()
    x = capture(oss, ids, mask).layers[0].mlp_in
    experts = oss.model.layers[0].mlp.experts
    gate_up = torch.einsum("bh,ehi->bei", x, experts.gate_up_proj) + experts.gate_up_proj_bias
    assert (gate_up[..., ::2] > experts.limit).any() and (gate_up[..., 1::2].abs() <= experts.limit).any()
    assert set(oss.config.layer_types) == {"sliding_attention", "full_attention"}
    for family in ("qwen3_next", "qwen3_5_moe_text"):
        assert {type(p.attn).__name__.endswith("GatedDeltaNet") for p in arch.layers(tiny_model(family))} == {True, False}
    llama4 = tiny_model("llama4_text").config
    assert 0 in llama4.no_rope_layers and llama4.attention_chunk_size < 7
    for family in ("glm4_moe", "dots1"):
        router = arch.layers(tiny_model(family))[0].router
        assert router.num_group > router.topk_group and router.routed_scaling_factor != 1.0
        assert router.e_score_correction_bias.abs().sum() > 0
    phi = tiny_model("phimoe")
    assert phi.lm_head.bias is not None and isinstance(arch.final_norm(phi), torch.nn.LayerNorm)
    laguna = arch.layers(tiny_model("laguna"))
    assert len({p.n_heads for p in laguna}) == 2 and laguna[0].routed_scale != 1.0
    assert laguna[0].router.router_logit_softcapping > 0
    hybrid = arch.layers(tiny_model("granitemoehybrid"))
    assert {type(p.attn).__name__ for p in hybrid} == {"GraniteMoeHybridMambaLayer", "GraniteMoeHybridAttention"}
    for family in ("deepseek_v32", "glm_moe_dsa", "axk2"):
        assert tiny_model(family).config.index_topk < 7  # the indexer really drops keys in a 7-token batch
    assert arch.layers(tiny_model("hy_v3"))[0].router.router_scaling_factor != 1.0


@pytest.mark.parametrize("family, change", [
    ("glm4_moe", dict(first_k_dense_replace=1)),
    ("dots1", dict(first_k_dense_replace=1)),
    ("llama4_text", dict(moe_layers=[1])),
    ("qwen3_next", dict(mlp_only_layers=[0])),
])
def test_dense_layers_between_moe_layers(family, change):
    """Leading/interleaved dense layers are mapped as dense FFNs and the stream still decomposes exactly."""
    config = configs.tiny_config(family)
    for key, value in change.items():
        setattr(config, key, value)
    model = configs.build(config, experts="eager").eval().double()
    parts = arch.layers(model)
    assert [p.is_moe for p in parts] == [False, True]
    ids, mask = random_batch()
    tr = capture(model, ids, mask)
    torch.testing.assert_close(tr.embed + sum(c.attn_out + c.mlp_out for c in tr.layers), tr.resid_final,
                               rtol=0, atol=1e-12)
    dense = tr.layers[0]
    torch.testing.assert_close(dense.ffn_gate.unsqueeze(-1) * dense.ffn_out, dense.mlp_out, rtol=0, atol=1e-12)


REFUSED_EXAMPLES = ["flex_olmo", "jetmoe", "minimax", "dbrx", "deepseek_v4"]


@pytest.mark.parametrize("model_type", REFUSED_EXAMPLES)
def test_refused_class_is_named_with_its_reason_and_the_supported_families(model_type):
    config = transformers_config(model_type)
    with pytest.raises(arch.ArchitectureError) as err:
        arch.family(config)
    message = str(err.value)
    assert config.architectures[0] in message and arch.REFUSED[model_type] in message
    assert "Supported MoE families: olmoe" in message and "gpt_oss" in message


def transformers_config(model_type):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return AutoConfig.for_model(model_type, architectures=[MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]])


def test_unknown_dense_class_is_refused_by_name():
    with pytest.raises(arch.ArchitectureError, match=r"GPT2LMHeadModel .*not among the classes"):
        arch.family(transformers_config("gpt2"))


def test_load_model_refuses_before_reading_weights(tmp_path):
    """A folder with only the config.json of a refused class: the error is the refusal, not a missing file."""
    transformers_config("jetmoe").save_pretrained(tmp_path)
    with pytest.raises(arch.ArchitectureError, match="JetMoeForCausalLM"):
        models.load_model(str(tmp_path))


def test_composite_config_resolves_to_its_supported_text_family():
    assert arch.family(transformers_config("llama4")).model_type == "llama4_text"
    assert arch.family(transformers_config("qwen3_5_moe")).model_type == "qwen3_5_moe_text"


def test_every_moe_class_has_a_status_and_every_refused_type_a_reason():
    table = support.support_table()
    names = {r.name for r in table}
    for expected in ("GptOssForCausalLM", "Qwen3NextForCausalLM", "Glm4MoeForCausalLM", "Llama4ForCausalLM",
                     "GraniteMoeForCausalLM", "PhimoeForCausalLM", "JetMoeForCausalLM", "DbrxForCausalLM",
                     "FlexOlmoForCausalLM", "MiniMaxForCausalLM", "HunYuanMoEV1ForCausalLM", "Dots1ForCausalLM"):
        assert expected in names
    assert "LlamaForCausalLM" not in names and "BigBirdForCausalLM" not in names  # dense / block-sparse attention
    for row in table:
        if not row.supported:
            assert any(t in arch.REFUSED for t in row.model_types), f"{row.name}: refused without a stated reason"
    supported = {t for r in table if r.supported for t in r.model_types}
    assert set(configs.MOE_FAMILIES) <= supported


def test_committed_support_table_is_current():
    committed = (ROOT / "docs" / "model_support.md").read_text()
    assert committed == support.render_markdown(), "regenerate: python -m moescope.support docs/model_support.md"
