"""moescope: a reproducibility kit for MoE knowledge attribution (ACL 2025) and DES-MoE (EMNLP 2025).

Importing the package pins CPU numerics before torch runs (see :mod:`moescope.numerics`).
"""
from . import numerics

numerics.pin()
