"""The batch runner: per-model jobs, resume after interruption, re-run on changed parameters, report; failures
(errors, stuck cells, dead kernels) recorded with a one-line reason while the batch goes on; kernel environment."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from queue import Empty

import nbformat
import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

from moescope import numerics
from moescope.kit import report, runner

SOURCE = [
    "from moescope import results, verdicts as v",
    "model = 'x'\nscale = 2\nout_dir = '.'",
    "claim = v.Claim('double', 'P', 'Eq. 1', 'doubles', '2', 'scale x len', v.at_least(2))\n"
    "results.record('01_demo', {'claims': [v.decide(claim, {}, v.Estimate(scale * len(model)), model=model)]}, "
    "out_dir)",
]


def write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook(tmp_path):
    return write_notebook(tmp_path / "nb" / "01_demo.ipynb", SOURCE)


def test_plan_run_resume_and_report(notebook, tmp_path):
    runs = tmp_path / "runs"
    jobs = runner.plan([notebook], ["ab", "abc"], run="t", overrides={"scale": 3}, runs_dir=runs)
    assert [j.label for j in jobs] == ["ab", "abc"] and jobs[0].params == {"scale": 3, "model": "ab", "out_dir": str(runs / "t" / "ab")}
    status = runner.run_jobs(jobs, status_file=runs / "t" / "status.csv")
    assert [s["status"] for s in status] == ["ran", "ran"]
    assert (runs / "t" / "status.csv").read_text().count(",ran,") == 2
    assert json.loads((runs / "t" / "abc" / "01_demo.metrics.json").read_text())["claims"][0]["kit"] == 9
    assert (runs / "t" / "ab" / "01_demo.ipynb").is_file() and not list(runs.rglob("*.tmp*"))
    # an interrupted batch resumes: finished jobs are skipped, a lost one runs again
    (runs / "t" / "abc" / "01_demo.done.json").unlink()
    assert [s["status"] for s in runner.run_jobs(jobs)] == ["cached", "ran"]
    # new parameters mean new work
    again = runner.plan([notebook], ["ab"], run="t", overrides={"scale": 4}, runs_dir=runs)
    assert [s["status"] for s in runner.run_jobs(again)] == ["ran"]
    md = report.write(runs / "t")[0].read_text()
    assert "| double | Eq. 1 | ab | 2 | 8 |" in md and "| double | Eq. 1 | abc | 2 | 9 |" in md
    assert "| 01_demo | abc | ran |" in md  # the status table of the batch


@pytest.mark.parametrize("overrides, message", [
    ({"unknown": 1}, "unknown parameter 'unknown': the selected notebooks' parameters are scale"),
    ({"scale": "three"}, "parameter 'scale' of 01_demo expects int \\(default 2\\), got 'three'"),
    ({"out_dir": "x"}, "'out_dir' is set by the runner; use --out"),
    ({"model": "x"}, "'model' is set by the runner; use --models"),
])
def test_bad_parameters_are_refused_before_anything_runs(notebook, tmp_path, overrides, message):
    with pytest.raises(runner.PlanError, match=message):
        runner.plan([notebook], ["m"], overrides=overrides, runs_dir=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_unknown_notebook_selection_is_an_error(notebook):
    runner.find_notebooks(["01"], notebook.parent)
    with pytest.raises(runner.PlanError, match="no notebook in .* starts with '99_nothing'; available: 01_demo"):
        runner.find_notebooks(["01", "99_nothing"], notebook.parent)
    with pytest.raises(runner.PlanError, match="no notebook .* in .*nowhere; give the folder with --notebook-dir"):
        runner.find_notebooks(None, notebook.parent / "nowhere")


FAILING = SOURCE + [  # imports under load can take seconds: the timeout (8 s) leaves room for them
    "import os, time\n"
    "if model == 'error':\n    raise ValueError('broken\\ninput')\n"
    "if model == 'stuck':\n    time.sleep(10**6)\n"
    "if model == 'dead':\n    os._exit(3)",
]


def test_failures_are_recorded_in_one_line_and_the_batch_goes_on(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "01_demo.ipynb", FAILING)
    jobs = runner.plan([notebook], ["error", "stuck", "dead", "fine"], runs_dir=tmp_path / "runs")
    start = time.perf_counter()
    run_dir = jobs[0].folder.parent
    status = runner.run_jobs(jobs, cell_timeout=8, status_file=run_dir / "status.csv")
    assert time.perf_counter() - start < 240  # four kernels on a loaded 2-core machine; never the 10**6 s sleep
    error, stuck, dead, fine = (s["status"] for s in status)
    assert error == "failed: cell 4 (`import os, time`) raised ValueError: broken input"
    assert stuck.startswith("failed: cell 4 (`import os, time`) did not finish within the 8 s cell timeout")
    assert dead.startswith("failed: the kernel died during cell 4")
    assert fine == "ran" and jobs[3].is_done()
    # the dead kernel's own output is kept beside its job (not on the terminal); a finished job leaves none
    assert "its log: 01_demo.kernel.log" in dead and (jobs[2].folder / "01_demo.kernel.log").is_file()
    assert not (jobs[3].folder / "01_demo.kernel.log").exists()
    for job, line in zip(jobs[:3], (error, stuck, dead)):
        assert "\n" not in line and not job.is_done() and not job.output.exists()
        assert job.output.with_suffix(".failed.ipynb").is_file()
        assert json.loads(job.failure.read_text())["status"] == line
    md = report.write(run_dir)[0].read_text()
    assert f"| 01_demo | stuck | {stuck} |" in md
    # the next call runs the failed jobs again and keeps the finished one
    assert [s["status"][:6] for s in runner.run_jobs(jobs[:1] + jobs[3:], cell_timeout=8)] == ["failed", "cached"]


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "01_demo.ipynb", FAILING)
    jobs = runner.plan([notebook], ["dead", "fine"], runs_dir=tmp_path / "runs")
    status = runner.run_jobs(jobs, fail_fast=True)
    assert status[0]["status"].startswith("failed: the kernel died")
    assert status[1]["status"] == "not run: the batch stopped at the first failure (--fail-fast)"
    assert not jobs[1].folder.exists()


def test_architecture_error_marks_the_job_not_applicable(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from moescope import arch\nif model == 'dense':\n    raise arch.ArchitectureError('needs a Mixture-of-Experts model')"))
    nbformat.write(nb, notebook)
    jobs = runner.plan([notebook], ["dense", "moe"], runs_dir=tmp_path)
    status = runner.run_jobs(jobs, fail_fast=True)  # not applicable is no failure: the batch goes on
    assert status[0]["status"] == "not applicable: needs a Mixture-of-Experts model" and status[1]["status"] == "ran"


ENV_SOURCE = [
    "import json, os\nfrom moescope import plots\nimport matplotlib.pyplot as plt",
    "model = 'x'\nout_dir = '.'",
    "keys = {keys!r}\n"
    "json.dump({{k: os.environ.get(k) for k in keys}}, open(os.path.join(out_dir, 'env.json'), 'w'))\n"
    "plots.save_fig(plt.figure(), 'probe')",
]


def test_kernels_get_pinned_numerics_and_the_figure_folder_without_leaking_env(tmp_path, monkeypatch):
    keys = [*numerics.PINNED, "MOESCOPE_FIGURES", "MOESCOPE_HEADLESS"]
    notebook = write_notebook(tmp_path / "nb" / "01_env.ipynb", [s.format(keys=keys) for s in ENV_SOURCE])
    monkeypatch.setenv("MKL_CBWR", "AUTO")  # a job's kernel gets the pinned value all the same
    monkeypatch.delenv("MOESCOPE_HEADLESS", raising=False)
    before = dict(os.environ)
    jobs = runner.plan([notebook], ["a", "b"], runs_dir=tmp_path / "runs")
    shared = tmp_path / "shared_figures"
    assert [s["status"] for s in runner.run_jobs(jobs[:1]) + runner.run_jobs(jobs[1:], figures=shared)] == ["ran"] * 2
    assert dict(os.environ) == before
    for job, figures in zip(jobs, (jobs[0].figures, shared)):
        seen = json.loads((job.folder / "env.json").read_text())
        assert seen == {**numerics.PINNED, "MOESCOPE_FIGURES": str(figures), "MOESCOPE_HEADLESS": "1"}
        assert (figures / "probe.png").is_file() and (figures / "probe.svg").is_file()


def test_polled_channel_waits_in_slices_and_keeps_the_deadline(monkeypatch):
    client = runner.JobKernelManager(kernel_name="python3").client()  # what the runner's jobs wait with
    assert client.shell_channel_class is runner._PolledChannel and client.iopub_channel_class is runner._PolledChannel
    asked = []

    async def fake_get_msg(self, timeout=None):  # a socket whose wake-up was lost: never ready
        asked.append(timeout)
        await asyncio.sleep(timeout)
        raise Empty

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", fake_get_msg)
    monkeypatch.setattr(runner, "POLL_SLICE", 0.05)
    channel = runner._PolledChannel.__new__(runner._PolledChannel)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.2))
    assert 0.2 <= time.monotonic() - start < 1 and len(asked) >= 4 and max(asked) <= 0.05
    # no deadline: it keeps looking, one slice at a time, until a message is there
    asked.clear()

    async def ready_on_third(self, timeout=None):
        asked.append(timeout)
        if len(asked) < 3:
            raise Empty
        return {"msg": "reply"}

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", ready_on_third)
    assert asyncio.run(channel.get_msg(timeout=None)) == {"msg": "reply"} and asked == [0.05] * 3


def test_ctrl_c_stops_the_batch_and_kills_the_kernel(tmp_path):
    """Kernels run in their own session (the terminal's Ctrl-C does not reach them): the runner kills the job's
    kernel, records the job as interrupted and stops; the command exits with 130."""
    folder = tmp_path / "nb"
    write_notebook(folder / "01_stuck.ipynb", ["import os, time", "out_dir = '.'",
                                               "open(os.path.join(out_dir, 'pid'), 'w').write(str(os.getpid()))\n"
                                               "time.sleep(10**6)"])
    write_notebook(folder / "02_fine.ipynb", SOURCE)
    runs = tmp_path / "runs"
    cli = subprocess.Popen([sys.executable, "-m", "moescope", "run", "--notebook-dir", str(folder), "--out", str(runs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid_file, deadline = runs / "default" / "default" / "pid", time.monotonic() + 240
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 130 and err.splitlines()[-1] == "moescope: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    job = runner.plan([folder / "01_stuck.ipynb"], None, runs_dir=runs)[0]
    assert json.loads(job.failure.read_text())["status"] == "failed: interrupted (Ctrl-C)"
    assert not (runs / "default" / "default" / "02_fine.done.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(kernel, 0)
