"""Capture every intermediate quantity of a forward pass at one position per sequence, with forward hooks.

Names follow the residual stream (batch-first, one chosen position ``pos[b]`` per row b)::

    embed         = resid_pre[0]  (the input of layer 0: token embeddings times any embedding multiplier)
    resid_pre[l]  --attn-->  resid_mid[l] = resid_pre[l] + attn_out[l]
                  --mlp--->  resid_post[l] = resid_mid[l] + mlp_out[l]
    attn_out[l]  = sum_h head_out[l][:, h] + attn_bias[l]          (attn_bias: o_proj bias, or None)
    mlp_in[l]    = post_attention_layernorm(resid_mid[l])
    mlp_out[l]   = sum_j expert_scale[l][:, j] * expert_out[l][:, j] + ffn_gate[l] * ffn_out[l]
    expert_out[l][:, j] = expert_coef[l][:, j] @ W_down[topk_index[l][:, j]].T (+ expert bias)

Every term is what the model adds to the residual stream: a class's residual multiplier m (Granite) is folded
into attn_out, head_out, attn_bias, mlp_out, expert_scale and ffn_gate. ``expert_scale`` is topk_weight * m
(times a block-level routed scaling, Laguna),
except for Llama 4, which scales each expert's *input* by its weight: there coef = act(g) * u of the scaled
input and expert_scale = 1. ``ffn_*`` is the always-on MLP: the shared expert of an MoE layer or the FFN of a
dense layer (gate 1 when the model has no shared-expert gate). Expert coefficients and outputs are recomputed
from the fused expert weights at the captured positions, which reproduces the experts module exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import arch, routing
from .hooks import hooked
from .offload import materialized


@dataclass
class LayerCapture:
    """Quantities of one layer at the captured positions; MoE-only fields are None for dense layers."""

    resid_pre: torch.Tensor
    attn_out: torch.Tensor
    head_out: torch.Tensor
    resid_mid: torch.Tensor
    mlp_in: torch.Tensor
    mlp_out: torch.Tensor
    resid_post: torch.Tensor
    router_logits: torch.Tensor | None = None
    router_probs: torch.Tensor | None = None
    topk_index: torch.Tensor | None = None
    topk_weight: torch.Tensor | None = None
    expert_coef: torch.Tensor | None = None
    expert_out: torch.Tensor | None = None
    expert_scale: torch.Tensor | None = None
    attn_bias: torch.Tensor | None = None
    ffn_coef: torch.Tensor | None = None
    ffn_gate: torch.Tensor | None = None
    ffn_out: torch.Tensor | None = None


@dataclass
class Trace:
    """A forward pass seen at ``positions``: embeddings, every layer, the final residual and the logits there."""

    positions: torch.Tensor
    embed: torch.Tensor
    layers: list[LayerCapture]
    resid_final: torch.Tensor
    logits: torch.Tensor
    attentions: list[torch.Tensor] | None = field(default=None)


def _gather(t: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The per-token vector at ``pos[b]`` of each sequence b; ``t`` is [B,S,D] or flattened [B*S,D]."""
    batch, seq = shape
    return t.reshape(batch, seq, -1)[torch.arange(batch, device=t.device), pos.to(t.device)]


def _act(mlp: nn.Module):
    return getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None) or mlp.activation


def mlp_coefficients(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Activation coefficients act(gate_proj x) * up_proj x of a gate/up/down MLP (Granite: one input_linear
    whose two halves are gate and up)."""
    if hasattr(mlp, "input_linear"):
        gate, up = mlp.input_linear(x).chunk(2, dim=-1)
        return _act(mlp)(gate) * up
    return _act(mlp)(mlp.gate_proj(x)) * mlp.up_proj(x)


def _gate_up(experts: nn.Module, x: torch.Tensor, e: int, kind: str) -> torch.Tensor:
    """act(g) * u for expert e: 'fused' gate_up_proj [E,2I,H] (halves), 'gpt_oss' [E,H,2I] + bias, interleaved,
    the module's own clamped SwiGLU, 'llama4' and 'transposed' (Aria) [E,H,2I] (halves)."""
    if kind == "fused":
        gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        return experts.act_fn(gate) * up
    if kind == "gpt_oss":
        return experts._apply_gate(x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e])
    gate, up = (x @ experts.gate_up_proj[e]).chunk(2, dim=-1)
    return up * experts.act_fn(gate)


def expert_coefficients(
    experts: nn.Module, x: torch.Tensor, index: torch.Tensor, kind: str = "fused", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """coef[b, j] = act(g) * u with (g, u) = gate_up_proj[index[b, j]] @ x[b]; shape [B, k, I].

    ``kind='llama4'`` needs ``weights``: Llama 4 feeds expert j the scaled input weights[b, j] * x[b].
    """
    width = experts.down_proj.shape[1 if kind in arch.TRANSPOSED_EXPERTS else -1]
    out = x.new_empty(*index.shape, width)
    with materialized(experts):
        for e in index.unique().tolist():
            rows, slots = torch.where(index == e)
            inp = x[rows] * weights[rows, slots, None].to(x.dtype) if kind == "llama4" else x[rows]
            out[rows, slots] = _gate_up(experts, inp, e, kind)
    return out


def expert_outputs(experts: nn.Module, coef: torch.Tensor, index: torch.Tensor, kind: str = "fused") -> torch.Tensor:
    """out[b, j] = down_proj[index[b, j]] @ coef[b, j] (+ its bias for gpt-oss); shape [B, k, H]."""
    transposed = kind in arch.TRANSPOSED_EXPERTS
    out = coef.new_empty(*index.shape, experts.down_proj.shape[-1 if transposed else 1])
    with materialized(experts):
        for e in index.unique().tolist():
            rows, slots = torch.where(index == e)
            if not transposed:
                out[rows, slots] = F.linear(coef[rows, slots], experts.down_proj[e])
            elif kind == "gpt_oss":
                out[rows, slots] = coef[rows, slots] @ experts.down_proj[e] + experts.down_proj_bias[e]
            else:
                out[rows, slots] = coef[rows, slots] @ experts.down_proj[e]
    return out


def _first(output):
    """A module's main output: the first element of a tuple (attention, gpt-oss and Llama 4 MoE blocks)."""
    return output[0] if isinstance(output, tuple) else output


class _Recorder:
    """Forward hooks that keep each named tensor at the chosen positions."""

    def __init__(self, positions: torch.Tensor, shape: tuple[int, int]):
        self.pos, self.shape, self.store = positions, shape, {}

    def output(self, name: str, take=_first):
        def hook(module, args, output):
            self.store[name] = _gather(take(output), self.pos, self.shape).detach()

        return hook

    def input(self, name: str):
        def hook(module, args):
            self.store[name] = _gather(args[0], self.pos, self.shape).detach()

        return hook

    def router(self, l: int):
        def hook(module, args, output):
            for name, t in zip(("router_logits", "topk_weight", "topk_index"), routing.decision(module, output)):
                self.store[f"{l}.{name}"] = _gather(t, self.pos, self.shape).detach()

        return hook


def _hooks(parts: list[arch.LayerParts], rec: _Recorder):
    for p in parts:
        l = p.index
        yield p.layer, "pre", rec.input(f"{l}.resid_pre")
        yield p.attn, "forward", rec.output(f"{l}.attn_out")
        yield p.o_proj, "pre", rec.input(f"{l}.z")
        yield p.mlp, "pre", rec.input(f"{l}.mlp_in")
        yield p.mlp, "forward", rec.output(f"{l}.mlp_out")
        if not p.ffn_in_block:
            yield p.ffn, "forward", rec.output(f"{l}.ffn_beside")
        yield p.layer, "forward", rec.output(f"{l}.resid_post")
        if p.is_moe:
            yield p.router, "forward", rec.router(l)


def _layer_capture(p: arch.LayerParts, s: dict) -> LayerCapture:
    l, m = p.index, p.residual_scale
    z = s[f"{l}.z"]
    heads = z.view(z.shape[0], p.n_heads, -1)
    with materialized(p.o_proj):
        w_o = p.o_proj.weight
        head_out = torch.einsum("bhd,ohd->bho", heads, w_o.view(w_o.shape[0], p.n_heads, -1))
        attn_bias = None if p.o_proj.bias is None else p.o_proj.bias.detach().clone()
    attn_out, mlp_out = s[f"{l}.attn_out"], s[f"{l}.mlp_out"]
    if not p.ffn_in_block:
        mlp_out = mlp_out + s[f"{l}.ffn_beside"]
    if m != 1.0:
        attn_out, head_out, mlp_out = m * attn_out, m * head_out, m * mlp_out
    cap = LayerCapture(
        resid_pre=s[f"{l}.resid_pre"], attn_out=attn_out, head_out=head_out,
        resid_mid=s[f"{l}.resid_pre"] + attn_out, mlp_in=s[f"{l}.mlp_in"],
        mlp_out=mlp_out, resid_post=s[f"{l}.resid_post"],
        attn_bias=None if attn_bias is None else m * attn_bias,
    )
    x = cap.mlp_in
    with torch.no_grad():
        if p.is_moe:
            cap.router_logits, cap.topk_weight, cap.topk_index = (s[f"{l}.{n}"] for n in ("router_logits", "topk_weight", "topk_index"))
            cap.router_probs = routing.probabilities(p.router, cap.router_logits)
            cap.expert_coef = expert_coefficients(p.experts, x, cap.topk_index, p.expert_kind, cap.topk_weight)
            cap.expert_out = expert_outputs(p.experts, cap.expert_coef, cap.topk_index, p.expert_kind)
            unit = p.expert_kind == "llama4"  # the weight already scaled the expert's input
            scale = m * p.routed_scale
            cap.expert_scale = torch.full_like(cap.topk_weight, scale) if unit else scale * cap.topk_weight
        if p.ffn is not None:
            cap.ffn_coef = mlp_coefficients(p.ffn, x)
            cap.ffn_out = arch.ffn_down(p)(cap.ffn_coef)
            gate = torch.sigmoid(p.ffn_gate(x)).squeeze(-1) if p.ffn_gate is not None else torch.ones_like(x[:, 0])
            cap.ffn_gate = m * gate
    return cap


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors to float32; keep float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return attention_mask.long().sum(dim=1) - 1


@torch.no_grad()
def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    attentions: bool = False,
) -> Trace:
    """Run ``model`` once and capture every named quantity at ``positions`` (default: each row's last token).

    Inputs are right-padded; ``attentions=True`` also returns the attention pattern rows at those positions
    (needs ``attn_implementation='eager'``).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if positions is None:
        positions = last_positions(attention_mask)
    parts = arch.layers(model)
    batch = input_ids.shape[0]
    if attentions and not arch.has_attention_everywhere(parts):
        raise arch.ArchitectureError(
            f"{type(model).__name__} mixes linear-attention or Mamba layers with attention: it has no attention "
            "pattern for every layer (run without attentions)")
    rec = _Recorder(positions, tuple(input_ids.shape))
    with hooked([(arch.final_norm(model), "pre", rec.input("final")), *_hooks(parts, rec)]):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=attentions, use_cache=False)
    layers = [_layer_capture(p, rec.store) for p in parts]
    pattern = None
    if attentions:
        if not out.attentions:
            raise arch.ArchitectureError("attention patterns need attn_implementation='eager'")
        rows = torch.arange(batch, device=input_ids.device)
        pattern = [a[rows, :, positions.to(a.device)].float() for a in out.attentions]
    return Trace(
        positions=positions, embed=rec.store["0.resid_pre"], layers=layers, resid_final=rec.store["final"],
        logits=at_least_fp32(_gather(out.logits, positions, rec.shape)), attentions=pattern,
    )
