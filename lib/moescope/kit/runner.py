"""Batch execution of the notebooks with papermill, per model, with resume and timeouts (the report: :mod:`.report`).

A notebook whose ``parameters`` cell defines ``model`` runs once per model; one that defines ``models`` runs
once with the whole list. Each run writes ``<out>/<run>/<model folder>/<notebook>.ipynb`` (executed copy, written to a
temporary file and renamed on success), the notebook's ``<stem>.metrics.json`` and its figures; a finished run
leaves a ``<stem>.done.json`` stamp with its parameters, so an interrupted batch resumes where it stopped.

A batch never hangs and never stops on one notebook: every cell runs under a timeout, a kernel that dies is
noticed within a second, and the job is recorded as failed (``<stem>.failed.json`` with a one-line reason, the
partial copy as ``<stem>.failed.ipynb``) before the batch goes on to the next job (or stops, with
``fail_fast``). Failed jobs run again on the next call. Kernels start with the pinned CPU numerics
(:data:`moescope.numerics.PINNED`), the job's figure folder and ``MOESCOPE_HEADLESS=1``; the runner's own
``os.environ`` is the same after a job as before.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import pandas as pd
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from nbconvert import HTMLExporter
from tqdm.auto import tqdm
from traitlets import DottedObjectName, Type, Unicode
from traitlets.config import Config

from .. import numerics, paths
from ..frontend import HEADLESS
from ..results import write_csv_atomic, write_json_atomic, write_text_atomic

DEFAULT_RUN = "default"
#: seconds one cell may run; the slowest shipped cell (62_desmoe_forgetting_vs_domains, training) takes ~1100 s
DEFAULT_CELL_TIMEOUT = 1800
#: seconds a waiting kernel client sleeps at most before it looks at its socket again
POLL_SLICE = 1.0
#: parameters the runner sets itself, and the option that sets them
RESERVED = {"out_dir": "--out", "model": "--models", "models": "--models", "numerics": "--numerics"}


class PlanError(ValueError):
    """A batch cannot be planned: a selection matches no notebook, or a parameter is unknown or mistyped."""


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
    def failure(self) -> Path:
        return self.folder / f"{self.notebook.stem}.failed.json"

    @property
    def key(self) -> str:
        src = hashlib.sha256(self.notebook.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps([src, self.params], sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        return self.stamp.is_file() and json.loads(self.stamp.read_text()).get("key") == self.key

    def outcome(self) -> dict | None:
        """The recorded result of this job's current version: the done or failed stamp, None if never run."""
        for path in (self.stamp, self.failure):
            if path.is_file():
                stamp = json.loads(path.read_text())
                if stamp.get("key") == self.key:
                    return stamp
        return None


def find_notebooks(selection: list[str] | None = None, folder: Path = paths.NOTEBOOKS) -> list[Path]:
    """Notebooks in ``folder``, optionally only those whose name starts with one of ``selection``."""
    found = sorted(Path(folder).glob("[0-9]*.ipynb"))
    if not found:
        raise PlanError(f"no notebook (named like 10_name.ipynb) in {folder}; give the folder with --notebook-dir")
    if not selection:
        return found
    missing = [s for s in selection if not any(nb.name.startswith(s) for nb in found)]
    if missing:
        raise PlanError(f"no notebook in {folder} starts with {', '.join(map(repr, missing))}; available: "
                        f"{', '.join(nb.stem for nb in found) or 'none'}")
    return [nb for nb in found if any(nb.name.startswith(s) for s in selection)]


def notebook_parameters(notebook: Path) -> dict:
    """Default values of the notebook's ``parameters`` cell (None where a default is not a plain literal)."""
    import papermill  # papermill (nbformat, jsonschema) takes seconds to import: only when notebooks are used

    params = papermill.inspect_notebook(str(notebook))
    return {name: _literal(p["default"]) for name, p in params.items()}


def _literal(source: str):
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return None


def _type_matches(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_overrides(overrides: dict, defaults: dict[Path, dict]) -> None:
    """Raise PlanError for a parameter the runner sets itself, one no selected notebook has, or one whose value
    has another type than the notebook's default."""
    known = sorted({name for names in defaults.values() for name in names} - set(RESERVED))
    for name, value in overrides.items():
        if name in RESERVED:
            raise PlanError(f"parameter {name!r} is set by the runner; use {RESERVED[name]} instead of -p {name}=...")
        if not any(name in names for names in defaults.values()):
            raise PlanError(f"unknown parameter {name!r}: the selected notebooks' parameters are {', '.join(known)}")
        for nb, names in defaults.items():
            if name in names and not _type_matches(names[name], value):
                raise PlanError(f"parameter {name!r} of {nb.stem} expects {type(names[name]).__name__} "
                                f"(default {names[name]!r}), got {value!r}")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_folder(model: str) -> str:
    """The run folder's name for ``model``, one path component that cannot leave the run folder.

    A local folder (an existing path, an absolute path, or one with ``.``/``..`` parts) becomes its last name plus
    the first 8 hex digits of the sha256 of its resolved absolute path, so two folders with the same last name do
    not collide; a hub id ``org/name`` becomes ``org--name`` (the hub cache's convention); an organism name stays
    as it is. Characters other than letters, digits and ``._-`` become ``_``.
    """
    path, parts = Path(model).expanduser(), Path(model).parts
    if path.exists() or path.is_absolute() or model.startswith("~") or any(p in (".", "..") for p in parts):
        resolved = path.resolve()
        name = _SAFE.sub("_", resolved.name) or "root"
        return f"{name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"
    return _SAFE.sub("_", "--".join(parts)).lstrip(".") or "model"


def check_run_name(run: str) -> str:
    """``run``, if it is one plain folder name (letters, digits, ``._-``, not starting with a dot) or ``""`` (the
    jobs' folders directly under the output folder); else PlanError."""
    if run.startswith(".") or _SAFE.search(run):
        raise PlanError(f"run name {run!r} is not a plain folder name (letters, digits, '.', '_', '-'; not starting "
                        "with '.'); it names the folder under --out")
    return run


def folder_label(folder: Path) -> str:
    """The model of a run's model folder as the user wrote it (from its jobs' stamps), else the folder's name."""
    for stamp in sorted(Path(folder).glob("*.done.json")) + sorted(Path(folder).glob("*.failed.json")):
        model = json.loads(stamp.read_text()).get("params", {}).get("model")
        if isinstance(model, str):
            return model
    return Path(folder).name


def plan(notebooks: list[Path], models: list[str] | None, run: str = DEFAULT_RUN, overrides: dict | None = None,
         runs_dir: Path = paths.RUNS) -> list[Job]:
    """Jobs for ``notebooks`` x ``models`` (None: each notebook's own default model).

    Every job writes under ``<runs_dir>/<run>/<model_folder(model)>/``; its label (in the status table and the
    report) is the model as given. ``overrides`` go to every notebook that has the parameter; one that no notebook
    has is an error. A notebook with a ``numerics`` parameter gets the numerics its kernel computes with.
    """
    overrides = overrides or {}
    defaults = {nb: notebook_parameters(nb) for nb in notebooks}
    check_overrides(overrides, defaults)
    jobs = []
    root = Path(runs_dir).resolve() / check_run_name(run)
    for nb, names in defaults.items():
        base = {k: v for k, v in overrides.items() if k in names}
        if models and "model" in names:
            targets = [(m, {"model": m}) for m in models]
        elif models and "models" in names:
            targets = [("all", {"models": list(models)})]
        else:
            targets = [("default", {})]
        for label, extra in targets:
            folder = root / model_folder(label)
            params = base | extra | {"out_dir": str(folder)}
            if "numerics" in names:  # the kernel computes with the runner's numerics (kernel_env): say so
                params["numerics"] = numerics.current()
            jobs.append(Job(nb, params, folder, folder / "figures", label))
    return jobs


class _PolledChannel(AsyncZMQSocketChannel):
    """A kernel channel whose waits look at the socket at least every POLL_SLICE seconds.

    A zmq socket signals readiness edge-triggered. When nbclient stands in for a front end's Output widget it
    sends on the shell socket while waiting on it, and that send can swallow the wake-up: the execute reply is
    in the socket but a wait without a deadline never returns (the kernel sits idle, papermill waits forever).
    A wait with a deadline re-checks the socket when the deadline passes, so slicing every wait bounds such a
    lost wake-up to one slice.
    """

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else min(POLL_SLICE, max(0.0, deadline - time.monotonic()))
            try:
                return await super().get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class _Client(AsyncKernelClient):
    shell_channel_class = Type(_PolledChannel)
    iopub_channel_class = Type(_PolledChannel)


class JobKernelManager(AsyncKernelManager):
    """The kernel manager of the runner's jobs: its clients poll their sockets in slices (see _PolledChannel), and
    the kernel's own stdout/stderr (start-up warnings, crash messages) go to ``kernel_log``, not the terminal."""

    client_class = DottedObjectName(f"{__name__}._Client")
    client_factory = Type(_Client)
    kernel_log = Unicode("", config=True, help="file for the kernel process's stdout and stderr ('' = inherit)")

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if not self.kernel_log:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        with open(self.kernel_log, "ab") as log:  # the kernel keeps its own copy of the descriptor
            await super()._async_launch_kernel(kernel_cmd, **kw, stdout=log, stderr=log)
        _KERNELS[self.kernel_log] = self

    def kill_now(self) -> None:
        """Kill the kernel process at once (from any thread); the client notices a dead kernel within a second."""
        process = getattr(self.provisioner, "process", None)
        if process is not None and process.poll() is None:
            process.kill()


#: kernel_log -> manager of the kernel a job is running, for Ctrl-C (kernels run in their own session: the
#: terminal's interrupt does not reach them)
_KERNELS: dict[str, JobKernelManager] = {}


def _execute_interruptibly(log: Path, **kwargs) -> None:
    """papermill.execute_notebook in a worker thread, so that Ctrl-C reaches the runner (nbclient's own handler does
    not stop a running cell): on Ctrl-C the job's kernel is killed, the worker ends, KeyboardInterrupt goes on."""
    import papermill

    with ThreadPoolExecutor(1, thread_name_prefix="papermill") as pool:
        future = pool.submit(papermill.execute_notebook, **kwargs)
        try:
            future.result()
        except KeyboardInterrupt:
            while not future.done():  # the kernel may still be starting: kill it once it is there
                if str(log) in _KERNELS:
                    _KERNELS[str(log)].kill_now()
                wait([future], timeout=0.5)
            raise
        finally:
            _KERNELS.pop(str(log), None)


def kernel_env(figures: Path) -> dict[str, str]:
    """What a job's kernel gets on top of the runner's environment: pinned numerics (unless opted out), the
    figure folder, and the headless flag (no live front end: notebooks render static views, no widgets)."""
    env = {} if os.environ.get(numerics.OPT_OUT) == "1" else dict(numerics.PINNED)
    return env | {"MOESCOPE_FIGURES": str(figures), HEADLESS: "1"}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` inside the block (the kernel inherits it), restored exactly after."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class JobFailed(RuntimeError):
    """A job did not finish; ``reason`` is one line, ``applicable`` is False for an ArchitectureError."""

    def __init__(self, reason: str, applicable: bool = True):
        super().__init__(reason)
        self.reason, self.applicable = reason, applicable
        self.seconds: float | None = None

    @property
    def status(self) -> str:
        return f"failed: {self.reason}" if self.applicable else f"not applicable: {self.reason}"


def _one_line(text: str, width: int = 300) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(running: dict) -> str:
    """'cell 5 (`its first line`)', counted in the executed copy, for failure reasons."""
    if "index" not in running:
        return "the kernel, before the first cell,"
    first = next((line for line in running["source"].splitlines() if line.strip() and not line.startswith("#")), "")
    return f"cell {running['index']} (`{_one_line(first, 40)}`)"


def _reason(err: BaseException, cell: str, cell_timeout: float, log: Path) -> JobFailed:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        if err.ename == "ArchitectureError":
            return JobFailed(_one_line(err.evalue), applicable=False)
        return JobFailed(f"{cell} raised {_one_line(f'{err.ename}: {err.evalue}')}")
    if isinstance(err, CellTimeoutError):
        if "IOPub" in str(err):
            return JobFailed(f"{cell}: the kernel sent no output for too long after the cell finished")
        return JobFailed(f"{cell} did not finish within the {cell_timeout:g} s cell timeout (stuck, or slower than "
                         "the timeout: then raise --cell-timeout)")
    if isinstance(err, DeadKernelError):
        return JobFailed(f"the kernel died during {cell} (crashed, exited or was killed, e.g. out of memory; its "
                         f"log: {log.name})")
    if isinstance(err, RuntimeError) and "Kernel didn't respond" in str(err):
        return JobFailed(f"the kernel did not start: {_one_line(err)} (its log: {log.name})")
    return JobFailed(f"{cell}: {type(err).__name__}: {_one_line(err)}")


def execute(job: Job, figures: Path | None = None, cell_timeout: float = DEFAULT_CELL_TIMEOUT) -> float:
    """Run one job with papermill; returns seconds. Raises JobFailed with a one-line reason, after recording it in
    ``<stem>.failed.json`` and keeping the partial copy as ``<stem>.failed.ipynb``. The executed copy and the
    done stamp appear only on success; figures go to ``figures`` or the job's own folder."""
    job.folder.mkdir(parents=True, exist_ok=True)
    tmp = job.output.with_suffix(".tmp.ipynb")
    log = job.folder / f"{job.notebook.stem}.kernel.log"
    log.unlink(missing_ok=True)
    running: dict = {}
    start = time.perf_counter()
    try:
        with _environ(kernel_env(figures or job.figures)):
            _execute_interruptibly(
                log, input_path=str(job.notebook), output_path=str(tmp), parameters=job.params,
                cwd=str(job.notebook.parent), kernel_name="python3", progress_bar=False,
                execution_timeout=cell_timeout, iopub_timeout=30, kernel_manager_class=JobKernelManager,
                config=Config({"JobKernelManager": {"kernel_log": str(log)}}),
                on_cell_execute=lambda cell, cell_index: running.update(index=cell_index, source=cell.source))
    except (Exception, KeyboardInterrupt) as err:
        failed = JobFailed("interrupted (Ctrl-C)") if isinstance(err, KeyboardInterrupt) else \
            _reason(err, _cell(running), cell_timeout, log)
        failed.seconds = round(time.perf_counter() - start, 1)
        if tmp.exists():  # keep the partial copy, with the traceback, for inspection
            os.replace(tmp, job.output.with_suffix(".failed.ipynb"))
        write_json_atomic(job.failure, {"key": job.key, "params": job.params, "status": failed.status,
                                        "seconds": failed.seconds})
        if isinstance(err, KeyboardInterrupt):
            raise
        raise failed from err
    os.replace(tmp, job.output)
    log.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    write_json_atomic(job.stamp, {"key": job.key, "params": job.params, "status": "ran", "seconds": round(seconds, 1)})
    job.failure.unlink(missing_ok=True)
    return seconds


def _row(job: Job, status: str, seconds: float | None = None) -> dict:
    return {"notebook": job.notebook.name, "model": job.label, "status": status, "seconds": seconds}


def run_jobs(jobs: list[Job], force: bool = False, figures: Path | None = None,
             cell_timeout: float = DEFAULT_CELL_TIMEOUT, fail_fast: bool = False,
             status_file: Path | None = None) -> list[dict]:
    """Execute the jobs not already done (all with ``force``), with a progress bar; returns a status per job:
    "ran", "cached", "failed: <reason>", "not applicable: <reason>" (an ArchitectureError: an MoE-only analysis
    given a dense model, ...) or "not run: ..." (after a failure with ``fail_fast``). ``status_file`` (CSV) is
    rewritten after every job."""
    status: list[dict] = []
    bar = tqdm(jobs, desc="notebooks")
    for i, job in enumerate(bar):
        bar.set_postfix_str(f"{job.label}/{job.notebook.name}")
        if job.is_done() and not force:
            status.append(_row(job, "cached", json.loads(job.stamp.read_text())["seconds"]))
        else:
            try:
                status.append(_row(job, "ran", round(execute(job, figures, cell_timeout), 1)))
            except JobFailed as failed:
                status.append(_row(job, failed.status, failed.seconds))
                if fail_fast and failed.applicable:
                    status += [_row(j, "not run: the batch stopped at the first failure (--fail-fast)") for j in jobs[i + 1:]]
                    bar.close()
                    break
        if status_file is not None:
            write_csv_atomic(status_file, pd.DataFrame(status))
    if status_file is not None:
        write_csv_atomic(status_file, pd.DataFrame(status))
    return status



def render_html(notebook: Path) -> Path:
    """``<notebook>.html`` beside an executed notebook (nbconvert's HTMLExporter, the JupyterLab template; outputs
    as the run left them, images inline), written through a temporary file and a rename; returns its path."""
    body, _ = HTMLExporter().from_filename(str(notebook))
    return write_text_atomic(Path(notebook).with_suffix(".html"), body)
