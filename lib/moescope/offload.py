"""Reading weights of a model that accelerate has spread over devices or offloaded to CPU RAM / disk.

``from_pretrained(device_map=..., max_memory=..., offload_folder=...)`` attaches an ``AlignDevicesHook`` to every
module whose weights do not fit: between forwards its parameters sit on the ``meta`` device (no data), and the
hook loads them onto its execution device only for the duration of the module's own forward. Code that reads a
weight outside that forward (an expert's ``down_proj``, the unembedding) must bring it in first:

    with materialized(parts.experts):
        w_down = parts.experts.down_proj[e]      # a real tensor on the execution device

For a model that is not offloaded every function here is a no-op, so analyses use them unconditionally.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from accelerate.utils import align_module_device, has_offloaded_params
from torch import nn


def is_offloaded(model: nn.Module) -> bool:
    """True if some parameter of ``model`` is offloaded (lives on the meta device between forwards)."""
    return any(has_offloaded_params(m) for m in model.modules())


@contextmanager
def materialized(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block every parameter of ``modules`` (and of their submodules) holds its data on the module's
    execution device; on exit offloaded ones go back to ``meta``, also when the block raises. ``None`` is skipped.
    """
    with ExitStack() as stack:
        for module in modules:
            if module is None:
                continue
            for sub in module.modules():
                if has_offloaded_params(sub):
                    stack.enter_context(align_module_device(sub))
        yield


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device, else the device of its first parameter."""
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        param = next(sub.parameters(recurse=False), None)
        if param is not None and param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """The device the model's input ids must be on: that of its input embedding."""
    return execution_device(model.get_input_embeddings())
