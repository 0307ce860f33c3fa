"""The ground-truth study of paper 1 on planted organisms (attribution.ground_truth, notebook 45)."""
import ast
from pathlib import Path

import numpy as np
import pandas as pd

import moescope
from moescope.attribution import ground_truth


def test_organisms_never_import_a_paper():
    """organisms stay one layer under both papers: no module of it imports attribution or finetuning."""
    folder = Path(moescope.__file__).parent / "organisms"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                names = [name] + [f"{name}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(p in n for n in names for p in ("attribution", "finetuning")), (path.name, names)


def test_precision_at_k_and_random_controls():
    ranked = pd.DataFrame({"layer": [3, 3, 0, 3, 7], "expert": [4, 1, 2, 9, 6]})
    assert ground_truth.precision_at_k(ranked, {(3, 4), (3, 9), (3, 13)}, 1) == 1.0
    assert ground_truth.precision_at_k(ranked, {(3, 4), (3, 9), (3, 13)}, 4) == 0.5
    plant = {"A": {3: (4, 9, 13)}, "B": {7: (6, 12)}}
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = ground_truth.random_experts(plant, "A", 16, rng)
        assert list(drawn) == [3] and len(drawn[3]) == 3 and not set(drawn[3]) & {4, 9, 13}
    conditions = ground_truth.blocking_conditions(plant, "A", 16, draws=5, seed=0)
    kinds = [c.split()[0] for c, _ in conditions]
    assert kinds == ["planted"] + ["single"] * 3 + ["random"] * 5
    assert conditions == ground_truth.blocking_conditions(plant, "A", 16, draws=5, seed=0)


def test_without_a_plant_every_check_is_not_testable():
    rows = ground_truth.claim_rows(pd.DataFrame(), pd.DataFrame(), {}, 0, model="some/model")
    assert len(rows) == len(ground_truth.CLAIMS) and set(rows.model) == {"some/model"}
    assert all(v.startswith("not testable: the model lacks a planted ground truth") for v in rows.verdict)


def test_blocking_summary_averages_the_draws_of_each_condition_kind():
    """Random draws of one (plant, scored relation) collapse to one row: mean, min and max of their drops."""
    rows = [dict(blocked_for="A", condition=c, kind=c.split()[0], experts="{}", relation=r, planted_relation=r == "A",
                 mrr_before=0.8, mrr_after=0.8 - d, drop=d, rr_before=[], rr_after=[])
            for c, r, d in [("planted", "A", 0.5), ("random 0", "A", 0.1), ("random 1", "A", 0.3),
                            ("planted", "B", 0.02)]]
    got = ground_truth.summary(pd.DataFrame(rows, columns=ground_truth.BLOCKING_COLUMNS)).set_index(["kind", "relation"])
    assert got.loc[("random", "A"), "n"] == 2
    assert abs(got.loc[("random", "A"), "drop"] - 0.2) < 1e-12 and abs(got.loc[("random", "A"), "mrr_after"] - 0.6) < 1e-12
    assert (got.loc[("random", "A"), "drop_min"], got.loc[("random", "A"), "drop_max"]) == (0.1, 0.3)
    assert got.loc[("planted", "B"), "drop"] == 0.02 and not got.loc[("planted", "B"), "planted_relation"]
