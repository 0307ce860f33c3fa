"""Everything a command writes stays under the folder the user named: run folders named safely per model (local
paths, `..`, hub ids, two folders with the same last name), and writes are atomic."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_runner import write_notebook

from moescope import numerics, paths, plots
from moescope.kit import cli, runner
from moescope.organisms import training

SOURCE = [
    "from moescope import results, plots, verdicts as v\nimport matplotlib.pyplot as plt",
    "model = 'x'\nout_dir = '.'",
    "claim = v.Claim('named', 'P', 'Eq. 1', 'says', '1', 'len', v.at_least(1))\n"
    "plots.save_fig(plt.figure(), 'probe')\n"
    "results.record('01_out', {'claims': [v.decide(claim, {}, v.Estimate(len(model)), model=model)]}, out_dir)",
]


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (folders included as empty entries)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def world(tmp_path):
    """A notebook folder, two model folders with the same last name, and a working directory, each apart."""
    nbdir = tmp_path / "nbs"
    write_notebook(nbdir / "01_out.ipynb", SOURCE)
    models = [tmp_path / "lab" / "a" / "my-model", tmp_path / "lab" / "b" / "my-model"]
    for m in models:
        m.mkdir(parents=True)
        (m / "config.json").write_text('{"model_type": "llama"}')
    work = tmp_path / "work"
    work.mkdir()
    return tmp_path, nbdir, models, work


def test_model_folder_names_are_one_safe_component(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x" / "m").mkdir(parents=True)
    names = {m: runner.model_folder(m) for m in
             ["olmoe-like", "allenai/OLMoE-1B-7B-0924", str(tmp_path / "x" / "m"), "x/m", "../up/m", "/abs/missing"]}
    assert names["olmoe-like"] == "olmoe-like"
    assert names["allenai/OLMoE-1B-7B-0924"] == "allenai--OLMoE-1B-7B-0924"
    assert names[str(tmp_path / "x" / "m")] == names["x/m"]  # the same folder, however it is written
    assert names["x/m"].startswith("m-") and names["../up/m"].startswith("m-") and names["/abs/missing"].startswith("missing-")
    assert all("/" not in n and not n.startswith(".") for n in names.values())


def test_a_run_writes_only_under_out_and_a_second_out_runs_again(world, monkeypatch):
    tmp_path, nbdir, models, work = world
    monkeypatch.chdir(work)
    monkeypatch.delenv("MOESCOPE_FIGURES", raising=False)
    given = [str(models[0]), os.path.relpath(models[1], work), "org/name"]  # absolute, relative with .., hub id
    assert ".." in given[1]
    before = {m: _tree(m) for m in models}
    outside = _tree(tmp_path / "lab") | _tree(nbdir)
    code = cli.main(["run", "--notebook-dir", str(nbdir), "--models", *given, "--out", str(tmp_path / "out1"),
                     "--run", "r"])
    assert code == 0
    assert {m: _tree(m) for m in models} == before and _tree(tmp_path / "lab") | _tree(nbdir) == outside
    assert not any(work.iterdir())
    run = tmp_path / "out1" / "r"
    folders = sorted(p.name for p in run.iterdir() if p.is_dir())
    assert len(folders) == 3 and "org--name" in folders  # the two my-model folders do not collide
    for folder in folders:
        assert (run / folder / "01_out.ipynb").is_file() and (run / folder / "01_out.done.json").is_file()
        assert (run / folder / "figures" / "probe.png").is_file()
    status = (run / "status.csv").read_text()
    assert all(m in status for m in given)  # the models as the user wrote them
    report = (run / "report.md").read_text()
    assert f"({given[1]})" in report and "(org/name)" in report
    # a second run into another --out executes again (no done marker was left in a model folder)
    assert cli.main(["run", "--notebook-dir", str(nbdir), "--models", *given, "--out", str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out2" / "default" / "status.csv").read_text().count(",ran,") == 3


def test_a_run_name_that_would_leave_out_is_refused(world, capsys):
    tmp_path, nbdir, _, _ = world
    code = cli.main(["run", "--notebook-dir", str(nbdir), "--run", "../escape", "--out", str(tmp_path / "out")])
    assert code == cli.BAD_INPUT
    assert "run name '../escape' is not a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    """A figure that fails while being written leaves the previous file whole and no temporary file."""
    fig = plt.figure()
    plots.save_fig(fig, "f", tmp_path)
    old = (tmp_path / "f.png").read_bytes()

    def broken(self, path, **kw):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(fig), "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save_fig(fig, "f", tmp_path)
    assert (tmp_path / "f.png").read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]


def test_an_organism_is_saved_whole_or_not_at_all(tmp_path, monkeypatch):
    """Saving over an existing organism that fails midway keeps the old weights and card together."""
    from conftest import tiny_model

    model = tiny_model("olmoe", layers=1)
    folder = tmp_path / "org"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({"name": "old"}))

    def broken(self, path, *a, **kw):
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        training.save_organism(model, None, {"name": "new"}, folder, readme="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["org"]
    assert sorted(p.name for p in folder.iterdir()) == ["card.json"]


def _only_into(out: Path, tmp_path: Path, work: Path) -> list[str]:
    """The names written into ``out``, after checking nothing went into ``work`` or beside ``out``'s parent."""
    assert not any(work.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["deep", "work"]
    written = sorted(p.name for p in out.iterdir())
    assert written and not [n for n in written if "tmp" in n]  # atomic writes leave no temporary file
    return written


@pytest.fixture
def places(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "deep" / "out"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path, work, out


def test_attribute_writes_only_into_out(places):
    tmp_path, work, out = places
    argv = ["attribute", "--model", "olmoe-like", "--prompt", "The capital of Canada is", "--no-neurons"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "samples.csv" in _only_into(out, tmp_path, work)


def test_benchmark_writes_both_numerics_only_into_out(places):
    """`moescope benchmark` on a CPU: one call, two processes (pinned and native numerics), each kit time against
    the floor at native rates, their ratio on both rows (speed itself is measured, not asserted); files only in
    --out."""
    tmp_path, work, out = places
    argv = ["benchmark", "--models", "olmoe-like", "--prompts", "4", "--batch-size", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    assert _only_into(out, tmp_path, work) == ["attribution_cpu.json", "bench_attribution_cpu.png",
                                               "bench_attribution_cpu.svg"]
    table = pd.DataFrame(json.loads((out / "attribution_cpu.json").read_text()))
    assert list(table.numerics) == ["pinned", "native"] and table.model.nunique() == 1
    native = table[table.numerics == "native"].iloc[0]
    assert native.native_floor_ms_per_prompt == native.floor_ms_per_prompt
    assert table.ratio_to_native_floor.tolist() == pytest.approx(
        (table.kit_ms_per_prompt / native.floor_ms_per_prompt).tolist())
    assert table.pinned_over_native.tolist() == pytest.approx(
        [table.kit_ms_per_prompt.iloc[0] / native.kit_ms_per_prompt] * 2)
    assert (table.max_abs_err <= 1e-5).all()


def test_the_runner_tells_each_notebook_the_numerics_its_kernel_computes_with(monkeypatch, tmp_path):
    nb = paths.NOTEBOOKS / "00_quick_tour.ipynb"
    monkeypatch.delenv(numerics.OPT_OUT, raising=False)
    (job,) = runner.plan([nb], None, runs_dir=tmp_path)
    assert job.params["numerics"] == "pinned"
    monkeypatch.setenv(numerics.OPT_OUT, "1")
    (job,) = runner.plan([nb], None, runs_dir=tmp_path)
    assert job.params["numerics"] == "native"
    with pytest.raises(runner.PlanError, match="numerics"):
        runner.plan([nb], None, overrides={"numerics": "native"}, runs_dir=tmp_path)
