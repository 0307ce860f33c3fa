"""Command line: ``python -m moescope [--numerics pinned|native] {organisms,attribute,benchmark,run,reproduce,desmoe-grid,numerics} ...``.

Every error is one line on stderr that names the problem and what to do, with exit status 2 for bad input and
1 when notebooks of a batch failed or the kit itself broke; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from .. import arch, data, models, numerics, paths, prompts
from ..models import available_organisms
from ..organisms import zoo
from ..results import write_csv_atomic
from . import report, runner

#: exit status for input the user can fix, and for a batch with failed notebooks (or a broken kit)
BAD_INPUT, FAILED = 2, 1


class UsageError(ValueError):
    """Command-line input the CLI itself rejects (a combination of options, an output folder, a device)."""


class BatchFailed(RuntimeError):
    """Notebooks of a batch failed or none applied; the message summarises them in one line."""

    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


#: library error -> advice appended to its message (which names the problem), most specific first
ADVICE: dict[type[BaseException], str] = {
    models.ModelNotFoundError: "`moescope organisms` lists (and trains) the organisms",
    data.RelationError: "",
    prompts.PromptError: "",
    arch.ArchitectureError: "choose a Mixture-of-Experts model, e.g. olmoe-like",
    runner.PlanError: "",
    UsageError: "",
    BatchFailed: "",
    OSError: "",
}


def _writable(folder: str | Path) -> Path:
    """``folder``, created if needed; UsageError if files cannot be written there."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to the output folder {path} ({err.strerror or err}); "
                         "choose another folder with --out") from err
    return path


def _check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    return device


def _attribute(args: argparse.Namespace) -> int:
    from .. import attribution

    if args.relation is None and (args.samples is not None or args.template is not None or args.target_mode is not None):
        raise UsageError("--samples, --template and --target-mode apply to --relation only; with --prompt use --target")
    if args.relation is not None and args.target is not None:
        raise UsageError("--target applies to --prompt only; a relation's objects come from its file")
    out = _writable(args.out)
    rel = data.load_relation(args.relation) if args.relation else None  # before the model: fail fast
    lm = models.load_model(args.model, device=_check_device(args.device), dtype=args.dtype)
    common = dict(neurons=not args.no_neurons, top_neurons=args.top_neurons, batch_size=args.batch_size)
    if rel is not None:
        attr = attribution.attribute_relations(lm.model, lm.tokenizer, [rel], n_samples=args.samples,
                                               templates=data.HELD_OUT if args.template is None else args.template,
                                               target=args.target_mode or "gold", **common)
    else:
        objects = None if args.target is None else [args.target]
        mode = "top1" if args.target is None else "gold"
        attr = attribution.attribute(lm.model, lm.tokenizer, [args.prompt], objects, target=mode, **common)
    for name, table in attr.tables().items():
        write_csv_atomic(out / f"{name}.csv", table)
    print(attr.samples.to_string(index=False))
    print(f"wrote {', '.join(sorted(attr.tables()))} tables to {out}/")
    return 0


def _organisms(args: argparse.Namespace) -> int:
    known = zoo.GEN2 if args.gen == 2 else tuple(zoo.ZOO)
    if wrong := [n for n in args.names or [] if n not in known]:
        raise SystemExit(f"moescope organisms: {', '.join(wrong)} not of generation {args.gen}; use --gen 1 or 2")
    if args.gen == 2:
        table = zoo.ensure_gen2(args.names or None, retrain=args.retrain, jobs=args.jobs)
    else:
        table = zoo.ensure_zoo(args.names or None, retrain=args.retrain)
    print(table.to_string(index=False))
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    """key=value pairs; values are read as JSON where possible (numbers, lists), else kept as strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"parameter {pair!r} is not of the form key=value (e.g. -p seed=1)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _batch(jobs: list[runner.Job], args: argparse.Namespace, root: Path, figures: Path | None) -> int:
    """Run the jobs, print the status table and the report's path; BatchFailed if any job failed or none applied."""
    status = runner.run_jobs(jobs, force=args.force, figures=figures, cell_timeout=args.cell_timeout,
                             fail_fast=args.fail_fast, status_file=root / "status.csv")
    print(pd.DataFrame(status).to_string(index=False))
    try:
        print(f"report: {report.write(root)[0]}")
    except report.ReportError as err:
        print(f"no report: {err}")
    failed = [s for s in status if not s["status"].startswith(("ran", "cached", "not applicable"))]
    if failed:
        first = failed[0]
        raise BatchFailed(f"{len(failed)} of {len(status)} notebook runs did not finish; first: {first['notebook']} "
                          f"({first['model']}) {first['status']}; details in {root / 'status.csv'}; "
                          "fix and rerun the same command to resume")
    if all(s["status"].startswith("not applicable") for s in status):
        raise BatchFailed(f"no selected notebook applies to the selected models: {status[0]['notebook']} "
                          f"({status[0]['model']}) is {status[0]['status']}; choose other notebooks or a model "
                          f"with the structure they need (MoE organisms: {', '.join(zoo.MOE_ORGANISMS)})", code=BAD_INPUT)
    return 0


def _run(args: argparse.Namespace) -> int:
    for name in args.models or []:
        models.resolve(name)  # an unknown model fails here, not once per notebook
    runner.check_run_name(args.run)
    out = _writable(args.out)
    notebooks = runner.find_notebooks(args.notebooks, Path(args.notebook_dir))
    jobs = runner.plan(notebooks, args.models, args.run, _parse_overrides(args.param), out)
    return _batch(jobs, args, out.resolve() / args.run, None)  # figures stay in each model's folder under --out


def _reproduce(args: argparse.Namespace) -> int:
    from ..organisms import planted

    start = time.perf_counter()
    _writable(paths.RUNS)
    print("== model organisms (trained on first use, then loaded) ==")
    print(zoo.ensure_zoo().to_string(index=False))
    if planted.NAME not in available_organisms():
        planted.train_planted()
    jobs = runner.plan(runner.find_notebooks(), None)
    try:
        return _batch(jobs, args, paths.RUNS.resolve() / runner.DEFAULT_RUN, paths.FIGURES)
    finally:
        print(f"reproduction finished in {time.perf_counter() - start:.0f} s")


def _benchmark(args: argparse.Namespace) -> int:
    from .. import plots
    from ..attribution import benchmark
    from ..results import write_json_atomic

    out = _writable(args.out)
    options = {"device": _check_device(args.device), "batch_size": args.batch_size, "models": args.models,
               "layers": args.layers, "dtype": args.dtype, "n_prompts": args.prompts}
    # on a CPU both numerics, each in its own process; a GPU's numerics do not depend on these settings
    table = benchmark.both_numerics(**options) if args.device == "cpu" else benchmark.suite(**options)
    write_json_atomic(out / f"attribution_{args.device}.json", table)
    plots.save_fig(benchmark.plot(table), f"bench_attribution_{args.device}", out)
    print(table.to_string(index=False))
    if "pinned_over_native" in table:
        print(table[["model", "numerics", "kit_ms_per_prompt", "native_floor_ms_per_prompt", "ratio_to_native_floor",
                     "pinned_over_native"]].to_string(index=False))
        print("\n".join(f"{k}: {v}" for k, v in numerics.CHOICES.items()))
    return 0


def _desmoe_grid(args: argparse.Namespace) -> int:
    from ..finetuning import base, experiments, protocol

    start = time.perf_counter()
    if args.retrain_base or not base.is_current():
        print(f"== pre-training the DES-MoE base organism ({base.NAME}): missing or made on another corpus ==")
        base.train_base()
    default = paths.RUNS / "desmoe-grid-reduced" if args.reduced else experiments.GRID_FOLDER
    folder = Path(args.folder) if args.folder else default
    grid = protocol.FULL.reduced(args.steps) if args.reduced else protocol.FULL
    rates = protocol.run_grid(experiments.base_for(), folder, grid, jobs=args.jobs)
    print("chosen learning rates (validation only):", rates)
    print(f"DES-MoE grid finished in {time.perf_counter() - start:.0f} s; results in {folder}/")
    return 0


def _numerics(args: argparse.Namespace) -> int:
    from .. import fingerprint

    print(f"numerics: {numerics.current()} ({numerics.CHOICES[numerics.current()]})")
    for key, value in numerics.describe().items():
        print(f"  {key} = {value}")
    problems = numerics.problems()
    print("not pinned: " + "; ".join(problems) if problems else "all pinned settings in effect")
    print(f"this machine computes like: {fingerprint.kind()} (recorded kinds: {', '.join(fingerprint.recorded())})")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str):
        self.exit(BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="re-run notebooks already done")
    p.add_argument("--cell-timeout", type=_seconds, default=runner.DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
                   help=f"fail a notebook whose cell runs longer (default {runner.DEFAULT_CELL_TIMEOUT} s)")
    p.add_argument("--fail-fast", action="store_true", help="stop the batch at the first failed notebook")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moescope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="numerics:\n" + "\n".join(f"  {k}: {v}" for k, v in numerics.CHOICES.items()))
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--numerics", choices=list(numerics.CHOICES), default=numerics.current(),
                        help="pinned (default): the same results on every CPU kind; native: the CPU's fastest "
                             "kernels, about 3x faster, results differ across CPU kinds (see below)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("organisms", help="train (if missing) and list the model organisms")
    p.add_argument("--gen", type=int, choices=[1, 2], default=1, help="generation: 1 (small zoo) or 2 (deep zoo)")
    p.add_argument("--names", nargs="*", choices=sorted(zoo.ZOO) + list(zoo.GEN2),
                   help="organisms of that generation (default: all)")
    p.add_argument("--retrain", action="store_true", help="train again even if saved and current")
    p.add_argument("--jobs", type=int, default=2, help="gen 2: parallel one-thread training processes (default 2)")
    p.set_defaults(func=_organisms)
    p = sub.add_parser("attribute", help="LPI attribution of one prompt or a relation, written as CSV files")
    p.add_argument("--model", required=True, help="organism name, local path or Hugging Face id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt")
    what.add_argument("--relation", help="a relation name, paper task name or relation file")
    p.add_argument("--target", help="with --prompt: the gold object (default: the model's top-1 prediction)")
    p.add_argument("--target-mode", choices=["gold", "top1"], help="with --relation (default gold)")
    p.add_argument("--samples", type=_positive, help="with --relation: N facts, stratified by object (default: all)")
    p.add_argument("--template", type=int, help="with --relation: one held-out template by number (default: every "
                   "one: the file's prompt_templates, then prompt_templates_zs)")
    p.add_argument("--top-neurons", type=_positive, help="keep the N best neurons per sample (default: all)")
    p.add_argument("--no-neurons", action="store_true", help="skip the neuron level")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], default=None,
                   help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--out", required=True, help="output folder for the CSV files")
    p.set_defaults(func=_attribute)
    p = sub.add_parser("benchmark", help="time neuron-level attribution against the per-neuron loop and the floor "
                       "(on a CPU under pinned and native numerics, against the floor at native rates)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="*", help="organisms or ids of configs.REAL_CONFIGS (default: per device)")
    p.add_argument("--layers", type=_positive, help="cut real configs to N layers (default: 1 on CPU, all on GPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: fp32 on CPU, bf16 on GPU")
    p.add_argument("--prompts", type=_positive, help="prompts per model (default: 8 on CPU, 128 on GPU; organisms: all)")
    p.add_argument("--batch-size", type=_positive, help="prompts per batch (default: all prompts of a real config)")
    p.add_argument("--out", default=str(paths.BENCHMARKS))
    p.set_defaults(func=_benchmark)
    p = sub.add_parser("run", help="execute notebooks over models with papermill; resumable; writes a report")
    p.add_argument("--notebooks", nargs="*", help="notebook name prefixes, e.g. 10 40 (default: all)")
    p.add_argument("--models", nargs="*", help="organism names, local paths or hub ids (default: each notebook's own)")
    p.add_argument("--run", default="default", help="name of this batch (folder under --out)")
    p.add_argument("--out", default=str(paths.RUNS))
    p.add_argument("--notebook-dir", default=str(paths.NOTEBOOKS), help="where the notebooks are (default: the kit's)")
    p.add_argument("-p", "--param", action="append", default=[], help="notebook parameter key=value (repeatable)")
    _batch_options(p)
    p.set_defaults(func=_run)
    p = sub.add_parser("desmoe-grid", help="pre-train the DES-MoE base (if missing or stale) and run or resume its grid")
    p.add_argument("--jobs", type=int, default=2, help="parallel one-thread worker processes (default 2)")
    p.add_argument("--folder", help="output folder (default: the shipped cache data/desmoe/grid; with --reduced "
                   "runs/desmoe-grid-reduced)")
    p.add_argument("--retrain-base", action="store_true", help="pre-train the base organism again")
    p.add_argument("--reduced", action="store_true", help="the reduced grid (one rate, N in {2, 6}, two seeds)")
    p.add_argument("--steps", type=int, default=60, help="with --reduced: steps per run")
    p.set_defaults(func=_desmoe_grid)
    p = sub.add_parser("numerics", help="the CPU numerics in effect and the CPU kind this machine computes like")
    p.set_defaults(func=_numerics)
    p = sub.add_parser("reproduce", help="reproduce every finding of both papers on the organisms")
    _batch_options(p)
    p.set_defaults(func=_reproduce)
    for command in sub.choices.values():  # --debug also after the command; SUPPRESS keeps the first one's value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback")
    return parser


def _one_line(text: str, width: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def error_message(err: BaseException) -> tuple[str, int]:
    """(one line for stderr, exit status) for an error that ended a command."""
    for kind, advice in ADVICE.items():
        if isinstance(err, kind):
            message = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.strerror}: {err.filename}"
            code = err.code if isinstance(err, BatchFailed) else BAD_INPUT
            return _one_line(f"moescope: error: {message}" + (f"; {advice}" if advice else "")), code
    return _one_line(f"moescope: internal error: {type(err).__name__}: {err}; rerun with --debug for the traceback "
                     "and report it"), FAILED


def _in_other_numerics(choice: str, argv: list[str]) -> int:
    """Run the same command in a new process that starts with ``choice``'s numerics (they must be set before torch
    runs its first kernel); its exit status."""
    env = numerics.environment(choice, dict(os.environ))
    return subprocess.run([sys.executable, "-m", "moescope", *argv], env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.numerics != numerics.current():
        return _in_other_numerics(args.numerics, argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("moescope: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        message, code = error_message(err)
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
