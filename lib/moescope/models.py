"""Load any model by one name: a kit organism, a local Hugging Face folder, or a hub model id.

Real checkpoints load in bf16 on GPU (fp32 on CPU) with eager attention (needed for attention patterns) and,
when given ``device_map="auto"``, are sharded across devices by accelerate. Organisms load exactly the same way
from ``organisms/<name>``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from . import arch, paths
from .configs import experts_kwargs



class ModelNotFoundError(LookupError):
    """The name is neither an organism, a local model folder, nor a model reachable on the hub."""


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, and where it came from."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def available_organisms() -> list[str]:
    """Names of the organisms saved under paths.ORGANISMS."""
    if not paths.ORGANISMS.is_dir():
        return []
    return sorted(p.name for p in paths.ORGANISMS.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> tuple[str, str]:
    """(path or id to load, source kind) for ``name``: 'organism', 'local' or 'hub'."""
    if "/" not in name and (paths.ORGANISMS / name / "config.json").is_file():
        return str(paths.ORGANISMS / name), "organism"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} exists but has no config.json: not a Hugging Face model folder")
        return str(path), "local"
    if name.count("/") != 1:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not an organism (available: {', '.join(available_organisms()) or 'none'}), "
            "not a local folder, and not a hub id of the form 'org/name'"
        )
    return name, "hub"


def load_tokenizer(target: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model. A generic ``tokenizer.json`` backend (the organisms') is loaded as saved:
    AutoTokenizer would replace it by the model type's own class for some types (qwen2 -> Qwen2Tokenizer)."""
    config_file = Path(target) / "tokenizer_config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("tokenizer_class") == "TokenizersBackend":
        return PreTrainedTokenizerFast.from_pretrained(target)
    return AutoTokenizer.from_pretrained(target)


def default_dtype(device: str) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU."""
    return torch.float32 if str(device).startswith("cpu") else torch.bfloat16


def load_model(
    name: str,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load ``name`` (organism, local path or hub id) for analysis: eval mode, eager attention, pinned experts.

    ``device_map`` (e.g. "auto") shards a model larger than one GPU through accelerate; otherwise the whole
    model goes to ``device``.
    """
    target, source = resolve(name)
    hf_logging.disable_progress_bar()  # per-shard loading bars are noise in notebooks; the kit shows its own
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs = dict(dtype=dtype or default_dtype(device), attn_implementation="eager")
    try:
        config = AutoConfig.from_pretrained(target)
        arch.family(config)  # an unsupported class is refused by name before any weight is read
        kwargs |= experts_kwargs(config)
        model = AutoModelForCausalLM.from_pretrained(target, device_map=device_map, **kwargs)
        tokenizer = load_tokenizer(target)
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load {name!r} from {source} ({target}); offline machines need a local copy: {err}"
        ) from err
    if device_map is None:
        model = model.to(device)
    return LoadedModel(name=name, model=model.eval(), tokenizer=tokenizer, source=source)
