"""make test-gpu's comparator: the logic on the CPU (the GPU run itself needs a GPU)."""
import nbformat
import pytest

from moescope import paths
from moescope.kit import nbcheck

TOL = nbcheck.Tolerance("float32", rtol=0.01, atol=0.001)


def test_numbers_within_tolerance_pass_and_beyond_fail():
    stored = " sample_id  layer  gain\n         0      1  0.500\n         0      2 -0.250\n"
    assert nbcheck.compare_text(stored, stored.replace("0.500", "0.504"), TOL)["ok"]
    bad = nbcheck.compare_text(stored, stored.replace("0.500", "0.520"), TOL)
    assert not bad["ok"] and bad["worst"] == pytest.approx(0.02 / (0.001 + 0.005)) and "differs" in bad["reason"]
    assert not nbcheck.compare_text(stored, stored.replace("layer  gain\n         0      1", "layer  gain\n         0      2"), TOL)["ok"]


def test_text_must_match_but_column_widths_may_change():
    assert nbcheck.compare_text("verdict: reproduced (0.9)", "verdict:   reproduced  (0.90)", TOL)["ok"]
    out = nbcheck.compare_text("verdict: reproduced (0.9)", "verdict: not reproduced (0.9)", TOL)
    assert not out["ok"] and "text differs" in out["reason"]
    assert not nbcheck.compare_text("a 1 b 2", "a 1 b", TOL)["ok"]  # a number went missing


def test_sanitizers_remove_volatile_text():
    sanitizers = nbcheck.load_sanitizers()
    stored, new = "done 12.3it/s\nmrr 1.0", "done 99.9it/s\nmrr 1.0"
    assert not nbcheck.compare_text(stored, new, TOL)["ok"]
    assert nbcheck.compare_text(stored, new, TOL, sanitizers)["ok"]


def test_sanitizers_try_a_line_pattern_only_at_line_starts():
    """An unanchored leading ``.*`` is tried from every character of a line: on the one-line HTML of a long verdict
    table (120 kB in notebook 40) that is quadratic, about two minutes per nbval comparison."""
    for regex, _ in nbcheck.load_sanitizers():
        assert not regex.pattern.startswith(".*"), regex.pattern
    (progress, _), *_ = nbcheck.load_sanitizers()
    text = "<table>" + "<td>0.5</td>" * 10 + "</table>\n 50%|#####     | 5/10 [00:01<00:01, 4.1it/s]\nmrr 1.0"
    assert progress.sub("P", text) == "<table>" + "<td>0.5</td>" * 10 + "</table>\nP\nmrr 1.0"


def test_shipped_tolerances_cover_every_notebook():
    tols = nbcheck.load_tolerances()
    for nb in sorted(paths.NOTEBOOKS.glob("[0-9]*.ipynb")):
        tol = nbcheck.tolerance_for(nb.name, tols)
        assert tol.dtype == ("float32" if nb.name.startswith("6") else "bfloat16"), nb.name
        assert 0 < tol.rtol < 1 and 0 < tol.atol < 1


def _notebook(path, value_expr: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('device = "cpu"\ndtype = "float32"\nout_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("import torch"), params,
                nbformat.v4.new_code_cell(f"# NBVAL_CHECK_OUTPUT\nprint('third', {value_expr})"),
                nbformat.v4.new_code_cell("print('not checked', dtype)")]
    nbformat.write(nb, str(path))


def test_reexecution_in_bf16_is_compared_within_the_stated_tolerance(tmp_path):
    """A notebook stored in float32 and re-run by nbcheck in bf16 on the CPU: 1/3 rounds to 0.333984 (2e-3 off)."""
    import papermill

    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_third.ipynb", "round(torch.tensor(1 / 3, dtype=getattr(torch, dtype)).item(), 6)")
    papermill.execute_notebook(str(folder / "01_third.ipynb"), str(folder / "01_third.ipynb"), kernel_name="python3",
                               progress_bar=False)
    for rtol, expected in ((1e-4, False), (1e-2, True)):
        cfg = tmp_path / f"tol{rtol}.cfg"
        cfg.write_text(f"[default]\ndtype = bfloat16\nrtol = {rtol}\natol = 0\n")
        table = nbcheck.run("cpu", ["01"], cfg, tmp_path / f"out{rtol}", notebooks=folder)
        assert len(table) == 1 and bool(table.ok[0]) is expected, table
        assert (tmp_path / f"out{rtol}" / "nbcheck.csv").is_file()
    executed = nbformat.read(str(tmp_path / "out0.01" / "default" / "01_third.ipynb"), as_version=4)
    assert "0.333984" in executed.cells[-2].outputs[0]["text"]


def test_changed_cells_are_reported(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    _notebook(a, "1")
    _notebook(b, "2")
    table = nbcheck.compare_notebooks(a, b, TOL)
    assert not table.ok[0] and table.reason[0] == "cell source differs"
