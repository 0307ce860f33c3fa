"""Multi-domain fine-tuning of MoE models: full FT, frozen-router FT, ESFT and DES-MoE, on one training loop.

Modules: ``masks`` (which parameters train; exact freezing of slices of fused expert tensors), ``esft`` (expert
relevance and greedy top-p selection), ``desmoe`` (ALR router, distillation, DGES affinity, three-phase
schedule), ``methods`` (each method's per-step decisions), ``train`` (the loop), ``evaluate`` (exact match),
``experiments`` (cached grids for the notebooks), ``findings`` (the analyses), ``paper`` (the papers' numbers),
``claims`` (the claims as data) and ``evidence`` (the claims decided on a grid).
"""
