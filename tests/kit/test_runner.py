"""The batch runner: per-model jobs, resume after interruption, re-run on changed parameters, report."""
import json

import nbformat
import pytest

from moescope.kit import report, runner

SOURCE = [
    ("code", "from moescope import results, verdicts as v"),
    ("code", "model = 'x'\nscale = 2\nout_dir = '.'"),
    ("code", "claim = v.Claim('double', 'P', 'Eq. 1', 'doubles', '2', 'scale x len', v.at_least(2))\n"
             "results.record('01_demo', {'claims': [v.decide(claim, {}, v.Estimate(scale * len(model)), model=model)]}, "
             "out_dir)"),
]


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for _, src in SOURCE]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb" / "01_demo.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def test_plan_run_resume_and_report(notebook, tmp_path):
    runs = tmp_path / "runs"
    jobs = runner.plan([notebook], ["ab", "abc"], run="t", overrides={"scale": 3, "unknown": 1}, runs_dir=runs)
    assert [j.label for j in jobs] == ["ab", "abc"] and jobs[0].params == {"scale": 3, "model": "ab", "out_dir": str(runs / "t" / "ab")}
    status = runner.run_jobs(jobs)
    assert [s["status"] for s in status] == ["ran", "ran"]
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


def test_failed_notebook_leaves_no_output(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('broken')"))
    nbformat.write(nb, notebook)
    job = runner.plan([notebook], ["m"], runs_dir=tmp_path)[0]
    with pytest.raises(Exception, match="broken"):
        runner.run_jobs([job])
    assert not job.output.exists() and not job.is_done()


def test_unknown_notebook_selection_is_an_error():
    with pytest.raises(FileNotFoundError, match="no notebook"):
        runner.find_notebooks(["99_nothing"])


def test_architecture_error_marks_the_job_not_applicable(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from moescope import arch\nif model == 'dense':\n    raise arch.ArchitectureError('needs a Mixture-of-Experts model')"))
    nbformat.write(nb, notebook)
    jobs = runner.plan([notebook], ["dense", "moe"], runs_dir=tmp_path)
    status = runner.run_jobs(jobs)
    assert status[0]["status"].startswith("not applicable: needs a Mixture-of-Experts") and status[1]["status"] == "ran"
