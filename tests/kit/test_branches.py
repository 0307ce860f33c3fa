"""The MKL-branch measurement: the pinned branch reproduces every recorded CPU kind, and the table counts a hash
that differs from a reference as different."""
import pytest

from moescope import fingerprint
from moescope.kit import branches


def test_the_pinned_branch_in_a_fresh_process_matches_every_recorded_cpu_kind():
    rows = branches.measure("COMPATIBLE")
    assert {r["method"] for r in rows} == set(branches.METHODS)
    t = branches.table(rows, fingerprint.recorded()).set_index("method")
    assert t.loc["float32", "same"] == t.loc["float32", "cases"] == 20
    assert t.loc["float32", "speedup"] == 1.0 and t.loc["float64", "tflops"] > 0 and t.loc["blocked", "tflops"] > 0
    assert (t.rows_same == t.rows).all() and t.loc["float32", "rows"] == branches.SHAPE[0]


def test_a_changed_hash_is_counted_as_different():
    ref = {"mm a": "1", "mm b": "2"}
    kinds = {"x": {"threads": {"2": ref}}, "y": {"threads": {"2": ref}}}
    measured = [{"branch": "COMPATIBLE", "method": "float32", "tflops": 1.0, "threads": 2, "hashes": ref, "rows": ["r", "s"]},
                {"branch": "COMPATIBLE", "method": "float64", "tflops": 0.5, "threads": 2, "hashes": {"mm a": "3"},
                 "rows": ["r", "s"]},
                {"branch": "AUTO", "method": "float32", "tflops": 4.0, "threads": 2, "hashes": {**ref, "mm b": "9"},
                 "rows": ["r", "x"]},
                {"branch": "AUTO", "method": "float64", "tflops": 2.0, "threads": 2, "hashes": {"mm a": "3"},
                 "rows": ["r", "s"]}]
    t = branches.table(measured, kinds).set_index(["branch", "method"])
    assert t.loc[("AUTO", "float32"), "same"] == 1 and t.loc[("AUTO", "float32"), "speedup"] == 4.0
    assert t.loc[("AUTO", "float32"), "all_branches"] == 1 == t.loc[("COMPATIBLE", "float32"), "all_branches"]
    assert t.loc[("AUTO", "float32"), "rows_same"] == 1 and t.loc[("AUTO", "float64"), "rows_same"] == 2
    assert t.loc[("AUTO", "float64"), "same"] == 1 == t.loc[("AUTO", "float64"), "cases"] == t.loc[("AUTO", "float64"), "all_branches"]


def test_an_unknown_branch_is_refused_by_name():
    with pytest.raises(ValueError, match="AVX7"):
        branches.measure("AVX7")
