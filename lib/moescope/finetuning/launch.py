"""Fine-tune a model on your domains with the kit's methods, in one process or data-parallel over several.

One process (bit-identical to :func:`.train.train`)::

    python -m moescope.finetuning.launch --model desmoe-base --method desmoe --domain math \\
        --domain mytask=mytask.jsonl --general shipped --steps 160 --out runs/ft

Two CPU processes (gloo; ``--multi_gpu`` selects accelerate's torchrun launcher, ``--device cpu`` the CPU), or
one process per GPU (NCCL)::

    accelerate launch --multi_gpu --num_processes 2 -m moescope.finetuning.launch --device cpu ...
    accelerate launch --multi_gpu --num_processes 8 -m moescope.finetuning.launch --device cuda \\
        --dtype bfloat16 --model allenai/OLMoE-1B-7B-0924 ...

``--batch-size`` is the global batch, split over the processes (:mod:`.parallel`); the result equals the
one-process run up to rounding. Each ``--domain`` is a built-in synthetic domain (``math``) or ``name=file.jsonl``
(:mod:`.userdata`); ``--general`` adds the 1:1 general mix (a JSONL file, or ``shipped`` for the kit's own).
Rank 0 evaluates (exact match on ``--eval`` sets) and writes ``OUT/<method>/result.json`` (and with
``--save-model`` the weights, ALR heads or LoRA adapters); a method whose result is already there is skipped.
DDP only (FSDP and DeepSpeed are refused); what was verified where: docs/multi_gpu_finetuning.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .. import arch
from ..determinism import set_determinism
from ..results import write_json_atomic
from . import protocol
from .base import THREADS, Base, shipped_corpus
from .batches import encode
from .domains import GENERAL, Corpus, Example, Split
from .evaluate import accuracy_by_domain
from .methods import Method
from .parallel import LOCAL, DataParallel, Local
from .train import TrainConfig, TrainResult, train
from .userdata import UserDataError, parse_domain, read_jsonl, unique

VERSION = 1
#: environment variables that launchers set for each process of a multi-process job
WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def default_lr(method: str) -> float:
    """The middle of the method's learning-rate sweep in :data:`.protocol.LEARNING_RATES`."""
    rates = protocol.LEARNING_RATES[method]
    return rates[len(rates) // 2]


def backbone_lr(args: argparse.Namespace, method: str) -> float | None:
    """--backbone-lr, else for a method of :data:`.protocol.BACKBONE_RATE` the default rate of the method it
    borrows from, else None (the backbone at the method's own rate)."""
    if args.backbone_lr is not None:
        return args.backbone_lr
    lender = protocol.BACKBONE_RATE.get(method)
    return default_lr(lender) if lender else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moescope.finetuning.launch",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="organism name, local folder or hub id of an MoE model")
    p.add_argument("--method", action="append", required=True, choices=sorted(protocol.METHODS),
                   help="fine-tuning method (repeat to run several, each from the base model)")
    p.add_argument("--domain", action="append", required=True, metavar="NAME[=FILE.jsonl]",
                   help="a training domain: built-in name or name=file.jsonl (repeat for several)")
    p.add_argument("--general", metavar="FILE.jsonl|shipped", help="general data mixed 1:1 into every batch cycle")
    p.add_argument("--eval", action="append", default=[], metavar="NAME[=FILE.jsonl]",
                   help="held-out set of a training domain (a built-in name uses its validation split)")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (split over the processes)")
    p.add_argument("--lr", type=float, help="learning rate (default: the middle of the method's sweep)")
    p.add_argument("--backbone-lr", type=float,
                   help="learning rate of the backbone (embeddings, LM head, attention, norms, dense FFNs); default: "
                        "--lr, or for desmoe_split_lr the middle of full FT's sweep")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: before and after only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"),
                   help="default: bfloat16 on GPU, float32 on CPU; float64 (with the eager experts loop) to verify")
    p.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per method)")
    p.add_argument("--save-model", action="store_true", help="also save the fine-tuned weights")
    return p


def _examples(spec: str, option: str, split: str) -> tuple[str, list[Example]]:
    name, path = parse_domain(spec, option)
    return name, read_jsonl(path, name) if path else getattr(shipped_corpus().domains[name], split)


def load_data(args: argparse.Namespace) -> Corpus:
    """The training domains (train), their --eval sets (val) and the general mix, checked before any training."""
    unique((parse_domain(s)[0] for s in args.domain), "--domain")
    unique((parse_domain(s, "--eval")[0] for s in args.eval), "--eval")
    train_sets = dict(_examples(s, "--domain", "train") for s in args.domain)
    evals = dict(_examples(s, "--eval", "val") for s in args.eval)
    stray = sorted(set(evals) - set(train_sets))
    if stray:
        raise UserDataError(f"--eval {stray[0]!r}: unknown domain; the training domains are {', '.join(train_sets)}")
    if args.general is None:
        general = []
    elif args.general == "shipped":
        general = list(shipped_corpus().general_mix)
    else:
        general = [Example(e.prompt, e.answer, GENERAL) for e in read_jsonl(args.general, GENERAL)]
    return Corpus(domains={n: Split(ex, evals.get(n, []), []) for n, ex in train_sets.items()}, general_train=[],
                  general_mix=general, general_test=[])


def _check_options(args: argparse.Namespace) -> None:
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UserDataError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("lr", "backbone_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UserDataError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    if args.eval_every < 0:
        raise UserDataError("--eval-every must be 0 or more")
    for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if os.environ.get(flag, "false").lower() in ("1", "true"):
            raise UserDataError(f"{flag} is set: this entry point trains with DDP only (exact expert freezing needs "
                                "whole expert tensors on every process); drop FSDP/DeepSpeed from the accelerate config")


def start(device: str) -> tuple[Local, str]:
    """(parallel strategy, this process's device): DDP when a launcher started several processes, else one."""
    if not any(int(os.environ.get(v, "1")) > 1 for v in WORLD_VARIABLES):
        return LOCAL, device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    return DataParallel(), "cpu" if device == "cpu" else str(state.device)


def evaluator(tokenizer, corpus: Corpus) -> Callable[[nn.Module], dict] | None:
    """Exact match per --eval domain and their mean (None without --eval sets)."""
    rows = [e for split in corpus.domains.values() for e in split.val]
    if not rows:
        return None
    data = encode(tokenizer, rows)

    def score(model: nn.Module) -> dict:
        acc = accuracy_by_domain(model, data)
        return {"exact_match": acc | {"avg": sum(acc.values()) / len(acc)}}
    return score


def run_key(args: argparse.Namespace, method: str, cfg: TrainConfig, corpus: Corpus, world: int) -> str:
    blob = json.dumps([VERSION, method, asdict(cfg), args.model, args.dtype, world, corpus.digest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done(folder: Path, key: str, parallel: Local) -> bool:
    """Whether rank 0 finds this run's result (every rank gets rank 0's answer)."""
    file = folder / "result.json"
    answer = [file.is_file() and json.loads(file.read_text()).get("key") == key]
    if parallel.world > 1:
        torch.distributed.broadcast_object_list(answer, src=0)
    return bool(answer[0])


def save_weights(model: nn.Module, tokenizer, method: Method, folder: Path) -> None:
    """The fine-tuned model (HF format), or only the LoRA adapters; ALR heads as alr_heads.safetensors."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapters = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if "lora_" in n}
    if adapters:
        save_file(adapters, tmp / "adapters.safetensors")
    else:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    routing = getattr(method, "routing", None)
    if routing is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in routing.heads.state_dict().items()},
                  tmp / "alr_heads.safetensors")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def run_method(base: Base, corpus: Corpus, name: str, cfg: TrainConfig, parallel: Local,
               evaluate: Callable[[nn.Module], dict] | None) -> tuple[nn.Module, Method, TrainResult]:
    """Fine-tune a fresh copy of the base model with method ``name``."""
    set_determinism(cfg.seed, threads=THREADS)
    model = base.load()
    if model.dtype == torch.float64 and arch.is_moe(model):
        model.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
    method = protocol.METHODS[name]()
    examples = [e for split in corpus.domains.values() for e in split.train] + list(corpus.general_mix)
    result = train(model, base.tokenizer, examples, method, cfg, evaluate if parallel.rank == 0 else None, parallel)
    return model, method, result


def run(args: argparse.Namespace) -> None:
    """Every --method of ``args`` in turn (skipping finished ones); rank 0 writes the results."""
    _check_options(args)
    corpus = load_data(args)
    parallel, device = start(args.device)
    base = Base(args.model, corpus, device, args.dtype)
    score = evaluator(base.tokenizer, corpus)
    for name in dict.fromkeys(args.method):
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr or default_lr(name),
                          weight_decay=args.weight_decay, seed=args.seed, eval_every=args.eval_every,
                          backbone_lr=backbone_lr(args, name))
        folder, key = args.out / name, run_key(args, name, cfg, corpus, parallel.world)
        if _done(folder, key, parallel):
            if parallel.rank == 0:
                print(f"{name}: done already ({folder / 'result.json'})")
            continue
        model, method, result = run_method(base, corpus, name, cfg, parallel, score)
        if parallel.rank == 0:
            if args.save_model:
                save_weights(model, base.tokenizer, method, folder / "model")
            write_json_atomic(folder / "result.json", {
                "key": key, "model": args.model, "method": name, "config": asdict(cfg), "processes": parallel.world,
                "dtype": args.dtype, "domains": {n: len(s.train) for n, s in corpus.domains.items()},
                "general_examples": len(corpus.general_mix), "losses": result.losses, "history": result.history,
                "train_seconds": result.train_seconds, "trained_params": result.trained_params,
                "summary": result.method})
            print(f"{name}: {cfg.steps} steps on {parallel.world} process(es), loss {result.losses[0]:.4f} -> "
                  f"{result.losses[-1]:.4f}, {result.train_seconds:.1f} s training; {folder}")
    if parallel.world > 1:
        torch.distributed.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one line on stderr (from rank 0) for input that cannot be used."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, LookupError, OSError) as err:  # UserDataError, ArchitectureError, ModelNotFoundError, ...
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"moescope.finetuning.launch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)
