"""LoRA adapters on an MoE model, fused experts included, through PEFT (pinned in requirements.txt).

transformers 5 stores a layer's routed experts as two 3-D tensors (``gate_up_proj[E,2I,H]``, ``down_proj[E,H,I]``),
not as ``nn.Linear`` modules, so ``target_modules`` cannot reach them. PEFT's ``target_parameters`` wraps such a
parameter in a ``ParamWrapper`` that adds a low-rank delta per expert, W_e + (alpha / r) B_e A_e, through a
parametrization (PEFT >= 0.17; tested with the pinned 0.21.2 and transformers 5.23). The paper's LoRA baseline
(ESFT and DES-MoE: rank 8, scaling 2, every parameter but the embeddings and the LM head) becomes: ``all-linear``
modules (attention, dense and shared-expert MLPs; PEFT leaves the LM head out) plus the fused experts and the
router weight of every MoE layer. B starts at zero, so the adapted model starts as the base model.

One PEFT quirk shapes the targets: for MoE model types whose layout changed from transformers 4 to 5 (DeepSeek-V2,
Qwen2-MoE, Mixtral), PEFT rewrites every ``target_modules`` entry whose leaf name is an old expert name
(``gate_proj``, ``up_proj``, ``down_proj``, ``gate``, ``w1``-``w3``) into the fused expert tensors, so a shared
expert's or dense MLP's ``nn.Linear`` with such a name would silently get no adapter. Those linear layers are
therefore targeted through ``target_parameters`` (their ``.weight``), which PEFT does not rewrite.
"""
from __future__ import annotations

import warnings

from torch import nn

from .. import arch

#: leaf names PEFT rewrites into fused expert targets for transformers-5 MoE types (see the module docstring)
REWRITTEN = frozenset({"gate_proj", "up_proj", "down_proj", "gate", "w1", "w2", "w3"})


def adapter_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) as full names: linear layers but the LM head, and the fused expert
    tensors, router weights and rewritten-name linear weights."""
    names = {id(m): n for n, m in model.named_modules()}
    head = model.get_output_embeddings()
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]
    modules = [n for n in linear if n.rpartition(".")[2] not in REWRITTEN]
    params = [f"{n}.weight" for n in linear if n.rpartition(".")[2] in REWRITTEN]
    for parts in arch.layers(model):
        if parts.is_moe:
            experts = names[id(parts.experts)]
            params += [f"{experts}.gate_up_proj", f"{experts}.down_proj", f"{names[id(parts.router)]}.weight"]
    return modules, params


def add_adapters(model: nn.Module, rank: int = 8, alpha: float = 16.0) -> int:
    """Inject LoRA adapters into ``model`` in place (only they require grad); returns their parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    modules, params = adapter_targets(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules,
                        target_parameters=params, bias="none")
    with warnings.catch_warnings():  # PEFT warns about its own internal rank pattern for fused gate_up tensors
        warnings.simplefilter("ignore", RuntimeWarning)
        inject_adapter_in_model(config, model)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    if not adapters:
        raise RuntimeError("PEFT added no LoRA adapters to this model")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return sum(p.numel() for p in adapters)
