"""Tests of the synthetic DES-MoE domains and the general data (moescope.finetuning.domains)."""
from __future__ import annotations

import pytest

from moescope.finetuning import domains


@pytest.fixture(scope="module")
def corpus() -> domains.Corpus:
    return domains.corpus(n_train=64, n_val=8, n_test=16, n_text=50)


def test_splits_are_disjoint_sized_and_deterministic(corpus):
    again = domains.corpus(n_train=64, n_val=8, n_test=16, n_text=50)
    for name in domains.DOMAINS:
        split = corpus.domains[name]
        assert (len(split.train), len(split.val), len(split.test)) == (64, 8, 16)
        parts = [{e.prompt for e in part} for part in (split.train, split.val, split.test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert split == again.domains[name]
        assert all(e.domain == name for e in split.all())


def test_corpus_round_trips_through_json(corpus, tmp_path):
    path = domains.save_corpus(corpus, tmp_path / "corpus.json")
    again = domains.load_corpus(path)
    assert again == corpus and again.digest() == corpus.digest()


def test_domain_words_are_mostly_private(corpus):
    shared_function_words = {":", "=", ";", "?", ".", "->", "-", ">", "with", "case", "verdict"}
    vocab = {d: {w for e in s.train for w in f"{e.prompt} {e.answer}".split()} - shared_function_words
             for d, s in corpus.domains.items()}
    for a in domains.DOMAINS:
        for b in domains.DOMAINS:
            if a < b:
                assert not vocab[a] & vocab[b], (a, b, vocab[a] & vocab[b])


def test_answers_follow_their_rules(corpus):
    for ex in corpus.domains["math"].train:
        _, _, op, x, y, _ = ex.prompt.split()
        f = (lambda v: (v + 1) % 13) if op == "inc" else (lambda v: 2 * v % 13)
        assert ex.answer == f"m{f(int(x[1:]))} m{f(int(y[1:]))}"
    for ex in corpus.domains["code"].train:
        items = ex.prompt.split()[3:6]
        assert ex.answer.split() == (items[::-1] if "reverse" in ex.prompt else items[1:] + items[:1])
    lexicon = {}
    for ex in corpus.domains["translation"].train:
        for src, tgt in zip(ex.prompt.split()[2:5], reversed(ex.answer.split())):
            assert lexicon.setdefault(src, tgt) == tgt
    assert len(set(lexicon.values())) == len(lexicon)  # bijective
    for ex in corpus.domains["summary"].train:
        assert ex.answer.split() == [w for w in ex.prompt.split() if w.startswith("k")]


def test_general_data_holds_facts_and_both_copy_texts(corpus):
    """Facts, the copy task over the domain vocabulary ('repeat') and over the facts' vocabulary ('echo'), each
    split 80/20 between pre-training (and the mix) and the retention test; general_part names each example's part."""
    parts = {p: [e for e in corpus.general_train if domains.general_part(e) == p] for p in domains.GENERAL_PARTS}
    assert len(parts["facts"]) > 100 and all(e.domain == domains.GENERAL for e in corpus.general_train + corpus.general_mix)
    assert all(not e.prompt.startswith(tuple(domains.COPY_VERBS)) for e in parts["facts"])
    vocab = set(domains.domain_vocabulary(corpus.domains))
    objects = {w for e in parts["facts"] for w in e.answer.split()}
    for part, words, n_train in (("text", vocab, 40), ("text_general", objects - vocab, 800 - 10)):
        train = {e.prompt for e in parts[part]}
        mix = [e for e in corpus.general_mix if domains.general_part(e) == part]
        test = [e for e in corpus.general_test if domains.general_part(e) == part]
        assert len(train) == n_train and len(mix) == 40 and len(test) == 10
        assert {e.prompt for e in mix} <= train and not train & {e.prompt for e in test}
        assert all(e.answer == " ".join(e.prompt.split()[1:3]) for e in parts[part] + test)
        assert all(w in words for e in parts[part] + test for w in e.answer.split())
    with pytest.raises(ValueError, match="unknown copy verb 'say'"):
        domains.text_examples(["a", "b"], 1, verb="say")
    with pytest.raises(ValueError, match="n_echo must exceed the 10 held-out echo prompts; got 10"):
        domains.corpus(n_train=8, n_val=2, n_test=2, n_text=50, n_echo=10)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown domain"):
        domains.domain_split("poetry")
    with pytest.raises(ValueError, match="distinct examples"):
        domains.domain_split("math", n_train=400, n_val=0, n_test=100)
