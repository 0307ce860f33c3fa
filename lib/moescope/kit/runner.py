"""Batch execution of the notebooks with papermill, per model, with resume (the report: :mod:`.report`).

A notebook whose ``parameters`` cell defines ``model`` runs once per model; one that defines ``models`` runs
once with the whole list. Each run writes ``<out>/<model>/<notebook>.ipynb`` (executed copy, written to a
temporary file and renamed on success), the notebook's ``<stem>.metrics.json`` and its figures; a finished run
leaves a ``<stem>.done.json`` stamp with its parameters, so an interrupted batch resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import papermill
from tqdm.auto import tqdm

from .. import paths
from ..results import write_json_atomic

DEFAULT_RUN = "default"


@dataclass
class Job:
    """One notebook execution."""

    notebook: Path
    params: dict
    folder: Path
    figures: Path
    label: str = field(default="")

    @property
    def output(self) -> Path:
        return self.folder / self.notebook.name

    @property
    def stamp(self) -> Path:
        return self.folder / f"{self.notebook.stem}.done.json"

    @property
    def key(self) -> str:
        src = hashlib.sha256(self.notebook.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps([src, self.params], sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        return self.stamp.is_file() and json.loads(self.stamp.read_text()).get("key") == self.key


def find_notebooks(selection: list[str] | None = None) -> list[Path]:
    """Notebooks in paths.NOTEBOOKS, optionally only those whose name starts with one of ``selection``."""
    found = sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb"))
    if selection:
        found = [nb for nb in found if any(nb.name.startswith(s) for s in selection)]
        if not found:
            raise FileNotFoundError(f"no notebook in {paths.NOTEBOOKS} starts with any of {selection}")
    return found


def notebook_parameters(notebook: Path) -> dict:
    """Default values of the notebook's ``parameters`` cell."""
    params = papermill.inspect_notebook(str(notebook))
    return {name: p["default"] for name, p in params.items()}


def plan(notebooks: list[Path], models: list[str] | None, run: str = DEFAULT_RUN, overrides: dict | None = None,
         runs_dir: Path = paths.RUNS) -> list[Job]:
    """Jobs for ``notebooks`` x ``models`` (None: each notebook's own default model)."""
    jobs = []
    root = runs_dir / run
    for nb in notebooks:
        names = notebook_parameters(nb)
        base = {k: v for k, v in (overrides or {}).items() if k in names}
        if models and "model" in names:
            targets = [(m, {"model": m}) for m in models]
        elif models and "models" in names:
            targets = [("all", {"models": list(models)})]
        else:
            targets = [("default", {})]
        for label, extra in targets:
            folder = root / label
            params = base | extra | {"out_dir": str(folder)}
            jobs.append(Job(nb, params, folder, folder / "figures", label))
    return jobs


def execute(job: Job, figures: Path | None = None) -> float:
    """Run one job with papermill; returns seconds. The executed copy appears only on success (a failure leaves
    ``<name>.failed.ipynb``); figures go to ``figures`` or the job's own folder."""
    job.folder.mkdir(parents=True, exist_ok=True)
    tmp = job.output.with_suffix(".tmp.ipynb")
    os.environ["MOESCOPE_FIGURES"] = str(figures or job.figures)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(job.notebook), str(tmp), parameters=job.params, cwd=str(job.notebook.parent),
                                   kernel_name="python3", progress_bar=False)
    except Exception:
        if tmp.exists():  # keep the partial copy, with the traceback, for inspection
            os.replace(tmp, job.output.with_suffix(".failed.ipynb"))
        raise
    finally:
        os.environ.pop("MOESCOPE_FIGURES", None)
    os.replace(tmp, job.output)
    seconds = time.perf_counter() - start
    write_json_atomic(job.stamp, {"key": job.key, "params": job.params, "seconds": round(seconds, 1)})
    return seconds


def run_jobs(jobs: list[Job], force: bool = False, figures: Path | None = None) -> list[dict]:
    """Execute the jobs not already done (all with ``force``), with a progress bar; returns a status per job.

    A notebook that stops on an ArchitectureError (an MoE-only analysis given a dense model, or a shared-expert
    analysis given a model without one) is recorded as not applicable; any other error stops the batch.
    """
    status = []
    bar = tqdm(jobs, desc="notebooks")
    for job in bar:
        bar.set_postfix_str(f"{job.label}/{job.notebook.name}")
        if job.is_done() and not force:
            status.append({"notebook": job.notebook.name, "model": job.label, "status": "cached",
                           "seconds": json.loads(job.stamp.read_text())["seconds"]})
            continue
        try:
            seconds = execute(job, figures)
        except papermill.PapermillExecutionError as err:
            if err.ename != "ArchitectureError":
                raise
            status.append({"notebook": job.notebook.name, "model": job.label,
                           "status": f"not applicable: {err.evalue}", "seconds": None})
            continue
        status.append({"notebook": job.notebook.name, "model": job.label, "status": "ran", "seconds": round(seconds, 1)})
    return status
