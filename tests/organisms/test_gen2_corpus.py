"""The gen-2 corpus and tokenizer: Zipf frequencies, held-out templates never trained on, multi-token subjects,
the first-token convention, determinism. No model is trained here."""
import math
from dataclasses import replace

import numpy as np
import pytest

from moescope import data, prompts
from moescope.organisms import corpus as C
from moescope.organisms import gen2
from moescope.organisms.tokenizer import bpe_tokenizer, tokenizer_hash


@pytest.fixture(scope="module")
def built():
    return gen2.gen2_data()


def test_zipf_counts_formula_and_shape(built):
    corpus, _ = built
    spec = corpus.spec
    for relation, g in corpus.facts.groupby("relation"):
        g = g.sort_values("rank")
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        assert list(g["count"]) == [max(spec.min_count, round(spec.max_count * r ** -spec.zipf)) for r in g["rank"]]
        assert g["count"].is_monotonic_decreasing and g["count"].iloc[0] == spec.max_count
        head = g[g["count"] > 3]  # above the rounding floor, log count falls linearly in log rank with slope -zipf
        slope = np.polyfit(np.log(head["rank"]), np.log(head["count"]), 1)[0]
        assert abs(slope + spec.zipf) < 0.1, (relation, slope)
    counts = corpus.train[corpus.train.kind == "fact"].groupby(["relation", "text"]).size()
    assert counts.sum() == corpus.facts["count"].sum()


def test_frequency_order_is_seeded_and_deterministic():
    rels = data.load_relations()
    a, b = C.Corpus(rels, C.CorpusSpec(seed=0)), C.Corpus(rels, C.CorpusSpec(seed=0))
    assert a.hash() == b.hash() and a.texts == b.texts
    c = C.Corpus(rels, C.CorpusSpec(seed=1))
    assert c.hash() != a.hash()
    assert not c.facts.set_index(["relation", "sample_id"])["rank"].equals(a.facts.set_index(["relation", "sample_id"])["rank"])


def test_heldout_templates_are_never_trained_on(built):
    corpus, _ = built
    texts = set(corpus.texts)
    for rel in corpus.relations:
        assert not set(corpus.templates[rel.stem]) & set(C.heldout_templates(rel))
    held = corpus.heldout()
    assert len(held) == sum(len(r) * len(C.heldout_templates(r)) for r in corpus.relations)
    trained_prompts = {t.rsplit(" ", 1)[0] for t in corpus.train[corpus.train.kind == "fact"].text}
    # no held-out prompt is the prompt of any training fact text
    leaked = [p for p in held.prompt if p in trained_prompts]
    assert not leaked, leaked[:5]
    # and no held-out prompt occurs inside any training text (general text included)
    everything = "\n".join(texts)
    assert not [p for p in set(held.prompt) if p in everything][:1]


def test_paper_task_heldout_prompts_use_only_trained_tokens(built):
    """The prompts the notebooks score (held-out templates of the paper's tasks) hold no token whose embedding was
    never trained as an input; across all relations only the digits of one substance_phase template are unseen."""
    corpus, tok = built
    trained = {i for ids in tok(corpus.texts)["input_ids"] for i in ids}
    held = corpus.heldout()
    unseen = {}
    for relation, g in held.groupby("relation"):
        ids = {i for row in tok(list(g.prompt))["input_ids"] for i in row} - trained
        if ids:
            unseen[relation] = sorted(tok.convert_ids_to_tokens(list(ids)))
    assert not set(unseen) & set(gen2.PAPER_RELATIONS), unseen
    assert unseen == {"substance_phase": ["0", "2"]}


def test_subjects_are_multi_token_and_objects_mostly_single(built):
    corpus, tok = built
    n_tokens = lambda s: len(tok(f" {s}", add_special_tokens=False)["input_ids"])  # noqa: E731
    subjects = corpus.facts.drop_duplicates("subject").subject
    assert np.mean([n_tokens(s) >= 2 for s in subjects]) >= 0.7
    assert all(n_tokens(s) >= 2 for s in corpus.facts[corpus.facts.relation == "name_birthplace"].subject)
    objects = sorted(set(corpus.facts.object))
    assert np.mean([n_tokens(o) == 1 for o in objects]) >= 0.9


def test_gold_first_token_is_the_leading_space_piece(built):
    corpus, tok = built
    assert tok("The capital of France is")["input_ids"][0] == tok.bos_token_id
    target = prompts.object_first_token(tok, "The capital of France is", "Paris")
    assert tok.convert_ids_to_tokens(target) == "ĠParis"
    assert tok.decode([target]) == " Paris"
    held = corpus.heldout()
    for relation, g in held[held.template == 0].groupby("relation"):
        first = [prompts.object_first_token(tok, p, o) for p, o in zip(g.prompt, g.object)]
        assert tok.unk_token_id not in first
        assert all(tok.decode([f]).startswith(" ") for f in first)
        assert len(set(first)) == g.object.nunique(), f"{relation}: two objects share a first token"
        # it is the first token of " object" continuing the prompt, which the model would emit next
        assert first[0] == tok(g.prompt.iloc[0] + " " + g.object.iloc[0])["input_ids"][len(tok(g.prompt.iloc[0])["input_ids"])]


def test_tokenizer_training_is_deterministic(built):
    corpus, tok = built
    again = bpe_tokenizer(corpus.texts + [f" {o}" for o in sorted(set(corpus.facts.object))] * gen2.OBJECT_WORD_COUNT,
                          len(tok))
    assert tokenizer_hash(again) == tokenizer_hash(tok)


def test_curriculum_batches_start_with_general_text(built):
    corpus, tok = built
    lengths = np.array([len(i) for i in tok(corpus.texts)["input_ids"]])
    import torch
    spec = replace(gen2.Gen2Spec("x", "llama", None, ""), max_steps=120, curriculum=60, batch=64)
    order = list(gen2.batches(corpus, spec, torch.tensor(lengths)))
    facts = set(np.flatnonzero(corpus.train.kind.to_numpy() == "fact"))
    assert len(order) == 120
    assert not any(facts & set(b.tolist()) for b in order[:60])
    assert sum(len(facts & set(b.tolist())) for b in order[60:]) > 0
    assert all(torch.equal(a, b) for a, b in zip(order, gen2.batches(corpus, spec, torch.tensor(lengths))))
    # bucketing: a batch's texts have similar lengths (padding is a small share of its tokens)
    pad = [1 - lengths[b].mean() / lengths[b].max() for b in (x.numpy() for x in order)]
    assert np.mean(pad) < 0.25


def test_lr_schedule_warms_up_then_decays():
    spec = gen2.Gen2Spec("x", "llama", None, "", max_steps=100, warmup=10, final_lr=0.1)
    s = gen2.lr_scale(spec)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert all(s(i) >= s(i + 1) for i in range(10, 99))
    assert s(100) == pytest.approx(0.1) and math.isclose(s(55), 0.55, abs_tol=0.01)
