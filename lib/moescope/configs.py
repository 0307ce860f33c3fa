"""Model configurations: tiny ones of every supported family (tests, organisms) and the real ones of the papers'
MoE and dense checkpoints (random-weight benchmarks and real-shape checks, at full size or reduced width; a user
with the hub passes the model id instead)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from . import arch
from .determinism import EXPERTS_IMPLEMENTATION

MOE_FAMILIES = tuple(arch.supported_families(moe=True))
DENSE_FAMILIES = tuple(arch.supported_families(moe=False))


@dataclass(frozen=True)
class Shape:
    """Sizes of a small model. ``expert_width`` is the routed experts' (or dense FFN's) intermediate size."""

    vocab: int = 128
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    experts: int = 8
    top_k: int = 2
    expert_width: int = 32
    shared_width: int = 64
    max_positions: int = 64


def _common(shape: Shape) -> dict:
    return dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _new_family_fields(family: str, shape: Shape) -> dict | None:
    """Tiny configs of the families added after the first six, each with its quirks switched on (non-trivial
    multipliers, biases, groups, scaling, sliding/chunked/linear attention layers) so the tests exercise them."""
    head_dim = shape.hidden // shape.heads
    routed = dict(num_experts_per_tok=shape.top_k, head_dim=head_dim)
    local = routed | dict(num_local_experts=shape.experts, intermediate_size=shape.expert_width)
    v3_routing = dict(n_routed_experts=shape.experts, n_shared_experts=1, moe_intermediate_size=shape.expert_width,
                      intermediate_size=shape.shared_width, first_k_dense_replace=0, n_group=2, topk_group=1,
                      routed_scaling_factor=2.5, norm_topk_prob=True)
    linear_attention = dict(layer_types=["linear_attention", "full_attention"] * (shape.layers // 2)
                            + ["linear_attention"] * (shape.layers % 2),
                            linear_num_value_heads=shape.heads, linear_num_key_heads=shape.heads // 2,
                            linear_key_head_dim=head_dim, linear_value_head_dim=head_dim,
                            num_experts=shape.experts, moe_intermediate_size=shape.expert_width,
                            shared_expert_intermediate_size=shape.shared_width, intermediate_size=shape.shared_width)
    shared = shape.shared_width
    dsa = dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, qk_head_dim=8,
               v_head_dim=head_dim, index_topk=4, index_head_dim=8, index_n_heads=2,
               mlp_layer_types=["sparse"] * shape.layers)
    alternating = ["sliding_attention", "full_attention"] * (shape.layers // 2) + ["sliding_attention"] * (shape.layers % 2)
    granite = local | dict(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
                           logits_scaling=6.0)
    fields = {
        "gpt_oss": local | dict(swiglu_limit=0.05, sliding_window=4, attention_bias=True, layer_types=alternating,
                                rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        "qwen3_next": routed | linear_attention | dict(norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]),
        "qwen3_5_moe_text": routed | linear_attention,
        "glm4_moe": routed | v3_routing | dict(use_qk_norm=True),
        "dots1": routed | v3_routing | dict(layer_types=["full_attention"] * shape.layers),
        "llama4_text": local | dict(intermediate_size_mlp=shape.shared_width, moe_layers=list(range(shape.layers)),
                                    no_rope_layers=[int(i % 2 == 0) for i in range(shape.layers)],
                                    attention_chunk_size=4, use_qk_norm=True),
        "granitemoe": granite,
        "granitemoeshared": granite | dict(shared_intermediate_size=shape.shared_width),
        "phimoe": local | dict(attention_bias=True, lm_head_bias=True),
        "granitemoe_swa": granite | dict(shared_intermediate_size=shared, sliding_window=4, layer_types=alternating),
        "glm4_moe_lite": routed | v3_routing | dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                                                    qk_nope_head_dim=4, qk_head_dim=8, v_head_dim=head_dim,
                                                    mlp_layer_types=["sparse"] * shape.layers),
        "solar_open": routed | v3_routing,
        "exaone_moe": routed | v3_routing | dict(num_experts=shape.experts, num_shared_experts=1,
                                                 sliding_window=4, layer_types=alternating,
                                                 mlp_layer_types=["sparse"] * shape.layers),
        "mimo_v2_flash": routed | v3_routing | dict(
            v_head_dim=head_dim, sliding_window=4, layer_types=alternating, mlp_layer_types=["sparse"] * shape.layers,
            num_key_value_heads=shape.heads // 2,  # sliding layers double the KV heads
            rope_parameters={t: dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)
                             for t in ("full_attention", "sliding_attention")}),
        "mellum": local | dict(moe_intermediate_size=shape.expert_width, intermediate_size=shared,
                               sliding_window=4, layer_types=alternating, mlp_layer_types=["sparse"] * shape.layers),
        "flint": routed | dict(num_experts=shape.experts, moe_intermediate_size=shape.expert_width,
                               shared_expert_intermediate_size=shared, intermediate_size=shared,
                               mlp_only_layers=[], decoder_sparse_step=1, sliding_window=4, layer_types=alternating),
        "hunyuan_v1_moe": dict(num_experts=shape.experts, moe_topk=shape.top_k, intermediate_size=shape.expert_width,
                               head_dim=head_dim, use_qk_norm=True),
        "ernie4_5_moe": dict(moe_num_experts=shape.experts, moe_k=shape.top_k, moe_intermediate_size=shape.expert_width,
                             moe_num_shared_experts=1, intermediate_size=shared, moe_layer_start_index=0,
                             moe_layer_end_index=shape.layers - 1, moe_layer_interval=1, head_dim=head_dim),
        "minimax_m2": local,
        "hy_v3": routed | dict(num_experts=shape.experts, num_local_experts=shape.experts, num_shared_experts=1,
                               moe_intermediate_size=shape.expert_width, intermediate_size=shared,
                               router_scaling_factor=2.5, enable_moe_fp32_combine=False,
                               mlp_layer_types=["sparse"] * shape.layers),
        "laguna": routed | dict(num_experts=shape.experts, moe_intermediate_size=shape.expert_width,
                                shared_expert_intermediate_size=shared, intermediate_size=shared,
                                moe_routed_scaling_factor=2.5, moe_router_logit_softcapping=0.5, sliding_window=4,
                                layer_types=alternating, mlp_layer_types=["sparse"] * shape.layers,
                                num_attention_heads_per_layer=[shape.heads, shape.heads // 2] * (shape.layers // 2)
                                + [shape.heads] * (shape.layers % 2), num_key_value_heads=shape.heads // 2),
        "deepseek_v32": routed | v3_routing | dsa,
        "glm_moe_dsa": routed | v3_routing | dsa,
        "axk2": routed | v3_routing | dsa | dict(n_group=None, topk_group=None, gated_norm_rank=4),
        "granitemoehybrid": granite | dict(
            shared_intermediate_size=shared, layer_types=["linear_attention", "attention"] * (shape.layers // 2)
            + ["linear_attention"] * (shape.layers % 2), mamba_n_heads=shape.heads, mamba_n_groups=1,
            mamba_d_state=8, mamba_d_head=2 * shape.hidden // shape.heads, mamba_expand=2, mamba_chunk_size=4),
        "aria_text": dict(moe_num_experts=shape.experts, moe_topk=shape.top_k, moe_num_shared_experts=1,
                          intermediate_size=shape.expert_width, head_dim=head_dim),
        "qwen3": dict(intermediate_size=shape.expert_width, head_dim=head_dim),
        "gemma": dict(intermediate_size=shape.expert_width, head_dim=head_dim),
    }
    return fields.get(family)


def _moe_fields(family: str, shape: Shape) -> dict:
    newer = _new_family_fields(family, shape)
    if newer is not None:
        return newer
    routed = dict(num_experts_per_tok=shape.top_k)
    if family == "olmoe":
        return routed | dict(num_experts=shape.experts, intermediate_size=shape.expert_width)
    if family == "mixtral":
        return routed | dict(num_local_experts=shape.experts, intermediate_size=shape.expert_width)
    if family == "qwen3_moe":
        return routed | dict(num_experts=shape.experts, moe_intermediate_size=shape.expert_width,
                             intermediate_size=shape.shared_width, decoder_sparse_step=1, mlp_only_layers=[])
    if family == "qwen2_moe":
        return routed | dict(num_experts=shape.experts, moe_intermediate_size=shape.expert_width,
                             shared_expert_intermediate_size=shape.shared_width,
                             intermediate_size=shape.shared_width, decoder_sparse_step=1, mlp_only_layers=[])
    deepseek = routed | dict(
        n_routed_experts=shape.experts, n_shared_experts=1, moe_intermediate_size=shape.expert_width,
        intermediate_size=shape.shared_width, first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None,
        qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4,
    )
    if family == "deepseek_v3":
        return deepseek | dict(n_group=2, topk_group=1, norm_topk_prob=True)
    return deepseek | dict(n_group=1, topk_group=1, topk_method="greedy")


def tiny_config(family: str, shape: Shape = Shape()) -> PretrainedConfig:
    """A small config of ``family`` (one of MOE_FAMILIES + DENSE_FAMILIES) with the given sizes."""
    if family in DENSE_FAMILIES:
        fields = _common(shape) | (_new_family_fields(family, shape) or dict(intermediate_size=shape.expert_width))
    elif family in MOE_FAMILIES:
        fields = _common(shape) | _moe_fields(family, shape)
    else:
        raise ValueError(f"unknown model family {family!r}; choose from {MOE_FAMILIES + DENSE_FAMILIES}")
    return transformers.AutoConfig.for_model(family, **fields)


def experts_kwargs(config: PretrainedConfig, experts: str = EXPERTS_IMPLEMENTATION) -> dict:
    """``experts_implementation=experts`` for MoE families whose experts module accepts it, else nothing."""
    try:
        fam = arch.family(config)
    except arch.ArchitectureError:
        return {}
    return dict(experts_implementation=experts) if fam.moe and fam.experts_implementation else {}


def build(config: PretrainedConfig, attn: str = "eager", experts: str = EXPERTS_IMPLEMENTATION,
          dtype: torch.dtype | None = None) -> nn.Module:
    """A randomly initialised causal LM for ``config``; MoE experts use ``experts`` (float64 needs 'eager').

    ``dtype`` builds the weights directly in that precision (no float32 copy first: real sizes need this).
    """
    kwargs = dict(attn_implementation=attn, **experts_kwargs(config, experts))
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_config(config, **kwargs)


#: Published configurations (config.json of each checkpoint), for random-weight runs at real size. The source of
#: each is the checkpoint's own config.json on the Hugging Face hub (the address in the comment above it).
REAL_CONFIGS: dict[str, dict] = {
    # https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/blob/main/config.json
    "Qwen/Qwen1.5-MoE-A2.7B": dict(
        model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=16, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
        decoder_sparse_step=1, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    # https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/config.json
    "allenai/OLMoE-1B-7B-0924": dict(
        model_type="olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
        norm_topk_prob=False, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    # https://huggingface.co/deepseek-ai/DeepSeek-V2-Lite/blob/main/config.json
    "deepseek-ai/DeepSeek-V2-Lite": dict(
        model_type="deepseek_v2", vocab_size=102400, hidden_size=2048, num_hidden_layers=27,
        num_attention_heads=16, num_key_value_heads=16, intermediate_size=10944, moe_intermediate_size=1408,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
        kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
        topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False,
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json (8 experts, top-2, renormalised)
    "mistralai/Mixtral-8x7B-v0.1": dict(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False,
    ),
    # https://huggingface.co/huggyllama/llama-7b/blob/main/config.json (LLaMA-1 7B, the paper's "Llama-7B")
    "huggyllama/llama-7b": dict(
        model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    # https://huggingface.co/Qwen/Qwen1.5-7B/blob/main/config.json
    "Qwen/Qwen1.5-7B": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_theta=1000000.0, use_sliding_window=False, tie_word_embeddings=False,
    ),
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
    "mistralai/Mistral-7B-v0.1": dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
    ),
}

#: Sizes of :func:`reduced_config`: every width of a real config cut to these (fields the family lacks are skipped).
REDUCED_SIZES = dict(
    vocab_size=256, hidden_size=64, num_attention_heads=4, intermediate_size=96, moe_intermediate_size=32,
    shared_expert_intermediate_size=128, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
    max_position_embeddings=128,
)
_EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")


def first_moe_layer(model_id: str) -> int:
    """Index of the first MoE layer of a real config (0 for dense models, which have none)."""
    fields = REAL_CONFIGS[model_id]
    return int(fields.get("first_k_dense_replace", 0)) if fields["model_type"] in MOE_FAMILIES else 0


def real_config(model_id: str, layers: int | None = None) -> PretrainedConfig:
    """The published config of ``model_id`` (one of REAL_CONFIGS), built offline; ``layers`` cuts the depth."""
    if model_id not in REAL_CONFIGS:
        raise ValueError(f"no stored config for {model_id!r}; known: {sorted(REAL_CONFIGS)}")
    fields = dict(REAL_CONFIGS[model_id])
    if layers is not None:
        if not 0 < layers <= fields["num_hidden_layers"]:
            raise ValueError(f"{model_id} has {fields['num_hidden_layers']} layers; cannot cut to {layers}")
        fields["num_hidden_layers"] = layers
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def reduced_config(model_id: str, layers: int | None = None) -> PretrainedConfig:
    """``model_id``'s config at test size, keeping its family settings: routing (top-k, ``norm_topk_prob``,
    ``routed_scaling_factor``, ``topk_method``), shared expert and its gate, first dense layers, grouped-query ratio.

    Widths become REDUCED_SIZES, the expert count max(8, 2 * top-k), the depth ``layers`` (default: the first
    dense layers + 2).
    """
    fields = dict(REAL_CONFIGS[model_id])
    kv_ratio = fields["num_attention_heads"] // fields["num_key_value_heads"]
    fields.update({k: v for k, v in REDUCED_SIZES.items() if k in fields})
    fields["num_key_value_heads"] = max(1, fields["num_attention_heads"] // kv_ratio)
    if fields["model_type"].startswith("deepseek"):
        fields["head_dim"] = fields["qk_rope_head_dim"]
    for key in _EXPERT_COUNT_FIELDS:
        if key in fields:
            fields[key] = min(fields[key], max(8, 2 * fields["num_experts_per_tok"]))
    fields["num_hidden_layers"] = layers or first_moe_layer(model_id) + 2
    fields.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # the real ids lie outside the reduced vocabulary
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
