"""Log-probability-increase (LPI) attribution at every level: layer, head, expert and expert neuron.

All scores read a residual-stream vector x through the final norm with its scale frozen to that of the final
hidden state h_L at the same (last) position:

    log p(w | x) = log_softmax(W_U (gamma * x * s))[w],   s = 1 / sqrt(mean(h_L^2) + eps)

so log p(w | h_L) is exactly the model's own log-probability. Class quirks are folded into W_U and a bias
(:class:`Readout`): gamma = 1 + w for (1 + w) RMSNorms; a LayerNorm's centring C = I - 11^T/H and bias beta
give W = W_U diag(gamma) C and b = W_U beta (s then uses the centred h_L); a logits divisor d (Granite's
logits_scaling) divides both; an lm_head bias is added. With u_l = resid_mid[l] (after attention):

    AttnGain_l     = log p(w | h_{l-1} + A_l)       - log p(w | h_{l-1})
    HeadGain_{l,h} = log p(w | h_{l-1} + A_{l,h})   - log p(w | h_{l-1})
    FFNGain_l      = log p(w | u_l + F_l)           - log p(w | u_l)
    ExpertGain_l,j = log p(w | u_l + g_j E_j(x))    - log p(w | u_l)
    Imp(l, j, k)   = log p(w | u_l + g_j m_{j,k} W_down[:, k]) - log p(w | u_l)

g_j is the factor the model applies to expert j's output (``expert_scale``: the routing weight, renormalised
only where the model renormalises, times any residual multiplier; Llama 4 scales the expert's input instead,
so there g_j = 1 and E_j is computed on the scaled input; the ``gate`` column is always the routing weight); the shared expert (expert id -1) uses its sigmoid gate, and a dense layer's FFN is
expert -1 with g = 1. Neuron scores use the identity Imp = d_w - logsumexp_v(lp_v + d_v) with
d = s * g * m_k * P[:, k] and P = (W_U * gamma) @ W_down: each expert's vocabulary projection P is computed once
per batch (in blocks of neurons) and shared by every prompt that selected it. The log-sum-exp over the vocabulary
runs in one fused kernel (:func:`fused_logsumexp`, compiled by torch.compile) or on the plain reference path
(:func:`shifted_logsumexp`); neither materialises [prompts x neurons x vocab].

Weights are read through :func:`moescope.offload.materialized`, so models with offloaded weights work too.
An expert's output bias (gpt-oss) counts in its ExpertGain but belongs to no neuron.

The lens is a named choice (``lens``, :data:`LENSES`); every gain above keeps its form, only the scale s and the
log-probability read change:

    'final'        (default: the paper's and its group's code) s = s_L, the final state's scale, for every layer.
    'local'        each component is read at the scale of the residual it writes into: attention and heads of
                   layer l at s(u_l) = 1 / sqrt(mean(u_l^2) + eps), the FFN, experts and neurons of layer l at
                   s(h_l), h_l = resid_post[l]. Then the first term of FFNGain_l is the plain logit lens of h_l
                   (log p(w | norm(h_l)) through the model's own final norm and head), that of AttnGain_l the lens of
                   u_l, and the last layer's FFN, expert and neuron scores equal the 'final' ones (h_{L-1} = h_L).
    'contrastive'  the final scale, and the target read against the relation's other objects C (their first
                   tokens; C holds the gold w): log p_C(w | x) = z_w(x) - logsumexp_{c in C} z_c(x), z the lens's
                   logits. A component then gains only by moving the gold above the relation's other answers,
                   not by moving mass from the rest of the vocabulary. Neurons: Imp = d_w - (lse_C(z_c + d_c) -
                   lse_C(z_c)) with d_c = a_k P[c, k].

With the 'final' lens the layer gains telescope: sum_l (AttnGain_l + FFNGain_l) = log p(w | h_L) - log p(w | h_{-1}
read at s_L), h_{-1} the embeddings; so do the 'contrastive' ones (log p_C in place of log p); with 'local' they do
not (each difference is read at its own scale).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import arch, data, metrics
from ..prompts import context_length, encode, object_first_token
from ..capture import LayerCapture, Trace, capture
from ..offload import input_device, materialized

TARGETS = ("gold", "top1")
#: Named lenses (see the module docstring): the paper's frozen final scale, each layer's own scale, the contrastive
#: target. 'final' is the default everywhere.
LENSES = ("final", "local", "contrastive")
KERNELS = ("auto", "fused", "plain")
#: Work (prompts x neurons x vocabulary entries) of one scoring call from which kernel='auto' uses the fused
#: kernel; smaller calls take the plain path (compiling costs seconds, once per process).
FUSED_MIN_WORK = 2**24
#: Elements of one block of an expert's vocabulary projection [neurons, vocab] (the memory bound of scoring).
PROJECTION_BLOCK = 2**26
#: Largest change of one logit by one neuron (|a P|, nats) for which the fused kernel's exp cannot overflow;
#: rows beyond it are scored on the plain path.
FUSED_MAX_REACH = 60.0


class Readout:
    """Frozen-scale logit lens: log p(w | x) = log_softmax(W (x * s) + b)[w] with W = W_U diag(gamma) (C) / d."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        norm, head = arch.final_norm(model), model.get_output_embeddings()
        kind = arch.family(model).final_norm
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        with materialized(norm, head):
            w_u = arch.unembedding(model).to(dtype)
            gamma = norm.weight.to(w_u.device, dtype)
            self.w = w_u * (gamma + 1 if kind == "rms_offset" else gamma)
            self.centred = kind == "layer"
            terms = [b.to(dtype).clone() for b in (getattr(head, "bias", None),) if b is not None]
            if self.centred:
                self.w = self.w - self.w.mean(dim=1, keepdim=True)
                if getattr(norm, "bias", None) is not None:
                    terms.append(w_u @ norm.bias.to(w_u.device, dtype))
        self.bias = sum(terms) if terms else None
        divisor = arch.logits_divisor(model)
        if divisor != 1.0:
            self.w = self.w / divisor
            self.bias = None if self.bias is None else self.bias / divisor
        self.dtype = dtype
        self.device = self.w.device
        self._weights = {dtype: self.w}

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """gamma * W_U [V, H] in ``dtype`` (cast once, kept for the readout's lifetime)."""
        if dtype not in self._weights:
            self._weights[dtype] = self.w.to(dtype)
        return self._weights[dtype]

    def scale(self, resid_final: torch.Tensor) -> torch.Tensor:
        """s = 1 / sqrt(mean(h_L^2) + eps) per row (h_L centred first for a LayerNorm)."""
        h = resid_final.to(self.dtype)
        if self.centred:
            h = h - h.mean(-1, keepdim=True)
        return torch.rsqrt(h.pow(2).mean(-1) + self.eps)

    def log_probs(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """log_softmax over the vocabulary for each row of x [..., H] (scale broadcast over the last dim)."""
        logits = (x.to(self.dtype) * scale.unsqueeze(-1)) @ self.w.T
        if self.bias is not None:
            logits = logits + self.bias
        return torch.log_softmax(logits, dim=-1)

    def logprob(self, x: torch.Tensor, scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(target | x) for x [..., H]; scale and target broadcast over the leading dims."""
        lp = self.log_probs(x, scale)
        return lp.gather(-1, target.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def _check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"non-finite {what}: overflow in the attribution (try dtype=torch.float32)")
    return t


def shifted_logsumexp(lp: torch.Tensor, a: torch.Tensor, proj: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """out[g, k] = logsumexp_v(lp[g, v] + a[g, k] * proj[v, k]) for lp [G,V], a [G,K], proj [V,K].

    The plain reference path: an online (running-max) log-sum-exp over vocabulary chunks; memory is G*chunk*K
    (default: about 2^26 elements), never G*V*K.
    """
    chunk = chunk or max(1, 2**26 // (a.shape[0] * a.shape[1]))
    m = torch.full(a.shape, -torch.inf, dtype=lp.dtype, device=lp.device)
    total = torch.zeros_like(m)
    for start in range(0, lp.shape[1], chunk):
        z = lp[:, start : start + chunk, None] + a[:, None, :] * proj[None, start : start + chunk, :].to(a.dtype)
        new_m = torch.maximum(m, z.amax(dim=1))
        total = total * torch.exp(m - new_m) + torch.exp(z - new_m[:, None, :]).sum(dim=1)
        m = new_m
    return m + torch.log(total)


def lse_increment(p: torch.Tensor, a_t: torch.Tensor, proj_t: torch.Tensor) -> torch.Tensor:
    """f[k, g] = sum_v p[g, v] * (exp(a_t[k, g] * proj_t[k, v]) - 1) for p [G,V], a_t [K,G], proj_t [K,V].

    With p = exp(lp) (so sum_v p = 1): logsumexp_v(lp + a P) = log(sum_v p e^{a P}) = log1p(f). Summing the small
    terms p (e^{aP} - 1) instead of p e^{aP} (all near 1) keeps float32 exact to ~1e-7, and no running max is
    needed while |a P| stays below the exp overflow (FUSED_MAX_REACH). Compiled, this is one kernel: one pass
    over proj_t per prompt, vectorised along the vocabulary, with nothing of size G*K*V written to memory.
    """
    return (p[None, :, :] * (torch.exp(a_t[:, :, None] * proj_t[:, None, :].to(a_t.dtype)) - 1)).sum(dim=-1)


@functools.cache
def _compiled_increment():
    # cpp.simdlen=256: AVX2 code on every x86 CPU, like the pinned ATen kernels (see moescope.numerics).
    return torch.compile(lse_increment, dynamic=True, options={"cpp.simdlen": 256})


_fused_failure: list[str] = []


def fused_logsumexp(lp: torch.Tensor, a: torch.Tensor, proj_t: torch.Tensor) -> torch.Tensor:
    """out[g, k] = logsumexp_v(lp[g, v] + a[g, k] * proj_t[k, v]) = log1p(f) by the compiled :func:`lse_increment`.

    ``lp`` must be log-probabilities. The float32 rounding of their own normalisation (sum_v p = 1 + ~1e-6 over a
    large vocabulary) cancels: log1p(f) differs from lse(lp + aP) - lse(lp) = log1p(f / sum_v p) by ~1e-6 f.
    Rows where some neuron moves a logit by more than FUSED_MAX_REACH nats are computed on the plain path instead.
    If compilation fails (no C++ compiler / Triton), everything falls back to the plain path with a warning.
    """
    proj = proj_t.T
    if _fused_failure:
        return shifted_logsumexp(lp, a, proj)
    reach = a.abs() * proj_t.abs().amax(dim=1).to(a.dtype)
    safe = (reach <= FUSED_MAX_REACH).all(dim=1)
    try:
        f = _compiled_increment()(lp.exp(), torch.where(safe[:, None], a, 0.0).T.contiguous(), proj_t)
    except Exception as err:  # noqa: BLE001 - any compiler failure: keep working, on the plain path
        _fused_failure.append(f"{type(err).__name__}: {err}")
        warnings.warn(f"fused neuron kernel unavailable ({_fused_failure[0][:200]}); using the plain path")
        return shifted_logsumexp(lp, a, proj)
    out = torch.log1p(f.T)
    if not safe.all():
        rows = torch.where(~safe)[0]
        out[rows] = shifted_logsumexp(lp[rows], a[rows], proj)
    return out


def neuron_scores(lp: torch.Tensor, target: torch.Tensor, a: torch.Tensor, proj_t: torch.Tensor,
                  kernel: str = "auto") -> torch.Tensor:
    """Imp[g, k] = a[g,k] P[w_g, k] - logsumexp_v(lp[g,v] + a[g,k] P[v,k]) with proj_t = P^T [K, V] and lp the
    base log-probs (logsumexp(lp) = 0). ``kernel``: 'fused', 'plain', or 'auto' (fused for large calls)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    d_target = a * proj_t[:, target].T.to(a.dtype)
    fused = kernel == "fused" or (kernel == "auto" and a.numel() * proj_t.shape[1] >= FUSED_MIN_WORK)
    lse = fused_logsumexp(lp, a, proj_t) if fused else shifted_logsumexp(lp, a, proj_t.T)
    return _check_finite(d_target - lse, "neuron scores")


def unit_scores(readout: Readout, w_down: torch.Tensor, lp: torch.Tensor, target: torch.Tensor, a: torch.Tensor,
                kernel: str = "auto", projection_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Imp [G, I] of every neuron of one expert (down projection ``w_down`` [H, I]) for G prompts.

    P^T = W_down^T (gamma W_U)^T is computed in blocks of neurons (PROJECTION_BLOCK elements each) in
    ``projection_dtype`` (default: the readout's; bf16 on a GPU halves the time, see docs/large_models.md).
    """
    dtype = projection_dtype or readout.dtype
    w = readout.weight(dtype)
    block = max(1, PROJECTION_BLOCK // w.shape[0])
    out = []
    for k0 in range(0, w_down.shape[1], block):
        proj_t = w_down[:, k0 : k0 + block].T.to(readout.device, dtype) @ w.T
        out.append(neuron_scores(lp, target, a[:, k0 : k0 + block], proj_t, kernel))
    return torch.cat(out, dim=1)


@dataclass
class Attribution:
    """Tidy result tables (one row per sample x unit). Layers are 0-indexed; expert -1 is the shared/dense FFN."""

    samples: pd.DataFrame
    layers: pd.DataFrame
    heads: pd.DataFrame
    experts: pd.DataFrame
    neurons: pd.DataFrame | None

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"samples": self.samples, "layers": self.layers, "heads": self.heads, "experts": self.experts}
        return out | ({"neurons": self.neurons} if self.neurons is not None else {})


class _Scorer:
    """Scores of one batch (one captured trace) against its targets, through one lens (:data:`LENSES`).

    ``candidates`` [B, C] (contrastive lens only): each prompt's candidate token ids, gold in column 0, padded
    with -1.
    """

    def __init__(self, readout: Readout, trace: Trace, targets: torch.Tensor, lens: str = "final",
                 candidates: torch.Tensor | None = None):
        self.r, self.tr, self.w = readout, on_device(trace, readout.device), targets.to(readout.device)
        self.s = readout.scale(self.tr.resid_final)
        self.lens = lens
        self.cand = None if candidates is None else candidates.to(readout.device)

    def scale(self, written: torch.Tensor) -> torch.Tensor:
        """The lens's scale per row: s_L, or (lens 'local') that of ``written``, the residual the component writes
        into (resid_mid for attention, resid_post for the FFN)."""
        return self.r.scale(written) if self.lens == "local" else self.s

    def lp(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """log p(w_b | x[b, ...]) for x [B, ..., H] at scale ``s`` [B] (default s_L); contrastive lens: log p_C."""
        extra = x.dim() - 2
        s = (self.s if s is None else s).view(-1, *[1] * extra)
        if self.lens != "contrastive":
            return self.r.logprob(x, s, self.w.view(-1, *[1] * extra))
        lp = self.r.log_probs(x, s)
        cand = self.cand.view(self.cand.shape[0], *[1] * extra, -1).expand(*lp.shape[:-1], -1)
        z = lp.gather(-1, cand.clamp(min=0)).masked_fill(cand < 0, -torch.inf)
        return z[..., 0] - torch.logsumexp(z, dim=-1)

    def gain(self, base: torch.Tensor, delta: torch.Tensor, written: torch.Tensor | None = None) -> torch.Tensor:
        """log p(w | base + delta) - log p(w | base); delta [B, ..., H] broadcast against base [B, H], both read at
        the lens's scale (:meth:`scale` of ``written``, the residual the component writes into).

        The sum is taken in the readout's precision: in a bf16 model's own precision its rounding alone moves
        log-probabilities by ~5e-4.
        """
        extra = delta.dim() - 2
        s = self.s if written is None else self.scale(written)
        base_ = self.up(base.view(base.shape[0], *[1] * extra, base.shape[-1]))
        return self.lp(base_ + self.up(delta), s) - self.lp(base_, s)

    def up(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the readout's precision."""
        return t.to(self.r.dtype)


def on_device(capture_: Trace | LayerCapture, device: torch.device) -> Trace | LayerCapture:
    """The capture with every tensor on ``device`` (captures of a model spread over devices are per layer)."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if dataclasses.is_dataclass(v):
            return on_device(v, device)
        return [move(x) for x in v] if isinstance(v, list) else v

    fields = {f.name: move(getattr(capture_, f.name)) for f in dataclasses.fields(capture_)}
    return dataclasses.replace(capture_, **fields)


def _layer_rows(sc: _Scorer, ids: list[int]) -> tuple[list[dict], list[dict]]:
    layers, heads = [], []
    for l, c in enumerate(sc.tr.layers):
        attn = sc.gain(c.resid_pre, c.attn_out, c.resid_mid).tolist()
        ffn = sc.gain(c.resid_mid, c.mlp_out, c.resid_post).tolist()
        head = sc.gain(c.resid_pre, c.head_out, c.resid_mid).tolist()
        for b, sid in enumerate(ids):
            layers.append({"sample_id": sid, "layer": l, "attn_gain": attn[b], "ffn_gain": ffn[b]})
            heads.extend({"sample_id": sid, "layer": l, "head": h, "gain": g} for h, g in enumerate(head[b]))
    return layers, heads


def _expert_rows(sc: _Scorer, ids: list[int]) -> list[dict]:
    rows = []
    for l, c in enumerate(sc.tr.layers):
        if c.topk_index is not None:
            gains = sc.gain(c.resid_mid, c.expert_scale.unsqueeze(-1) * c.expert_out, c.resid_post).tolist()
            for b, sid in enumerate(ids):
                rows.extend({"sample_id": sid, "layer": l, "expert": int(e), "gate": float(g), "gain": gn}
                            for e, g, gn in zip(c.topk_index[b].tolist(), c.topk_weight[b].tolist(), gains[b]))
        if c.ffn_out is not None:
            gains = sc.gain(c.resid_mid, sc.up(c.ffn_gate).unsqueeze(-1) * sc.up(c.ffn_out), c.resid_post).tolist()
            rows.extend({"sample_id": sid, "layer": l, "expert": -1, "gate": float(c.ffn_gate[b]), "gain": gains[b]}
                        for b, sid in enumerate(ids))
    return rows


NEURON_COLUMNS = ("sample_id", "layer", "expert", "neuron", "coef", "score")


def _neuron_rows(sid: torch.Tensor, layer: int, expert: int, coef: torch.Tensor, score: torch.Tensor) -> tuple:
    """The neuron rows of one unit (prompt-major), column by column, on the scores' device."""
    g, n = coef.shape
    dev = score.device
    full = lambda v: torch.full((g * n,), v, device=dev)  # noqa: E731
    return (sid.to(dev).repeat_interleave(n), full(layer), full(expert), torch.arange(n, device=dev).repeat(g),
            coef.reshape(-1), score.reshape(-1))


def _neuron_frame(units: list[tuple]) -> pd.DataFrame:
    """One table of every unit's neuron rows: columns concatenated where they were computed, copied once."""
    return pd.DataFrame({name: torch.cat(col).cpu().numpy() for name, col in zip(NEURON_COLUMNS, zip(*units))})


def contrastive_unit_scores(readout: Readout, w_down: torch.Tensor, lp: torch.Tensor, cand: torch.Tensor,
                            a: torch.Tensor) -> torch.Tensor:
    """Contrastive Imp [G, I] of every neuron of one expert: d_w - (lse_C(lp_c + d_c) - lse_C(lp_c)) with
    d[g, c, k] = a[g, k] * P[cand[g, c], k], P = (gamma W_U) W_down; ``cand`` [G, C] has the gold in column 0 and
    -1 as padding. Only the candidates' rows of P are formed ([G, C, I], never [G, V, I])."""
    w = readout.weight(readout.dtype)
    valid = cand >= 0
    proj = w[cand.clamp(min=0)] @ w_down.to(readout.device, readout.dtype)  # [G, C, I]
    z = lp.gather(1, cand.clamp(min=0)).masked_fill(~valid, -torch.inf)
    d = a[:, None, :] * proj
    lse = torch.logsumexp((z[:, :, None] + d).masked_fill(~valid[:, :, None], -torch.inf), dim=1)
    return _check_finite(d[:, 0, :] - (lse - torch.logsumexp(z, dim=1)[:, None]), "neuron scores")


def _layer_neurons(sc: _Scorer, l: int, c: LayerCapture, parts: arch.LayerParts, ids: torch.Tensor,
                   kernel: str, projection_dtype: torch.dtype | None) -> list[tuple]:
    """Neuron scores of every selected expert and the shared/dense FFN of layer l, one projection per expert."""
    r, out = sc.r, []
    s = sc.scale(c.resid_post)
    base_lp = r.log_probs(c.resid_mid, s)

    def score(w_down, rows, a):
        if sc.lens == "contrastive":
            return contrastive_unit_scores(r, w_down, base_lp[rows], sc.cand[rows], a)
        return unit_scores(r, w_down, base_lp[rows], sc.w[rows], a, kernel, projection_dtype)

    with materialized(parts.experts, parts.ffn):
        if c.topk_index is not None:
            for e in c.topk_index.unique().tolist():
                rows, slots = torch.where(c.topk_index == e)
                coef = c.expert_coef[rows, slots].to(r.dtype)
                a = s[rows, None] * c.expert_scale[rows, slots, None].to(r.dtype) * coef
                w_down = arch.expert_down(parts, e)
                out.append(_neuron_rows(ids[rows.cpu()], l, e, coef, score(w_down, rows, a)))
        if c.ffn_out is not None:
            coef = c.ffn_coef.to(r.dtype)
            a = s[:, None] * c.ffn_gate[:, None].to(r.dtype) * coef
            every = torch.arange(len(coef), device=coef.device)
            out.append(_neuron_rows(ids, l, -1, coef, score(arch.ffn_down(parts).weight, every, a)))
    return out


def _top_neurons(frame: pd.DataFrame, top: int | None) -> pd.DataFrame:
    if top is None:
        return frame
    return frame.sort_values("score", ascending=False, kind="stable").groupby("sample_id").head(top)


def candidate_ids(tokenizer, prompts: Sequence[str], targets: Sequence[int],
                  candidates: Sequence[Sequence[str]]) -> torch.Tensor:
    """[B, C] first-token ids of each prompt's candidate objects, the target in column 0, distinct, -1 padded."""
    rows = []
    for prompt, t, objs in zip(prompts, targets, candidates):
        ids = [int(t)] + [object_first_token(tokenizer, prompt, o) for o in objs]
        rows.append(list(dict.fromkeys(ids)))
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows])


@torch.no_grad()
def attribute(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    objects: Sequence[str] | None = None,
    target: str = "gold",
    neurons: bool = True,
    top_neurons: int | None = None,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    kernel: str = "auto",
    projection_dtype: torch.dtype | None = None,
    lens: str = "final",
    candidates: Sequence[Sequence[str]] | None = None,
) -> Attribution:
    """LPI scores of every layer, head, selected expert and (with ``neurons``) expert neuron, per prompt.

    ``target='gold'`` (default) scores the first token of each object: the fact the paper's HIT@10/MRR
    measure. ``target='top1'`` scores the model's own prediction, as the authors' released notebook does.
    Scores are computed in ``dtype``; ``kernel`` and ``projection_dtype`` choose how neuron scores are computed
    (:func:`neuron_scores`, :func:`unit_scores`). Prompts in one batch share each expert's vocabulary projection,
    so larger ``batch_size`` is faster per prompt.

    ``lens`` (:data:`LENSES`, formulas in the module docstring): 'final' (the paper's, default), 'local' or
    'contrastive'; the contrastive lens needs ``candidates``, per prompt the objects the gold is read against (the
    relation's objects; the gold's own first token is always among them, duplicates of it are dropped).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if target == "gold" and objects is None:
        raise ValueError("target='gold' needs the objects; pass objects or use target='top1'")
    if lens not in LENSES:
        raise ValueError(f"lens must be one of {LENSES}, not {lens!r}")
    if lens == "contrastive" and candidates is None:
        raise ValueError("lens='contrastive' needs the candidates: per prompt, the objects to read the gold against")
    enc = encode(tokenizer, prompts, objects, context_length(model))
    readout, parts = Readout(model, dtype), arch.layers(model)
    device = input_device(model)
    samples, layers, heads, experts, neuron_frames = [], [], [], [], []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="attribute", disable=not progress or len(starts) < 2):
        sl = slice(start, start + batch_size)
        ids = list(range(start, min(start + batch_size, len(prompts))))
        trace = capture(model, enc.input_ids[sl].to(device), enc.attention_mask[sl].to(device))
        gold = enc.target_ids[sl].to(trace.logits.device)
        w = gold if target == "gold" else trace.logits.argmax(-1)
        cand = candidate_ids(tokenizer, prompts[sl], w.tolist(), candidates[sl]) if lens == "contrastive" else None
        sc = _Scorer(readout, trace, w, lens, cand)
        rank = metrics.ranks(trace.logits, w)
        logp = torch.log_softmax(trace.logits, -1).gather(1, w[:, None]).squeeze(1)
        for b, sid in enumerate(ids):
            samples.append({"sample_id": sid, "prompt": prompts[sid], "target": tokenizer.convert_ids_to_tokens(int(w[b])),
                            "target_token_id": int(w[b]), "rank": int(rank[b]), "logprob": float(logp[b])})
        lrows, hrows = _layer_rows(sc, ids)
        layers += lrows
        heads += hrows
        experts += _expert_rows(sc, ids)
        if neurons:
            sid_t = torch.tensor(ids)
            units = [u for l, c in enumerate(sc.tr.layers)
                     for u in _layer_neurons(sc, l, c, parts[l], sid_t, kernel, projection_dtype)]
            neuron_frames.append(_top_neurons(_neuron_frame(units), top_neurons))
    return Attribution(
        samples=pd.DataFrame(samples), layers=pd.DataFrame(layers), heads=pd.DataFrame(heads),
        experts=pd.DataFrame(experts),
        neurons=pd.concat(neuron_frames, ignore_index=True) if neurons else None,
    )


def attribute_relations(
    model: nn.Module,
    tokenizer,
    relations: Sequence[data.Relation],
    n_samples: int | None = None,
    templates: data.Templates = data.HELD_OUT,
    **kwargs,
) -> Attribution:
    """:func:`attribute` over ``n_samples`` facts of each relation, stratified by object (None: all), on the
    held-out templates ``templates`` (:func:`moescope.data.prompts_frame`).

    The samples table gains relation, subject and object columns; sample ids run over all relations. With
    ``lens='contrastive'`` the candidates are, per prompt, the distinct objects of its relation among these facts
    (:func:`relation_candidates`).
    """
    facts = data.prompts_frame(relations, n_samples, templates)
    if kwargs.get("lens") == "contrastive" and kwargs.get("candidates") is None:
        kwargs["candidates"] = relation_candidates(facts)
    attr = attribute(model, tokenizer, list(facts.prompt), list(facts.object), **kwargs)
    attr.samples.insert(1, "relation", facts.relation.values)
    attr.samples.insert(2, "subject", facts.subject.values)
    attr.samples.insert(3, "object", facts.object.values)
    return attr


def relation_candidates(facts: pd.DataFrame) -> list[list[str]]:
    """Per prompt (row of a facts table with relation and object columns), the distinct objects of its relation."""
    objects = {r: list(dict.fromkeys(g.object)) for r, g in facts.groupby("relation", sort=False)}
    return [objects[r] for r in facts.relation]
