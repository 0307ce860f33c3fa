"""Exact identities of the attribution, checked on the prompts a notebook runs (not only in the test suite).

Telescoping: with u_l = h_{l-1} + A_l and h_l = u_l + F_l, the layer gains of one prompt sum to
sum_l (AttnGain_l + FFNGain_l) = log p(w | h_L) - log p(w | h_0) under the same frozen final-norm scale, where
h_0 is the embedding and log p(w | h_L) the model's own log-probability.
"""
from __future__ import annotations

import pandas as pd
import torch

from ..capture import capture
from ..models import LoadedModel
from ..prompts import context_length, encode
from .lpi import Readout


@torch.no_grad()
def telescoping(lm: LoadedModel, fr: pd.DataFrame, layers: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per prompt of ``fr``: the summed layer gains (``layers`` of an attribution of ``fr``, with its ``samples``),
    log p(w | h_L) - log p(w | h_0), and |their difference|."""
    enc = encode(lm.tokenizer, list(fr.prompt), list(fr.object), context_length(lm.model))
    tr = capture(lm.model, enc.input_ids.to(lm.device), enc.attention_mask.to(lm.device))
    ro = Readout(lm.model)
    lp_embed = ro.logprob(tr.embed, ro.scale(tr.resid_final), enc.target_ids.to(lm.device)).cpu().numpy()
    summed = layers.groupby("sample_id")[["attn_gain", "ffn_gain"]].sum().sum(axis=1).to_numpy()
    expected = samples.logprob.to_numpy() - lp_embed
    return pd.DataFrame({"sample_id": samples.sample_id, "sum_of_gains": summed, "expected": expected,
                         "error": abs(summed - expected)})
