"""A map of a decoder-only transformers-5 model: where each layer's attention, router, experts and FFN live.

Every analysis reads sizes from here (and so from ``model.config``); nothing is hard-coded per checkpoint.
Supported: the MoE classes OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral, DeepSeek-V2, DeepSeek-V3 and the dense
Llama / Qwen2 / Mistral families (any decoder whose layers expose ``self_attn.o_proj`` and an ``mlp``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The model does not have the structure an analysis needs (e.g. a dense model given to an MoE analysis)."""


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer.

    ``ffn`` is the always-on MLP of the layer (``gate_proj``/``up_proj``/``down_proj``): the shared expert of an
    MoE layer (Qwen2-MoE, DeepSeek) or the whole FFN of a dense layer; ``None`` for MoE layers without one.
    ``ffn_gate`` is Qwen2-MoE's ``Linear(H, 1)`` whose sigmoid scales the shared expert; ``None`` means gate 1.
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

    @property
    def is_moe(self) -> bool:
        return self.experts is not None


def _decoder(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise ArchitectureError(
            f"{type(model).__name__} is not a supported decoder-only causal LM (expected model.model.layers)"
        )
    return inner


def _always_on_mlp(mlp: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(ffn, ffn_gate) of an MLP block: the shared expert and its gate, or the dense MLP itself."""
    for name in ("shared_expert", "shared_experts"):
        if hasattr(mlp, name):
            return getattr(mlp, name), getattr(mlp, "shared_expert_gate", None)
    if hasattr(mlp, "experts"):
        return None, None
    if all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return mlp, None
    raise ArchitectureError(f"unsupported MLP block {type(mlp).__name__}")


def _layer_parts(index: int, layer: nn.Module) -> LayerParts:
    mlp = layer.mlp
    experts = getattr(mlp, "experts", None)
    if experts is not None and not hasattr(experts, "gate_up_proj"):
        raise ArchitectureError(
            f"layer {index}: experts of {type(mlp).__name__} are not fused (gate_up_proj); transformers>=5 is required"
        )
    ffn, ffn_gate = _always_on_mlp(mlp)
    return LayerParts(
        index=index,
        layer=layer,
        attn=layer.self_attn,
        o_proj=layer.self_attn.o_proj,
        post_attention_norm=layer.post_attention_layernorm,
        mlp=mlp,
        router=getattr(mlp, "gate", None) if experts is not None else None,
        experts=experts,
        ffn=ffn,
        ffn_gate=ffn_gate,
    )


def layers(model: nn.Module) -> list[LayerParts]:
    """The parts of every decoder layer, in order (0-indexed)."""
    return [_layer_parts(i, layer) for i, layer in enumerate(_decoder(model).layers)]


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
    """The final RMSNorm applied before the unembedding."""
    return _decoder(model).norm


def unembedding(model: nn.Module) -> torch.Tensor:
    """W_U, shape [vocab, hidden]."""
    return model.get_output_embeddings().weight


def num_heads(model: nn.Module) -> int:
    return int(model.config.num_attention_heads)


def head_dim(parts: LayerParts, n_heads: int) -> int:
    """Width of one head's slice of the o_proj input (v_head_dim for DeepSeek)."""
    return parts.o_proj.in_features // n_heads


def top_k(model: nn.Module) -> int:
    """Number of routed experts selected per token."""
    require_moe(model, "top_k")
    return int(model.config.num_experts_per_tok)


def num_experts(model: nn.Module) -> int:
    """Number of routed experts per MoE layer."""
    require_moe(model, "num_experts")
    return next(p.experts.gate_up_proj.shape[0] for p in layers(model) if p.is_moe)


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
            top_k=int(model.config.num_experts_per_tok),
            expert_width=moe[0].experts.down_proj.shape[-1],
            shared_expert=has_shared_expert(model),
        )
    return info
