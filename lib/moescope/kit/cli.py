"""Command line: ``python -m moescope {organisms,attribute,run,reproduce} ...``."""
from __future__ import annotations

import argparse
import sys

import json
import time
from pathlib import Path

import pandas as pd

from .. import paths
from ..models import available_organisms
from ..organisms import zoo
from ..results import write_csv_atomic


def _attribute(args: argparse.Namespace) -> int:
    from .. import attribution, data, models

    lm = models.load_model(args.model, device=args.device, dtype=args.dtype)
    common = dict(neurons=not args.no_neurons, top_neurons=args.top_neurons, batch_size=args.batch_size)
    if args.relation:
        rel = data.load_relation(args.relation)
        attr = attribution.attribute_relations(lm.model, lm.tokenizer, [rel], n_samples=args.samples,
                                               template=args.template, target=args.target_mode, **common)
    else:
        objects = [args.target] if args.target else None
        mode = "gold" if args.target else "top1"
        attr = attribution.attribute(lm.model, lm.tokenizer, [args.prompt], objects, target=mode, **common)
    out = Path(args.out)
    for name, table in attr.tables().items():
        write_csv_atomic(out / f"{name}.csv", table)
    print(attr.samples.to_string(index=False))
    print(f"wrote {', '.join(sorted(attr.tables()))} tables to {out}/")
    return 0


def _organisms(args: argparse.Namespace) -> int:
    known = zoo.GEN2 if args.gen == 2 else tuple(zoo.ZOO)
    if wrong := [n for n in args.names or [] if n not in known]:
        raise SystemExit(f"moescope organisms: {', '.join(wrong)} not of generation {args.gen}; use --gen 1 or 2")
    ensure = zoo.ensure_gen2 if args.gen == 2 else zoo.ensure_zoo
    table = ensure(args.names or None, retrain=args.retrain)
    print(table.to_string(index=False))
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    """key=value pairs; values are read as JSON where possible (numbers, lists), else kept as strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"parameter {pair!r} is not of the form key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from . import runner

    jobs = runner.plan(runner.find_notebooks(args.notebooks), args.models, args.run, _parse_overrides(args.param),
                       Path(args.out))
    shared_figures = paths.FIGURES if not args.models else None  # per-model runs keep their own
    status = runner.run_jobs(jobs, force=args.force, figures=shared_figures)
    path = runner.report(jobs, Path(args.out) / args.run / "report.md")
    print(pd.DataFrame(status).to_string(index=False))
    print(f"report: {path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ..organisms import planted
    from . import runner

    start = time.perf_counter()
    print("== model organisms (trained on first use, then loaded) ==")
    print(zoo.ensure_zoo().to_string(index=False))
    if planted.NAME not in available_organisms():
        planted.train_planted()
    jobs = runner.plan(runner.find_notebooks(), None)
    status = runner.run_jobs(jobs, force=args.force, figures=paths.FIGURES)
    path = runner.report(jobs, paths.RUNS / runner.DEFAULT_RUN / "report.md")
    print(pd.DataFrame(status).to_string(index=False))
    print(f"reproduction finished in {time.perf_counter() - start:.0f} s; report: {path}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from .. import plots
    from ..attribution import benchmark
    from ..results import write_json_atomic

    table = benchmark.suite(args.device, args.batch_size)
    out = Path(args.out)
    write_json_atomic(out / f"attribution_{args.device}.json", table)
    plots.save_fig(benchmark.plot(table), f"bench_attribution_{args.device}", out)
    print(table.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moescope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("organisms", help="train (if missing) and list the model organisms")
    p.add_argument("--gen", type=int, choices=[1, 2], default=1, help="generation: 1 (small zoo) or 2 (deep zoo)")
    p.add_argument("--names", nargs="*", choices=sorted(zoo.ZOO) + list(zoo.GEN2),
                   help="organisms of that generation (default: all)")
    p.add_argument("--retrain", action="store_true", help="train again even if saved and current")
    p.set_defaults(func=_organisms)
    p = sub.add_parser("attribute", help="LPI attribution of one prompt or a relation, written as CSV files")
    p.add_argument("--model", required=True, help="organism name, local path or Hugging Face id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt")
    what.add_argument("--relation", help="a relation name, paper task name or relation file")
    p.add_argument("--target", help="with --prompt: the gold object (default: the model's top-1 prediction)")
    p.add_argument("--target-mode", choices=["gold", "top1"], default="gold", help="with --relation (default gold)")
    p.add_argument("--samples", type=int, help="with --relation: the first N facts (default: all)")
    p.add_argument("--template", type=int, default=0, help="with --relation: prompt template index")
    p.add_argument("--top-neurons", type=int, help="keep the N best neurons per sample (default: all)")
    p.add_argument("--no-neurons", action="store_true", help="skip the neuron level")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--out", required=True, help="output folder for the CSV files")
    p.set_defaults(func=_attribute)
    p = sub.add_parser("benchmark", help="time neuron-level attribution (batched vs per-neuron loop)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=str(paths.BENCHMARKS))
    p.set_defaults(func=_benchmark)
    p = sub.add_parser("run", help="execute notebooks over models with papermill; resumable; writes a report")
    p.add_argument("--notebooks", nargs="*", help="notebook name prefixes, e.g. 10 40 (default: all)")
    p.add_argument("--models", nargs="*", help="organism names, local paths or hub ids (default: each notebook's own)")
    p.add_argument("--run", default="default", help="name of this batch (folder under --out)")
    p.add_argument("--out", default=str(paths.RUNS))
    p.add_argument("-p", "--param", action="append", default=[], help="notebook parameter key=value (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run notebooks already done")
    p.set_defaults(func=_run)
    p = sub.add_parser("reproduce", help="reproduce every finding of both papers on the organisms")
    p.add_argument("--force", action="store_true", help="re-run notebooks already done")
    p.set_defaults(func=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
