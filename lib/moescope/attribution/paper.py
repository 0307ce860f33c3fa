"""The attribution paper's numbers as data (its claims, rules and controls are in :mod:`.claims`).

Li et al., "Decoding Knowledge Attribution in Mixture-of-Experts: A Framework of Basic-Refinement Collaboration
and Efficiency Analysis", ACL 2025 (arXiv 2505.24593). The tables are secondary transcriptions (papernotes.org);
see ``/work/shared/papers/attribution-acl2025.md`` for sources and for the readings of ambiguous claims.

Conventions: HIT@10 and MRR are fractions; gains are sums over layers of log-probability increases (nats);
peak gain position is a fraction of the depth (0.848 = 84.8%); per-layer efficiency = FFN gain / L.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: Paper model name -> (Hugging Face id, is MoE, layers, routed experts per MoE layer).
MODELS: dict[str, tuple[str, bool, int, int]] = {
    "Llama-7B": ("huggyllama/llama-7b", False, 32, 0),
    "Qwen1.5-7B": ("Qwen/Qwen1.5-7B", False, 32, 0),
    "Mistral-7B": ("mistralai/Mistral-7B-v0.1", False, 32, 0),
    "Qwen1.5-MoE": ("Qwen/Qwen1.5-MoE-A2.7B", True, 24, 60),
    "OLMoE": ("allenai/OLMoE-1B-7B-0924", True, 16, 64),
    "Mixtral-8x7B": ("mistralai/Mixtral-8x7B-v0.1", True, 32, 8),
}


def paper_name(model_id: str | None) -> str | None:
    """The paper's name of a Hugging Face id (or of a path ending in one); None for any other model."""
    for name, (hf_id, *_) in MODELS.items():
        if model_id and (model_id == hf_id or str(model_id).rstrip("/").endswith("/" + hf_id)):
            return name
    return None


#: Table 1: dense vs MoE efficiency (pooled over the five tasks).
TABLE1 = pd.DataFrame(
    [
        ("Llama-7B", False, 32, 0.90, 0.70, 5.16, 4.03, 0.776, 0.161),
        ("Qwen1.5-7B", False, 32, 0.79, 0.62, 6.49, 4.14, 0.902, 0.203),
        ("Mistral-7B", False, 32, 0.88, 0.71, 6.74, 2.96, 0.832, 0.211),
        ("Qwen1.5-MoE", True, 24, 0.85, 0.63, 7.36, 3.18, 0.848, 0.307),
        ("OLMoE", True, 16, 0.83, 0.64, 4.98, 4.40, 0.846, 0.311),
        ("Mixtral-8x7B", True, 32, 0.90, 0.73, 6.79, 3.03, 0.833, 0.212),
    ],
    columns=["model", "moe", "layers", "hit@10", "mrr", "ffn_gain", "attn_gain", "peak_position",
             "per_layer_efficiency"],
)

#: Table 2: Qwen1.5-MoE shared/routed ablation. ``top_k`` routed experts (0 = routed experts removed).
TABLE2 = pd.DataFrame(
    [
        ("top-1 routed only", False, 1, 0.00, 0.00),
        ("top-2 routed only", False, 2, 0.00, 0.00),
        ("shared only", True, 0, 0.03, 0.01),
        ("shared + top-1", True, 1, 0.82, 0.59),
        ("shared + top-2", True, 2, 0.83, 0.63),
        ("shared + top-4 (default)", True, 4, 0.85, 0.63),
    ],
    columns=["config", "shared", "top_k", "hit@10", "mrr"],
)

#: Table 5: MRR after blocking the top-k attributed experts (paper task names).
TABLE5 = pd.DataFrame(
    [
        ("name_birthplace", "Qwen1.5-MoE", 0.85, 0.84, 0.83, 0.81),
        ("name_birthplace", "OLMoE", 0.82, 0.80, 0.80, 0.60),
        ("country_capital", "Qwen1.5-MoE", 0.71, 0.68, 0.68, 0.40),
        ("country_capital", "OLMoE", 1.00, 1.00, 0.76, 0.76),
        ("country_language", "Qwen1.5-MoE", 0.94, 0.92, 0.92, 0.92),
        ("country_language", "OLMoE", 0.96, 0.92, 0.87, 0.68),
        ("fruit_inside_color", "Qwen1.5-MoE", 0.74, 0.68, 0.63, 0.60),
        ("fruit_inside_color", "OLMoE", 0.76, 0.60, 0.52, 0.41),
        ("object_superclass", "Qwen1.5-MoE", 0.83, 0.82, 0.80, 0.79),
        ("object_superclass", "OLMoE", 0.80, 0.75, 0.70, 0.66),
    ],
    columns=["task", "model", "orig", "block1", "block5", "block10"],
)
TABLE5["drop@10"] = 1 - TABLE5["block10"] / TABLE5["orig"]
#: Table 5's two models by architecture: Qwen1.5-MoE (24 layers, shared expert) and OLMoE (16 layers, none).
TABLE5_MODEL = {True: "Qwen1.5-MoE", False: "OLMoE"}


def blocked_fraction(model: str, k: int = 10) -> float:
    """Share of all (layer, routed expert) pairs of a paper model that blocking the top ``k`` removes."""
    _, _, layers, experts = MODELS[model]
    return k / (layers * experts)

#: Qwen1.5-MoE depth stages (1-indexed layers 1-13 / 14-19 / 20-24 of 24) as relative-depth upper bounds.
STAGE_BOUNDS = (13 / 24, 19 / 24)
STAGE_SHARES = {"early": 0.061, "middle": 0.435, "late": 0.504}

#: Scalar claims (fractions). The abstract's 43% (Qwen1.5-MoE geography) is Table 5's country_capital row; its OLMoE
#: "76%" is in OLMOE_76_READINGS.
CLAIMS: dict[str, float] = {
    "efficiency_advantage_acl": 0.31,      # ACL abstract: MoE per-layer efficiency +31%
    "efficiency_advantage_arxiv_v1": 0.37,  # arXiv v1 abstract: +37%
    "qwen_moe_vs_qwen_dense": 0.51,        # 0.307 vs 0.203
    "head_expert_r": 0.68,                 # Pearson r, p < 0.001
    "head_expert_p_max": 0.001,
    "inhibit_gate_drop": 0.54,             # top-4 gate probability falls by 54%
    "inhibit_mrr_drop": 0.29,              # MRR falls by 29%
    "force_recovery": 0.85,                # forcing the correct experts recovers 85% of the MRR
    "ig_head_share": 0.28,                 # 28% of expert-activation attribution traced to heads
}

#: The abstract's OLMoE "76% drop" has no match in Table 5 (largest drop 46%); it matches country_capital MRR
#: *falling to* 0.76. Both readings are reported.
OLMOE_76_READINGS = {
    "drop of 76% (abstract wording)": 0.76,
    "falls to 0.76 = country_capital block5/block10 MRR (a 24% drop)": 0.24,
}


def stage_of(depth: float) -> str:
    """The paper's stage of a layer at relative depth (l+1)/L, with Qwen1.5-MoE's 13/19/24 boundaries."""
    return "early" if depth <= STAGE_BOUNDS[0] + 1e-9 else "middle" if depth <= STAGE_BOUNDS[1] + 1e-9 else "late"


def efficiency_readings(eff: Mapping[str, float], moe: Sequence[str], dense: Sequence[str],
                        pair: tuple[str, str] | None = None) -> dict[str, float]:
    """Every reading of the "MoE is X% more efficient per layer" claim, from per-layer efficiencies ``eff`` (floats,
    or arrays of one value per bootstrap resample).

    - ``mean MoE / best dense``: mean_moe / max_dense - 1 (reproduces the ACL 31% from Table 1)
    - ``mean MoE / mean dense``: mean_moe / mean_dense - 1 (44% on Table 1)
    - ``mean MoE / paired dense``: mean_moe / eff[pair[1]] - 1 (36%, close to arXiv v1's 37%)
    - ``paired MoE / paired dense``: eff[pair[0]] / eff[pair[1]] - 1 (Qwen1.5-MoE vs Qwen1.5-7B: 51%)
    """
    mean_moe = sum(eff[m] for m in moe) / len(moe)
    dense_vals = np.stack([np.asarray(eff[d], dtype=float) for d in dense])  # values may be arrays (bootstrap)
    out = {"mean MoE / best dense": mean_moe / dense_vals.max(0) - 1,
           "mean MoE / mean dense": mean_moe / dense_vals.mean(0) - 1}
    if pair is not None:
        out["mean MoE / paired dense"] = mean_moe / eff[pair[1]] - 1
        out["paired MoE / paired dense"] = eff[pair[0]] / eff[pair[1]] - 1
    return out


def paper_efficiency_readings(gain: str = "ffn") -> dict[str, float]:
    """:func:`efficiency_readings` on Table 1 itself (Qwen1.5-MoE vs Qwen1.5-7B as the pair), of the FFN gain per
    layer (``gain='ffn'``: the per-layer efficiency) or of the attention gain per layer (``'attn'``)."""
    per_layer = TABLE1.per_layer_efficiency if gain == "ffn" else TABLE1.attn_gain / TABLE1.layers
    eff = dict(zip(TABLE1.model, per_layer))
    return efficiency_readings(eff, list(TABLE1.model[TABLE1.moe]), list(TABLE1.model[~TABLE1.moe]),
                               pair=("Qwen1.5-MoE", "Qwen1.5-7B"))
