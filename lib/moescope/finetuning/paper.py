"""The DES-MoE paper's numbers (Li et al., EMNLP 2025, arXiv 2509.16882) and the ESFT numbers it builds on
(Wang et al., EMNLP 2024, arXiv 2407.01906), as data. Source: /work/shared/papers/des-moe-emnlp2025.md.

Scores are on the papers' 0-100 scale; the kit's exact-match scores are shares (0-1).
"""
from __future__ import annotations

DES_MOE = "DES-MoE (EMNLP 2025)"
ESFT = "ESFT (EMNLP 2024)"

#: Table 1 (downstream average) and Table 2 (general average), mixed-domain rows and vanilla
TABLE1_DOWNSTREAM = {"vanilla": 33.6, "fft": 46.6, "lora": 43.9, "esft_token": 46.8, "esft_gate": 47.7, "desmoe": 51.6}
TABLE2_GENERAL = {"vanilla": 62.4, "fft": 55.5, "lora": 56.7, "esft_token": 58.4, "esft_gate": 59.0, "desmoe": 62.4}
#: single-domain rows (copied by DES-MoE from ESFT)
SINGLE_DOWNSTREAM = {"fft": 51.0, "lora": 44.9, "esft_token": 49.4, "esft_gate": 50.2}
SINGLE_GENERAL = {"fft": 58.8, "lora": 59.1, "esft_token": 61.5, "esft_gate": 60.6}

#: Figure 2: general average at N = 2 and N = 6 jointly trained domains, and the drop 2 -> 6
FIG2_GENERAL = {"fft": (61.7, 55.5), "desmoe": (62.5, 62.4)}
FIG2_DROP = {"fft": 6.2, "lora": 4.8, "esft": 3.4, "desmoe": 0.1}
#: the kit's method for each of Fig. 2's lines (its ESFT is ESFT-Gate, mixed)
FIG2_KIT = {"fft": "fft", "lora": "lora", "esft": "esft_gate", "desmoe": "desmoe"}
#: full FT's slope per added domain steepens: about -1.3 (N 2 -> 3), about -2.1 beyond 3 (read from the figure)
FIG2_FFT_SLOPES = (-1.3, -2.1)
#: the conclusion: "98% of general capability is preserved from 2 to 6 domains"
PRESERVED = 0.98
#: "89% less forgetting" (text); the figure's numbers give 1 - 0.1 / 6.2 = 98%
FORGETTING_REDUCTION_TEXT = 0.89
FORGETTING_REDUCTION_FIG2 = 1 - 0.1 / 6.2

#: Figure 3: wall-clock minutes to incorporate six domains; "68% faster" = 1 - 54.0 / 171.8
FIG3_MINUTES = {"fft": 171.8, "esft_single_x6": 118.8, "esft_mixed": 67.5, "desmoe": 54.0, "lora": 49.5}
#: the kit's method for each of Fig. 3's mixed-domain bars
FIG3_KIT = {"fft": "fft", "lora": "lora", "esft_mixed": "esft_gate", "desmoe": "desmoe"}
SPEEDUP = 1 - FIG3_MINUTES["desmoe"] / FIG3_MINUTES["fft"]

#: Table 3: (downstream average, general average)
TABLE3 = {"desmoe": (51.6, 62.4), "desmoe_no_alr": (48.9, 59.8), "desmoe_no_dges": (47.3, 55.6),
          "esft_mixed": (47.2, 58.6), "esft_mixed_alr": (46.8, 57.3)}
#: ESFT-Mixed + ALR: "routing-assignment errors +37%" (the error is not defined)
ROUTING_ERRORS_ALR = 0.37
#: Law-Code expert-usage overlap with and without DGES (the metric is not defined in the paper)
OVERLAP_LAW_CODE = {"desmoe": 0.18, "desmoe_no_dges": 0.47}

#: ESFT: experts per layer its token score (p = 0.2) selects, of 64 routed, and the share for most tasks
ESFT_EXPERTS_PER_LAYER = {"intent": 4.77, "law": 5.88, "summary": 4.92, "translation": 3.19}
ESFT_SHARE_RANGE = (0.05, 0.15)
