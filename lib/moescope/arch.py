"""A map of a decoder-only transformers-5 model: where each layer's token mixer, router, experts and FFN live.

Every analysis reads sizes from here (and so from ``model.config``); nothing is hard-coded per checkpoint.
Only the classes in :data:`FAMILIES` are supported: each one is checked on a tiny random config by the tests
of tests/core and tests/attribution/test_lpi.py (exact residual decomposition, the model's own
log-probabilities, routing and expert outputs reproduced, empty interventions are identities). Every other class is refused up front with an
:class:`ArchitectureError` naming it and the reason (:data:`REFUSED`, or "not verified" for classes this
version of moescope does not know); :mod:`moescope.support` renders the table for the README.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The model does not have the structure an analysis needs (e.g. a dense model given to an MoE analysis)."""


@dataclass(frozen=True)
class Family:
    """How one supported model type lays out a decoder layer, and what it adds to the plain pre-norm stream

        h_mid = h + m * A(norm1(h)),   h_next = h_mid + m * F(norm2(h_mid)),   logits = W_U norm(h_L) / d

    ``mlp``/``router``: attribute of the layer holding the FFN or MoE block, and of that block holding the
    router. ``experts``: the expert maths (see :func:`moescope.capture.expert_coefficients`). ``layer_ffn``: an
    always-on MLP beside the MoE block at layer level (added to its output). ``final_norm``: 'rms' (gamma = w),
    'rms_offset' (gamma = 1 + w) or 'layer' (LayerNorm: centred, with bias). ``residual_multiplier``: m is
    ``config.residual_multiplier`` (else 1). ``logits_divisor``: the config attribute d (else 1).
    ``experts_implementation``: whether the experts module accepts transformers' experts_implementation.
    ``router_bias``: an attribute of the MoE block that the block passes to the router as its second argument.
    ``routed_scale``: an attribute of the MoE block that multiplies the routed experts' summed output.
    """

    model_type: str
    moe: bool = True
    mlp: str = "mlp"
    router: str = "gate"
    experts: str = "fused"
    layer_ffn: str | None = None
    final_norm: str = "rms"
    residual_multiplier: bool = False
    logits_divisor: str | None = None
    experts_implementation: bool = True
    router_bias: str | None = None
    routed_scale: str | None = None
    quirks: str = ""


#: Expert kinds that store gate_up_proj as [E, H, 2I] and down_proj as [E, I, H] (x @ W rather than W x).
TRANSPOSED_EXPERTS = ("gpt_oss", "llama4", "transposed")


def _families(*families: Family) -> dict[str, Family]:
    return {f.model_type: f for f in families}


#: Supported model types (config.model_type) and what the kit does for each one's quirks.
FAMILIES: dict[str, Family] = _families(
    Family("olmoe", quirks="softmax top-k router (norm_topk_prob)"),
    Family("qwen2_moe", quirks="sigmoid-gated shared expert"),
    Family("qwen3_moe", quirks="q/k norms inside attention"),
    Family("mixtral", quirks="softmax top-k, always renormalised"),
    Family("deepseek_v2", quirks="multi-head latent attention (v_head_dim heads); greedy/group-limited routing "
                                 "with routed_scaling_factor; ungated shared experts"),
    Family("deepseek_v3", quirks="sigmoid router with e_score_correction_bias and group-limited top-k; "
                                 "routed_scaling_factor; ungated shared experts"),
    Family("glm4_moe", quirks="DeepSeek-V3 routing (sigmoid, correction bias, groups, scaling); partial RoPE; "
                              "ungated shared experts; leading dense layers"),
    Family("dots1", quirks="DeepSeek-V3 routing (sigmoid, correction bias, groups, scaling); ungated shared "
                           "experts; leading dense layers"),
    Family("gpt_oss", router="router", experts="gpt_oss",
           quirks="router bias; top-k of logits then softmax; expert biases; clamped SwiGLU (alpha, limit) on "
                  "interleaved gate/up; attention sinks (pattern rows sum to < 1); o_proj bias (attn_bias)"),
    Family("qwen3_next", final_norm="rms_offset",
           quirks="gated-DeltaNet linear-attention layers (heads = value heads before out_proj) mixed with "
                  "output-gated full attention; sigmoid-gated shared expert; (1 + w) RMSNorm"),
    Family("qwen3_5_moe_text", final_norm="rms_offset",
           quirks="as Qwen3-Next: gated-DeltaNet and gated full attention, gated shared expert, (1 + w) RMSNorm"),
    Family("llama4_text", mlp="feed_forward", router="router", experts="llama4", experts_implementation=False,
           quirks="sigmoid of the top-k logits scales each expert's input (not its output); dense scores "
                  "output; shared expert; NoPE/chunked attention layers; interleaved dense layers"),
    Family("granitemoe", mlp="block_sparse_moe", router="router", residual_multiplier=True,
           logits_divisor="logits_scaling",
           quirks="embedding_multiplier (embed = input of layer 0), attention_multiplier (inside attention), "
                  "residual_multiplier on attention and MoE outputs, logits / logits_scaling; top-k of logits "
                  "then softmax"),
    Family("granitemoeshared", mlp="block_sparse_moe", router="router", layer_ffn="shared_mlp",
           residual_multiplier=True, logits_divisor="logits_scaling",
           quirks="as GraniteMoe, plus an ungated shared MLP (fused input_linear) beside the MoE block"),
    Family("granitemoe_swa", mlp="block_sparse_moe", router="router", layer_ffn="shared_mlp",
           residual_multiplier=True, logits_divisor="logits_scaling",
           quirks="as GraniteMoeShared, plus sliding-window layers with attention sinks applied as a "
                  "log-sum-exp scaling of the attention output"),
    Family("granitemoehybrid", mlp="block_sparse_moe", router="router", layer_ffn="shared_mlp",
           residual_multiplier=True, logits_divisor="logits_scaling",
           quirks="as GraniteMoeShared, with Mamba-2 mixer layers (heads = SSM heads before out_proj, after the "
                  "gated group norm) beside attention layers without position embeddings"),
    Family("glm4_moe_lite", quirks="DeepSeek-V3 routing; multi-head latent attention (v_head_dim heads); "
                                   "ungated shared experts"),
    Family("solar_open", quirks="DeepSeek-V3 routing (sigmoid, correction bias, groups, scaling); ungated "
                                "shared experts"),
    Family("exaone_moe", quirks="DeepSeek-V3 routing; ungated shared experts; sliding-window layers; "
                                "leading dense layers"),
    Family("mimo_v2_flash", quirks="DeepSeek-V3 routing without shared experts; sliding-window layers with "
                                   "attention sinks and doubled KV heads; v_head_dim != head_dim; value scaling"),
    Family("mellum", quirks="softmax top-k router (norm_topk_prob); sliding-window layers"),
    Family("flint", quirks="sigmoid top-k router without bias (renormalised); ungated shared expert; "
                           "sliding-window layers; leading dense layers"),
    Family("hunyuan_v1_moe", quirks="softmax top-k router (gate.wg, always renormalised); ungated shared MLP; "
                                    "q/k norms inside attention"),
    Family("ernie4_5_moe", quirks="softmax router whose choice adds a correction bias (moe_statics); weights "
                                  "renormalised with a clamp (moe_norm_min); ungated shared experts"),
    Family("minimax_m2", router_bias="e_score_correction_bias",
           quirks="sigmoid router whose correction bias lives on the MoE block and is passed to the router call; "
                  "renormalised weights; q/k norms inside attention"),
    Family("hy_v3", router_bias="e_score_correction_bias",
           quirks="sigmoid router with the block's correction bias passed in, renormalised and scaled by "
                  "router_scaling_factor; ungated shared experts (the optional fp32 combine of routed and shared "
                  "outputs rounds to float32)"),
    Family("deepseek_v32", quirks="DeepSeek-V3 routing; DeepSeek sparse attention (an indexer selects each "
                                  "query's keys; heads still sum through o_proj); multi-head latent attention"),
    Family("glm_moe_dsa", quirks="DeepSeek-V3 routing; DeepSeek sparse attention (indexer-selected keys); "
                                 "multi-head latent attention; ungated shared experts"),
    Family("axk2", quirks="DeepSeek-V3-style sigmoid router (correction bias, scaling, no groups in the Light "
                          "release); DeepSeek sparse attention; gated RMSNorms before attention and MoE"),
    Family("laguna", routed_scale="routed_scaling_factor",
           quirks="sigmoid router on soft-capped logits with a correction bias; routed experts' sum scaled by "
                  "moe_routed_scaling_factor; per-layer head counts; softplus head gates; sliding-window layers"),
    Family("aria_text", router="router", experts="transposed",
           quirks="top-k of logits then softmax; experts stored [E, H, 2I] (x @ W); ungated shared experts"),
    Family("phimoe", router="router", final_norm="layer",
           quirks="sparsemixer top-2 routing (inference path; forcing and top_k edits refused); LayerNorm "
                  "(centring and bias folded into the readout); lm_head bias"),
    Family("llama", moe=False),
    Family("qwen2", moe=False, quirks="q/k/v biases inside attention"),
    Family("mistral", moe=False),
    Family("qwen3", moe=False, quirks="q/k norms inside attention"),
    Family("gemma", moe=False, final_norm="rms_offset",
           quirks="embeddings times sqrt(hidden) (embed = input of layer 0); (1 + w) RMSNorm; GeLU MLP"),
)

_POST_NORMS = ("post-norm: each attention and MLP output is normalised before it is added to the residual "
               "stream, so per-head and per-expert contributions are not additive")
#: MoE model types refused by name, with the reason (anything not in FAMILIES is refused too).
REFUSED: dict[str, str] = {
    "flex_olmo": _POST_NORMS,
    "afmoe": _POST_NORMS + " (pre/post-MLP norms)",
    "beam": _POST_NORMS + " (sandwich norms)",
    "kolibri1": _POST_NORMS + " (post-attention/post-MLP norms)",
    "axk1": "a norm on the MoE output (post_mlp_layernorm) makes expert contributions non-additive",
    "gemma4": "multimodal class; its text model uses sandwich norms and per-layer inputs",
    "gemma4_text": _POST_NORMS + " (sandwich norms), plus per-layer input embeddings",
    "jetmoe": "attention is itself a mixture of experts (JetMoeMoA): heads are routed per token, not fixed",
    "dbrx": "another module layout (transformer.blocks, norm_attn_norm, ffn.experts.mlp) with experts stored as "
            "flat w1/v1/w2 matrices, not the fused gate_up_proj/down_proj layout: not mapped",
    "minimax": "no additive residual stream: each layer's residual is its input *after* the input norm, mixed "
               "with the attention/MLP output by alpha/beta factors; lightning-attention layers",
    "minimax_m3_vl_text": "not yet mapped: clamped-SwiGLU experts and a clamped-SwiGLU shared MLP on a fused "
                          "Linear (swiglu_alpha/limit), a block-level routed scaling, block-sparse attention "
                          "with an indexer",
    "jamba": "Mamba-1 mixer layers have no heads: inhibiting a mixer 'head' is not exact (head-inhibition test "
             "fails); also feed_forward/pre_ff_layernorm/final_layernorm module names: not yet supported",
    "nemotron_h": "hybrid Mamba-2/attention/MoE blocks under one 'mixer' per layer with latent projections",
    "bailing_hybrid": "linear-attention layers with forget gates (BailingHybridForgetGate): not mapped",
    "kimi_linear": "Kimi delta attention with forget gates (KimiLinearForgetGate): not mapped",
    "lfm2_moe": "short-convolution mixer layers (Lfm2MoeShortConv): not mapped",
    "zaya": "an MLP router (ZayaRouterMLP) with state across layers: not mapped",
    "deepseek_v4": "hyper-connections (several residual streams mixed per layer) and a hash router",
    "qwen4_exp": "hyper-connections (gated residual mixing) instead of one additive residual stream",
    "inkling_text": "short causal convolutions over positions on each attention and MLP output before the "
                    "residual add: a position's contribution mixes other positions' heads and experts",
    "inkling2_text": "block attention residuals, short convolutions and logit soft-capping",
    "longcat_flash": "two attention and two MLP sub-blocks per layer plus zero-computation experts",
    "doge": "product-key retrieval of single-neuron experts (DogeCDMoE: embedding tables, no router module, "
            "and router logits that mix tokens across the batch): not mapped",
    "dots3_note": "multimodal class with per-layer attention configs",
    "dots3_note_text": "per-layer attention configs (config attributes vary by layer): not mapped",
    "hy_v4": "hyper-connections (attn_hc/ffn_hc mix several residual streams per layer)",
    "cohere2_moe": "not yet mapped: attention and MoE run in parallel on one LayerNorm output (no post-attention "
                   "norm), logits are multiplied by logit_scale, shared and routed outputs may be averaged",
}


def _model_type(obj) -> str:
    """config.model_type; for a composite (e.g. multimodal) config whose text model is a supported family, that
    family's type: AutoModelForCausalLM builds the text model from it (e.g. 'llama4' -> 'llama4_text')."""
    config = getattr(obj, "config", obj)
    model_type = str(getattr(config, "model_type", "") or "")
    text = config.get_text_config() if model_type not in FAMILIES and hasattr(config, "get_text_config") else config
    return text.model_type if text is not config and text.model_type in FAMILIES else model_type


def _class_name(obj) -> str:
    if isinstance(obj, nn.Module):
        return type(obj).__name__
    archs = getattr(obj, "architectures", None) or []
    return archs[0] if archs else f"model_type {_model_type(obj)!r}"


def supported_families(moe: bool | None = None) -> list[str]:
    """Model types the kit supports (only MoE ones with ``moe=True``, only dense ones with ``moe=False``)."""
    return [t for t, f in FAMILIES.items() if moe is None or f.moe == moe]


def family(obj) -> Family:
    """The :class:`Family` of a model or config; :class:`ArchitectureError` naming the class if unsupported."""
    model_type = _model_type(obj)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    reason = REFUSED.get(model_type, "not among the classes this version of moescope verifies exactly")
    raise ArchitectureError(
        f"{_class_name(obj)} (model_type {model_type!r}) is not supported: {reason}. Supported MoE families: "
        f"{', '.join(supported_families(True))}; dense: {', '.join(supported_families(False))}"
    )


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer.

    ``attn`` is the token mixer (softmax attention, or a linear-attention block) and ``o_proj`` its output
    projection, whose input splits into ``n_heads`` equal slices. ``ffn`` is the always-on MLP of the layer:
    the shared expert of an MoE layer (inside the MoE block, or beside it when ``ffn_in_block`` is False) or
    the whole FFN of a dense layer; ``None`` for MoE layers without one. ``ffn_gate`` is the ``Linear(H, 1)``
    whose sigmoid scales the shared expert; ``None`` means gate 1. ``residual_scale`` multiplies both the
    mixer's and the MLP's outputs before they are added to the residual stream. ``expert_kind`` names the
    expert maths. ``router_extra``: further arguments the block passes to the router (MiniMax-M2's bias).
    ``routed_scale``: a block-level factor on the routed experts' sum (Laguna).
    """

    index: int
    layer: nn.Module
    attn: nn.Module
    o_proj: nn.Linear
    post_attention_norm: nn.Module
    mlp: nn.Module
    router: nn.Module | None
    experts: nn.Module | None
    ffn: nn.Module | None
    ffn_gate: nn.Module | None
    n_heads: int = 0
    residual_scale: float = 1.0
    expert_kind: str = "fused"
    ffn_in_block: bool = True
    router_extra: tuple = ()
    routed_scale: float = 1.0

    @property
    def is_moe(self) -> bool:
        return self.experts is not None


def _decoder(model: nn.Module) -> nn.Module:
    family(model)
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise ArchitectureError(
            f"{type(model).__name__} is not a supported decoder-only causal LM (expected model.model.layers)"
        )
    return inner


def _always_on_mlp(mlp: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(ffn, ffn_gate) of an MLP block: the shared expert and its gate, or the dense MLP itself."""
    for name in ("shared_expert", "shared_experts", "shared_mlp"):
        if getattr(mlp, name, None) is not None:
            return getattr(mlp, name), getattr(mlp, "shared_expert_gate", None)
    if hasattr(mlp, "experts"):
        return None, None
    if all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")) or hasattr(mlp, "input_linear"):
        return mlp, None
    raise ArchitectureError(f"unsupported MLP block {type(mlp).__name__}")


def _mixer(layer: nn.Module) -> tuple[nn.Module, nn.Linear, int | None]:
    """(token mixer, its output projection, its head count or None for the config's)."""
    if getattr(layer, "self_attn", None) is not None:  # a per-layer head count (Laguna) is the module's num_heads
        return layer.self_attn, layer.self_attn.o_proj, getattr(layer.self_attn, "num_heads", None)
    if getattr(layer, "linear_attn", None) is not None:  # gated DeltaNet: one slice of out_proj's input per value head
        return layer.linear_attn, layer.linear_attn.out_proj, int(layer.linear_attn.num_v_heads)
    if getattr(layer, "mamba", None) is not None:  # Mamba-2: one slice of out_proj's input per SSM head
        return layer.mamba, layer.mamba.out_proj, int(layer.mamba.num_heads)
    raise ArchitectureError(f"no token mixer (self_attn / linear_attn / mamba) in {type(layer).__name__}")


def has_attention_everywhere(parts: list[LayerParts]) -> bool:
    """True when every layer mixes tokens with softmax attention (so every layer has an attention pattern)."""
    return all(getattr(p.layer, "self_attn", None) is p.attn for p in parts)


def _unwrapped(module: nn.Module | None) -> nn.Module | None:
    """The module PEFT adapter wrappers (LoRA's ``ParamWrapper`` on fused experts and routers, one per wrapped
    tensor) wrap: the innermost ``base_layer``, whose hooks still run inside the wrappers' forward; any other module
    as it is."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def _layer_parts(index: int, layer: nn.Module, fam: Family, config) -> LayerParts:
    mlp = getattr(layer, fam.mlp, None)
    if mlp is None and fam.layer_ffn is not None:  # GraniteMoeHybrid without experts: the shared MLP is the FFN
        mlp = getattr(layer, fam.layer_ffn)
    experts = _unwrapped(getattr(mlp, "experts", None))
    if experts is not None and not hasattr(experts, "gate_up_proj"):
        raise ArchitectureError(
            f"layer {index}: experts of {type(mlp).__name__} are not fused (gate_up_proj); transformers>=5 is required"
        )
    beside = getattr(layer, fam.layer_ffn, None) if fam.layer_ffn else None
    beside = None if beside is mlp else beside
    ffn, ffn_gate = (beside, None) if beside is not None else _always_on_mlp(mlp)
    attn, o_proj, n_heads = _mixer(layer)
    return LayerParts(
        index=index, layer=layer, attn=attn, o_proj=o_proj, post_attention_norm=layer.post_attention_layernorm,
        mlp=mlp, router=_unwrapped(getattr(mlp, fam.router)) if experts is not None else None, experts=experts,
        ffn=ffn, ffn_gate=ffn_gate, n_heads=n_heads or int(config.num_attention_heads),
        residual_scale=float(config.residual_multiplier) if fam.residual_multiplier else 1.0,
        expert_kind=fam.experts, ffn_in_block=beside is None,
        router_extra=(getattr(mlp, fam.router_bias),) if fam.router_bias and experts is not None else (),
        routed_scale=float(getattr(mlp, fam.routed_scale)) if fam.routed_scale and experts is not None else 1.0,
    )


def layers(model: nn.Module) -> list[LayerParts]:
    """The parts of every decoder layer, in order (0-indexed); refuses unsupported classes."""
    fam = family(model)
    return [_layer_parts(i, layer, fam, model.config) for i, layer in enumerate(_decoder(model).layers)]


def is_moe(model: nn.Module) -> bool:
    """True if at least one layer routes tokens to experts."""
    return any(p.is_moe for p in layers(model))


def require_moe(model: nn.Module, analysis: str) -> None:
    """Raise a clear error when an MoE-only ``analysis`` is given a dense model."""
    if not is_moe(model):
        raise ArchitectureError(
            f"{analysis} needs a Mixture-of-Experts model, but {type(model).__name__} "
            f"({getattr(model.config, 'name_or_path', '') or 'unnamed'}) has no routed experts"
        )


def has_shared_expert(model: nn.Module) -> bool:
    """True if some MoE layer has an always-on shared expert."""
    return any(p.is_moe and p.ffn is not None for p in layers(model))


def final_norm(model: nn.Module) -> nn.Module:
    """The final norm applied before the unembedding."""
    return _decoder(model).norm


def unembedding(model: nn.Module) -> torch.Tensor:
    """W_U, shape [vocab, hidden]."""
    return model.get_output_embeddings().weight


def logits_divisor(model: nn.Module) -> float:
    """d in logits = W_U norm(h_L) / d (Granite's logits_scaling; 1 for every other family)."""
    attr = family(model).logits_divisor
    return float(getattr(model.config, attr)) if attr else 1.0


def num_heads(model: nn.Module) -> int:
    """Heads of the softmax-attention layers (``LayerParts.n_heads`` has each layer's own count)."""
    return int(model.config.num_attention_heads)


def head_dim(parts: LayerParts, n_heads: int | None = None) -> int:
    """Width of one head's slice of the o_proj input (v_head_dim for DeepSeek)."""
    return parts.o_proj.in_features // (n_heads or parts.n_heads)


def top_k(model: nn.Module) -> int:
    """Number of routed experts selected per token (read from the first MoE layer's router)."""
    require_moe(model, "top_k")
    from .routing import FIXED_TOP_K, family as router_family

    router = next(p.router for p in layers(model) if p.is_moe)
    return int(FIXED_TOP_K.get(router_family(router), router.top_k))


def num_experts(model: nn.Module) -> int:
    """Number of routed experts per MoE layer."""
    require_moe(model, "num_experts")
    return next(p.experts.gate_up_proj.shape[0] for p in layers(model) if p.is_moe)


def expert_down(parts: LayerParts, e: int) -> torch.Tensor:
    """W_down of routed expert ``e``, shape [hidden, expert_width] (whatever the class's storage layout)."""
    w = parts.experts.down_proj[e]
    return w.T if parts.expert_kind in TRANSPOSED_EXPERTS else w


def ffn_down(parts: LayerParts) -> nn.Linear:
    """The down projection of the always-on MLP (``down_proj``, or Granite's ``output_linear``)."""
    return getattr(parts.ffn, "down_proj", None) or parts.ffn.output_linear


def expert_width(parts: LayerParts) -> int:
    """Intermediate size of one routed expert."""
    return expert_down(parts, 0).shape[-1]


def describe(model: nn.Module) -> dict[str, object]:
    """Architecture summary for cards and reports."""
    parts = layers(model)
    moe = [p for p in parts if p.is_moe]
    info: dict[str, object] = {
        "class": type(model).__name__,
        "layers": len(parts),
        "hidden": int(model.config.hidden_size),
        "heads": num_heads(model),
        "vocab": int(model.config.vocab_size),
        "params": sum(p.numel() for p in model.parameters()),
        "moe_layers": len(moe),
    }
    if moe:
        info.update(
            experts=moe[0].experts.gate_up_proj.shape[0],
            top_k=top_k(model),
            expert_width=expert_width(moe[0]),
            shared_expert=has_shared_expert(model),
        )
    return info
