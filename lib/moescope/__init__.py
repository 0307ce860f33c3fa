"""moescope: a reproducibility kit for MoE knowledge attribution (ACL 2025) and DES-MoE (EMNLP 2025)."""
