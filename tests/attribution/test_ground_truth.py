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
    rows = ground_truth.claim_rows([], {}, model="some/model")
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


def test_prior_rr_is_the_prior_mrr_per_prompt():
    from moescope.attribution import tasks

    fr = tasks.facts(["country_capital", "fruit_inside_color"], 4)
    got = ground_truth.prior_rr(fr)
    assert len(got) == len(fr) and (got > 0).all() and (got <= 1).all()
    assert abs(got.mean() - tasks.prior_mrr(fr)) < 1e-12
    for stem, g in fr.groupby("relation"):
        assert abs(got[g.index].mean() - tasks.prior_mrr(g)) < 1e-12


def _facts():
    """Two relations of 6 prompts each, with real objects (the prior reads the relation files)."""
    from moescope.attribution import tasks

    fr = tasks.facts(["name_birthplace", "country_language"], 3, seed=0)
    return fr.groupby("relation", sort=False).head(6).reset_index(drop=True)


def _blocking(fr, rr, after):
    """A blocking table for the plant of name_birthplace: ``after[condition][relation]`` per-prompt rr."""
    rows = []
    for condition, per in after.items():
        for relation, idx in fr.groupby("relation", sort=False).indices.items():
            b, a = np.asarray(rr[relation]), np.asarray(per[relation])
            rows.append(dict(blocked_for="name_birthplace", condition=condition, kind=condition.split()[0],
                             experts="{}", relation=relation, planted_relation=relation == "name_birthplace",
                             mrr_before=b.mean(), mrr_after=a.mean(), drop=b.mean() - a.mean(), rr_before=list(b),
                             rr_after=list(a)))
    return pd.DataFrame(rows, columns=ground_truth.BLOCKING_COLUMNS)


PLANT = {"name_birthplace": {2: (3, 5)}}


def _rows(fr, rr, after, seeds=1):
    ev = ground_truth.seed_evidence(pd.DataFrame(), _blocking(fr, rr, after), fr, PLANT, 128, reps=200)
    return ground_truth.claim_rows([ev] * seeds, PLANT, model="m"), ev


def test_evidence_pairs_the_plant_with_matched_random_blocking_on_the_same_prompts():
    fr = _facts()
    rr = {"name_birthplace": [1.0, 1.0, 0.5, 1.0, 1.0, 0.5], "country_language": [1.0] * 6}
    after = {"planted": {"name_birthplace": [0.1] * 6, "country_language": [1.0] * 6},
             "single L2E3": {"name_birthplace": [0.9] * 6, "country_language": [1.0] * 6},
             "single L2E5": {"name_birthplace": [0.7] * 6, "country_language": [1.0] * 6},
             "random 0": {"name_birthplace": [0.8] * 6, "country_language": [0.9] * 6},
             "random 1": {"name_birthplace": [0.6] * 6, "country_language": [1.0] * 6}}
    rows, ev = _rows(fr, rr, after)
    e = ev["name_birthplace"]
    prior = ground_truth.prior_rr(fr)[:6]
    assert abs(e["known"]["kit"].value - (np.mean(rr["name_birthplace"]) - prior.mean())) < 1e-12
    assert abs(e["blocking"]["diff"].value - (0.7 - 0.1)) < 1e-12  # random (mean of 0.8, 0.6) minus plant
    assert abs(e["blocking"]["control"].value - (np.mean(rr["name_birthplace"]) - 0.7)) < 1e-12
    assert abs(e["redundant"]["diff"].value - (0.8 - 0.1)) < 1e-12  # singles (mean of 0.9, 0.7) minus plant
    assert abs(e["specific"]["kit"].value) < 1e-12 and abs(e["specific"]["control"].value - 0.05) < 1e-12
    verdict = dict(zip(rows.claim.str.split(" \\(").str[0], rows.verdict))
    assert verdict["planted: blocking the plant hurts its relation"] == "reproduced"
    assert verdict["planted: blocking the plant spares unplanted relations"] == "reproduced"
    assert verdict["planted: a redundant plant survives one expert"] == "reproduced"
    assert "paired over the same prompts" in rows.note[rows.claim.str.contains("hurts")].iloc[0]


def test_spares_is_two_sided():
    """Blocking a plant that *raises* an unplanted relation by 0.3 is not specific (a one-sided rule passed it)."""
    fr = _facts()
    rr = {"name_birthplace": [1.0] * 6, "country_language": [0.5] * 6}
    after = {"planted": {"name_birthplace": [0.1] * 6, "country_language": [0.8] * 6},
             "random 0": {"name_birthplace": [0.9] * 6, "country_language": [0.5] * 6}}
    rows, _ = _rows(fr, rr, after)
    spares = rows[rows.claim.str.contains("spares")].iloc[0]
    assert spares.kit < -0.25 and spares.verdict == "not reproduced"


def test_claims_need_a_known_relation_and_a_confirmed_plant():
    fr = _facts()
    prior = ground_truth.prior_rr(fr)
    # the relation scored exactly at its prior: every check is not testable, naming the prior
    rr = {"name_birthplace": list(prior[:6]), "country_language": [1.0] * 6}
    after = {"planted": {"name_birthplace": [0.0] * 6, "country_language": [1.0] * 6},
             "random 0": {"name_birthplace": list(prior[:6]), "country_language": [1.0] * 6}}
    rows, _ = _rows(fr, rr, after)
    assert all(v.startswith("not testable: the relation's MRR above its object-frequency prior") for v in rows.verdict)
    # known, but blocking the plant costs no more than blocking random experts: the plant is not confirmed
    rr = {"name_birthplace": [1.0] * 6, "country_language": [1.0] * 6}
    after = {"planted": {"name_birthplace": [0.5] * 6, "country_language": [1.0] * 6},
             "random 0": {"name_birthplace": [0.5] * 6, "country_language": [1.0] * 6}}
    rows, _ = _rows(fr, rr, after)
    verdict = dict(zip(rows.claim.str.split(" \\(").str[0], rows.verdict))
    assert verdict["planted: blocking the plant hurts its relation"] == "not reproduced"
    for claim in ("spares unplanted relations", "survives one expert", "ranks the plant first"):
        v = next(v for c, v in verdict.items() if claim in c)
        assert v.startswith("not testable: the plant's MRR drop above matched random blocking"), (claim, v)


def test_claims_over_seeds_resample_seeds_then_prompts():
    fr = _facts()
    rr = {"name_birthplace": [1.0, 0.5] * 3, "country_language": [1.0] * 6}
    after = {"planted": {"name_birthplace": [0.1, 0.2] * 3, "country_language": [1.0] * 6},
             "random 0": {"name_birthplace": [0.9, 0.4] * 3, "country_language": [1.0] * 6}}
    rows, _ = _rows(fr, rr, after, seeds=3)
    hurts = rows[rows.claim.str.contains("hurts")].iloc[0]
    assert hurts.over == "seeds x prompts" and hurts.n == 3 and hurts.verdict == "reproduced"
    assert "one model" not in hurts.note
