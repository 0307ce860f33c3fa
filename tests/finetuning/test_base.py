"""The shipped DES-MoE base organism: its layout, its corpus, and bit-identical re-creation (a 20-step training
prefix in `make test`, the full pre-training with `make test-retrain`)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import on_training_kind, same_weights

from moescope import paths
from moescope.finetuning import base, domains, experiments, protocol
from moescope.models import load_model
from moescope.organisms.training import PREFIX_STEPS, verify_prefix


def test_base_organism_mirrors_deepseek_v2_lite():
    card = json.loads((paths.ORGANISMS / base.NAME / "card.json").read_text())
    lm = load_model(base.NAME)
    assert type(lm.model).__name__ == "DeepseekV2ForCausalLM"
    layers = lm.model.model.layers
    assert not hasattr(layers[0].mlp, "experts")  # first layer dense, as in DeepSeek-V2-Lite
    assert all(hasattr(layer.mlp, "experts") and hasattr(layer.mlp, "shared_experts") for layer in layers[1:])
    assert card["architecture"]["experts"] == 16 and card["architecture"]["top_k"] == 2
    assert card["threads"] == base.THREADS and card["data_hash"] == base.shipped_corpus().digest()
    assert 0.5 < card["base_scores"]["general"]["all"] < 1.0  # room to forget, not at chance
    assert card["base_scores"]["test"]["avg"] < 0.05  # the domains are new to it


def test_shipped_corpus_matches_the_generators_for_the_domains():
    shipped = base.shipped_corpus()
    fresh = domains.domain_splits()
    assert shipped.domains == fresh


def test_the_base_is_current_only_for_the_corpus_it_was_trained_on(tmp_path, monkeypatch):
    """`desmoe-grid` pre-trains the base again when its card names another corpus than the shipped one."""
    assert base.is_current()
    other = domains.corpus(n_train=8, n_val=2, n_test=2, n_text=20, n_echo=20)
    monkeypatch.setattr(base, "CORPUS_FILE", domains.save_corpus(other, tmp_path / "corpus.json"))
    assert not base.is_current()


def test_retraining_prefix_matches_the_card():
    """The first steps of the pre-training give the weights the card recorded at that step of the full run: bit for
    bit on the CPU kind that trained it, within the card's calibrated tolerance on another."""
    card = json.loads((paths.ORGANISMS / base.NAME / "card.json").read_text())
    assert card["prefix_check"]["steps"] == PREFIX_STEPS
    verify_prefix(card["prefix_check"], base.prefix_check())


def test_a_full_run_records_the_prefix_only_run(tmp_path):
    """A shortened pre-training (the same code path) records at step 20 what the prefix-only run ends with; a run
    with another seed does not."""
    short = base.BaseSpec(steps=PREFIX_STEPS + 3)
    card = base.train_base(short, folder=tmp_path / "short")
    recorded = card["prefix_check"]
    assert recorded.pop("tolerance")["rtol"] > 0
    assert recorded == base.prefix_check(short)
    assert base.prefix_check(replace(short, seed=1))["sha256"] != recorded["sha256"]


@pytest.mark.slow
@pytest.mark.retrain
def test_retraining_the_base_reproduces_the_shipped_weights_exactly(tmp_path):
    on_training_kind(json.loads((paths.ORGANISMS / base.NAME / "card.json").read_text()))
    card = base.train_base(folder=tmp_path / base.NAME)
    assert same_weights(paths.ORGANISMS / base.NAME, tmp_path / base.NAME)
    shipped_card = json.loads((paths.ORGANISMS / base.NAME / "card.json").read_text())
    assert card["final_loss"] == shipped_card["final_loss"] and card["prefix_check"] == shipped_card["prefix_check"]


@pytest.mark.slow
def test_rerunning_a_cached_grid_run_gives_the_same_history():
    spec = protocol.sweep_specs(protocol.FULL)[0]
    cached = json.loads(protocol.run_file(experiments.GRID_FOLDER, spec).read_text())
    fresh = protocol.run_joint(experiments.base_for(), spec)
    strip = lambda h: [{k: v for k, v in row.items() if k != "train_seconds"} for row in h]  # noqa: E731
    assert strip(fresh["history"]) == strip(cached["history"])
