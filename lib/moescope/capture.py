"""Capture every intermediate quantity of a forward pass at one position per sequence, with forward hooks.

Names follow the residual stream (batch-first, one chosen position ``pos[b]`` per row b)::

    resid_pre[l]  --attn-->  resid_mid[l] = resid_pre[l] + attn_out[l]
                  --mlp--->  resid_post[l] = resid_mid[l] + mlp_out[l]
    attn_out[l]  = sum_h head_out[l][:, h] + o_proj bias
    mlp_in[l]    = post_attention_layernorm(resid_mid[l])
    mlp_out[l]   = sum_j topk_weight[l][:, j] * expert_out[l][:, j] + ffn_gate[l] * ffn_out[l]
    expert_out[l][:, j] = expert_coef[l][:, j] @ W_down[topk_index[l][:, j]].T,  coef = act(gate(x)) * up(x)

``ffn_*`` is the always-on MLP: the shared expert of an MoE layer or the FFN of a dense layer (gate 1 when
the model has no shared-expert gate). Expert coefficients and outputs are recomputed from the fused
``gate_up_proj``/``down_proj`` weights at the captured positions, which reproduces the experts module exactly.
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


def mlp_coefficients(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Activation coefficients act(gate_proj x) * up_proj x of a gate/up/down MLP."""
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def expert_coefficients(experts: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """coef[b, j] = act(g) * u with (g, u) = gate_up_proj[index[b, j]] @ x[b]; shape [B, k, I]."""
    out = x.new_empty(*index.shape, experts.down_proj.shape[-1])
    with materialized(experts):
        for e in index.unique().tolist():
            rows, slots = torch.where(index == e)
            gate, up = F.linear(x[rows], experts.gate_up_proj[e]).chunk(2, dim=-1)
            out[rows, slots] = experts.act_fn(gate) * up
    return out


def expert_outputs(experts: nn.Module, coef: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, j] = down_proj[index[b, j]] @ coef[b, j]; shape [B, k, H]."""
    out = coef.new_empty(*index.shape, experts.down_proj.shape[1])
    with materialized(experts):
        for e in index.unique().tolist():
            rows, slots = torch.where(index == e)
            out[rows, slots] = F.linear(coef[rows, slots], experts.down_proj[e])
    return out


class _Recorder:
    """Forward hooks that keep each named tensor at the chosen positions."""

    def __init__(self, positions: torch.Tensor, shape: tuple[int, int]):
        self.pos, self.shape, self.store = positions, shape, {}

    def output(self, name: str, take=lambda o: o):
        def hook(module, args, output):
            self.store[name] = _gather(take(output), self.pos, self.shape).detach()

        return hook

    def input(self, name: str):
        def hook(module, args):
            self.store[name] = _gather(args[0], self.pos, self.shape).detach()

        return hook

    def router(self, l: int):
        def hook(module, args, output):
            for name, t in zip(("router_logits", "topk_weight", "topk_index"), output):
                self.store[f"{l}.{name}"] = _gather(t, self.pos, self.shape).detach()

        return hook


def _hooks(parts: list[arch.LayerParts], rec: _Recorder):
    for p in parts:
        l = p.index
        yield p.layer, "pre", rec.input(f"{l}.resid_pre")
        yield p.attn, "forward", rec.output(f"{l}.attn_out", lambda o: o[0])
        yield p.o_proj, "pre", rec.input(f"{l}.z")
        yield p.mlp, "pre", rec.input(f"{l}.mlp_in")
        yield p.mlp, "forward", rec.output(f"{l}.mlp_out")
        yield p.layer, "forward", rec.output(f"{l}.resid_post", lambda o: o[0] if isinstance(o, tuple) else o)
        if p.is_moe:
            yield p.router, "forward", rec.router(l)


def _layer_capture(p: arch.LayerParts, s: dict, n_heads: int) -> LayerCapture:
    l = p.index
    z = s[f"{l}.z"]
    heads = z.view(z.shape[0], n_heads, -1)
    with materialized(p.o_proj):
        w_o = p.o_proj.weight
        head_out = torch.einsum("bhd,ohd->bho", heads, w_o.view(w_o.shape[0], n_heads, -1))
    cap = LayerCapture(
        resid_pre=s[f"{l}.resid_pre"], attn_out=s[f"{l}.attn_out"], head_out=head_out,
        resid_mid=s[f"{l}.resid_pre"] + s[f"{l}.attn_out"], mlp_in=s[f"{l}.mlp_in"],
        mlp_out=s[f"{l}.mlp_out"], resid_post=s[f"{l}.resid_post"],
    )
    x = cap.mlp_in
    with torch.no_grad():
        if p.is_moe:
            cap.router_logits, cap.topk_weight, cap.topk_index = (s[f"{l}.{n}"] for n in ("router_logits", "topk_weight", "topk_index"))
            cap.router_probs = routing.probabilities(p.router, cap.router_logits)
            cap.expert_coef = expert_coefficients(p.experts, x, cap.topk_index)
            cap.expert_out = expert_outputs(p.experts, cap.expert_coef, cap.topk_index)
        if p.ffn is not None:
            cap.ffn_coef = mlp_coefficients(p.ffn, x)
            cap.ffn_out = p.ffn.down_proj(cap.ffn_coef)
            gate = torch.sigmoid(p.ffn_gate(x)).squeeze(-1) if p.ffn_gate is not None else torch.ones_like(x[:, 0])
            cap.ffn_gate = gate
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
    rec = _Recorder(positions, tuple(input_ids.shape))
    embed = model.get_input_embeddings()
    with hooked([(embed, "forward", rec.output("embed")), (arch.final_norm(model), "pre", rec.input("final")), *_hooks(parts, rec)]):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=attentions, use_cache=False)
    n_heads = arch.num_heads(model)
    layers = [_layer_capture(p, rec.store, n_heads) for p in parts]
    pattern = None
    if attentions:
        if not out.attentions:
            raise arch.ArchitectureError("attention patterns need attn_implementation='eager'")
        rows = torch.arange(batch, device=input_ids.device)
        pattern = [a[rows, :, positions.to(a.device)].float() for a in out.attentions]
    return Trace(
        positions=positions, embed=rec.store["embed"], layers=layers, resid_final=rec.store["final"],
        logits=at_least_fp32(_gather(out.logits, positions, rec.shape)), attentions=pattern,
    )
