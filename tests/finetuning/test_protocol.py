"""The fair protocol: validation-only selection, the 1:1 general mix, resumable runs, and the any-model grid."""
from __future__ import annotations

import json

import pytest

from moescope import configs, verdicts
from moescope.finetuning import claims, domains, evidence, findings, protocol, tables
from moescope.finetuning.base import Base
from moescope.finetuning.batches import batch_cycle, domain_batches, encode
from moescope.vocab import word_tokenizer


class Poisoned(dict):
    """A score dict that fails the test if anything reads it."""

    def __getitem__(self, key):
        raise AssertionError(f"selection read a non-validation score ({key})")

    get = __getitem__


def test_best_checkpoint_uses_validation_only():
    history = [{"val": {"avg": v}, "test": Poisoned(), "general": Poisoned()} for v in (0.1, 0.5, 0.5, 0.3)]
    assert protocol.best_checkpoint([h["val"]["avg"] for h in history]) == 1  # earliest of the tied best
    with pytest.raises(ValueError, match="no checkpoints"):
        protocol.best_checkpoint([])


def test_chosen_rate_ignores_general_scores(tmp_path):
    grid = protocol.FULL.reduced(steps=4, seeds=(0,))
    grid = protocol.GridSpec(**{**grid.__dict__, "learning_rates": (("fft", (1e-3, 3e-3)),), "methods": ("fft",)})
    for spec in protocol.sweep_specs(grid):
        good = spec.lr == 3e-3  # better validation, far worse general score
        history = [{"step": 0, "val": {"avg": 0.0}, "test": {"avg": 0.0}, "general": {"all": 0.9}},
                   {"step": 4, "val": {"avg": 0.6 if good else 0.4}, "test": {"avg": 0.5},
                    "general": {"all": 0.1 if good else 0.9}}]
        (tmp_path / f"{spec.id}.json").write_text(json.dumps({"history": history}))
    assert protocol.chosen_rates(grid, tmp_path) == {"fft": 3e-3}
    assert protocol.choose_rate({1e-3: [0.5, 0.7], 3e-3: [0.6, 0.6]}) == 1e-3  # ties: the smaller rate


def test_general_data_is_mixed_one_to_one():
    corpus = domains.corpus(n_train=16, n_val=4, n_test=4, n_text=20)
    tok = word_tokenizer(corpus.texts())
    examples = corpus.domains["math"].train + corpus.domains["law"].train + corpus.general_mix
    data = encode(tok, examples)
    stream = domain_batches(data, 8, seed=0)
    seen = [next(stream) for _ in range(40)]
    assert [d for d, _ in seen[:4]] == ["law", "general", "math", "general"]
    rows = {d: sum(len(r) for x, r in seen if x == d) for d in ("law", "math", "general")}
    assert rows["general"] == rows["law"] + rows["math"]  # as many general rows as task rows
    assert batch_cycle(("a", "b")) == ["a", "b"]  # no general data: no mix


def test_retention_is_measured_on_general_data_the_mix_does_not_replay():
    corpus = domains.corpus(n_train=16, n_val=4, n_test=4, n_text=20)
    mix, test = {e.prompt for e in corpus.general_mix}, {e.prompt for e in corpus.general_test}
    assert mix and test and not mix & test
    assert test <= {e.prompt for e in corpus.general_train} | {e.prompt for e in corpus.general_test}
    facts_test = [e for e in corpus.general_test if domains.general_part(e) == "facts"]
    assert {e.prompt for e in facts_test} <= {e.prompt for e in corpus.general_train}  # memorised in pre-training


def test_grid_plan_covers_the_protocol():
    grid = protocol.FULL
    rates = {m: grid.rates(m)[0] for m in grid.methods}
    first, borrowing = protocol.sweep_specs(grid), protocol.sweep_specs(grid, rates)
    sweep, main = first + borrowing, protocol.main_specs(grid, rates)
    assert {len(grid.rates(m)) for m in grid.methods} == {4}
    assert len(sweep) == 4 * len(grid.methods) and all(len(s.domains) == 6 for s in sweep)
    assert {s.method for s in borrowing} == set(protocol.BACKBONE_RATE) and not {s.method for s in first} & set(
        protocol.BACKBONE_RATE)
    for s in sweep + main:  # the split-rate reading's backbone at full FT's chosen rate; every other run one rate
        assert s.backbone_lr == (rates[protocol.BACKBONE_RATE[s.method]] if s.method in protocol.BACKBONE_RATE
                                 else None)
    assert set(protocol.DESMOE_READINGS.values()) <= set(grid.curve_methods)
    for m in grid.curve_methods:
        for n in (2, 4, 6):
            runs = [s for s in main if s.method == m and len(s.domains) == n]
            assert {s.seed for s in runs} == {0, 1, 2}
            assert len({s.domains for s in runs}) == (1 if n == 6 else 2)  # two orders (one set at N=6)
    assert len(set(s.id for s in main)) == len(main)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random-weight MoE that is not a kit organism, saved with a tokenizer that covers the corpus."""
    folder = tmp_path_factory.mktemp("tiny-moe")
    tok = word_tokenizer(domains.corpus().texts())
    model = configs.build(configs.tiny_config("qwen2_moe", configs.Shape(vocab=len(tok), hidden=16, experts=8,
                                                                          expert_width=8, shared_width=16)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def small_corpus() -> domains.Corpus:
    full = domains.corpus(n_train=8, n_val=4, n_test=4, n_text=20)
    return domains.Corpus(full.domains, full.general_train, full.general_mix[:16],
                          full.general_test[:12] + full.general_test[-4:])


def test_any_model_tiny_grid_gives_a_verdict_for_every_claim(tiny_model_dir, tmp_path):
    base = Base(str(tiny_model_dir), small_corpus())
    spec = protocol.FULL.reduced(steps=2, seeds=(0, 1))
    protocol.run_grid(base, tmp_path, spec)
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    protocol.run_grid(base, tmp_path, spec)  # resume: nothing is redone
    assert sorted(p.name for p in tmp_path.glob("*.json")) == files
    grid = tables.load(tmp_path)
    model = json.loads((tmp_path / "chosen_rates.json").read_text())["model"]
    prem = findings.premise_scores(base, batch_size=8)
    rows = (evidence.premise_rows(prem, model) + evidence.table_rows(grid, model)
            + evidence.forgetting_rows(grid, model) + evidence.convergence_rows(grid, model, base.load())
            + evidence.ablation_rows(grid, model) + evidence.sequential_rows(grid, model))
    assert {r["claim"] for r in rows} == set(claims.REGISTRY)
    assert all(verdicts.is_verdict(r["verdict"]) for r in rows), [r["verdict"] for r in rows]
    assert set(grid.runs.method) == set(spec.methods) == set(protocol.METHODS) - set(
        list(protocol.DESMOE_READINGS.values())[1:])


def test_unknown_words_are_refused(tmp_path):
    tok = word_tokenizer(["only a few words"])
    model = configs.build(configs.tiny_config("olmoe", configs.Shape(vocab=len(tok))))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown token"):
        Base(str(tmp_path), small_corpus())
