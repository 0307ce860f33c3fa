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
from huggingface_hub import is_offline_mode
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from . import arch, paths
from .configs import experts_kwargs
from .offload import input_device



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
        """Where inputs go: the input embedding's (execution) device, also when weights are offloaded."""
        return input_device(self.model)


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
            raise ModelNotFoundError(f"{path} exists but has no config.json: not a Hugging Face model folder "
                                     "(one written by save_pretrained)")
        return str(path), "local"
    if name.count("/") != 1:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not an organism (available: {', '.join(available_organisms()) or 'none'}), "
            "not a local folder, and not a hub id of the form 'org/name'"
        )
    return name, "hub"


def _load_failure(name: str, source: str, target: str, err: OSError) -> str:
    """One line saying why ``name`` did not load and what to do."""
    if source == "hub" and is_offline_mode():
        return (f"could not load {name!r} from hub: it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                "forbids downloading; download it on a machine with internet or pass a local model folder")
    first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"could not load {name!r} from {source} ({target}): {first_line}"


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
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load ``name`` (organism, local path or hub id) for analysis: eval mode, eager attention, pinned experts.

    ``device_map`` (e.g. "auto") shards a model larger than one GPU through accelerate; otherwise the whole
    model goes to ``device``. ``max_memory`` ({0: "70GiB", "cpu": "120GiB"}) caps each device and
    ``offload_folder`` receives the weights that fit nowhere; both are accelerate's options, passed through
    unchanged, and need a ``device_map``. Offloaded weights stay usable by every analysis (:mod:`moescope.offload`).
    """
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ValueError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
    target, source = resolve(name)
    hf_logging.disable_progress_bar()  # per-shard loading bars are noise in notebooks; the kit shows its own
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    sharded_on_gpu = device_map is not None and torch.cuda.is_available()
    kwargs = dict(dtype=dtype or default_dtype("cuda" if sharded_on_gpu else device), attn_implementation="eager")
    try:
        config = AutoConfig.from_pretrained(target)
        arch.family(config)  # an unsupported class is refused by name before any weight is read
        kwargs |= experts_kwargs(config)
        if device_map is not None:
            kwargs.update(device_map=device_map, max_memory=max_memory,
                          offload_folder=None if offload_folder is None else str(offload_folder))
        model = AutoModelForCausalLM.from_pretrained(target, **kwargs)
        tokenizer = load_tokenizer(target)
    except OSError as err:
        raise ModelNotFoundError(_load_failure(name, source, target, err)) from err
    if device_map is None:
        model = model.to(device)
    return LoadedModel(name=name, model=model.eval(), tokenizer=tokenizer, source=source)
