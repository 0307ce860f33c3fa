"""Hooks that never leak: register forward hooks for the length of a ``with`` block, remove them on any exit."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

Hook = tuple[nn.Module, str, Callable]


@contextmanager
def hooked(hooks: Iterable[Hook]) -> Iterator[None]:
    """Register (module, kind, fn) hooks, kind in {'forward', 'pre', 'forward_prepend'}; always remove them."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn))
            else:
                handles.append(module.register_forward_hook(fn, prepend=kind == "forward_prepend"))
        yield
    finally:
        for handle in handles:
            handle.remove()
