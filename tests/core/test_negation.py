"""The paired negation check: pairs are built by a negation or an inverted condition, and the harness
scores a perfect ranker 1.0, a constant one and a ranker blind to the change at the random level, and
one that always prefers the original passage 0."""

from __future__ import annotations

import numpy as np
import pytest

from sidestep.eval.negation import (
    RANDOM_LEVEL,
    NegationPair,
    bm25_ranker,
    build_pairs,
    first_prob,
    pair_credits,
    random_ranker,
    run_negation,
    score_pairs,
)

PASSAGES = [
    ("p1", "The new vaccine is effective against the seasonal strain of influenza. It was tested on adults."),
    ("p2", "Patients treated with aspirin had fewer heart attacks during the first year of the study."),
    ("p3", "The bridge was closed to traffic because the river flooded the lower town last spring."),
    ("p4", "Short."),  # no sentence of six words: no pair
    ("p5", "Seedlings grow faster with extra light in the greenhouse during the cold winter months."),
]


@pytest.fixture(scope="module")
def pairs() -> list[NegationPair]:
    return build_pairs(PASSAGES, seed=0)


def test_pairs_differ_by_a_negation_or_condition_in_both_query_and_document(pairs):
    assert len(pairs) == 4 and {p.pair_id.split(":")[0] for p in pairs} == {"p1", "p2", "p3", "p5"}
    for p in pairs:
        assert p.kind in ("negation", "condition")
        q1, q2 = p.queries
        d1, d2 = p.docs
        assert q1 != q2 and d1 != d2 and q1 in d1 and q2 in d2  # each query is a crop of its own document
        assert d1 in dict(PASSAGES).values()  # query 1's document is the passage as written
        assert len(q1.split()) >= 4


def test_build_pairs_is_reproducible_and_capped(pairs):
    assert build_pairs(PASSAGES, seed=0) == pairs
    assert len(build_pairs(PASSAGES, n_pairs=2, seed=0)) == 2
    with pytest.raises(ValueError, match="unknown pair kinds"):
        build_pairs(PASSAGES, kinds=("antonym_typo",))


def _perfect(pairs):
    own = {q: d for p in pairs for q, d in zip(p.queries, p.docs, strict=True)}
    return lambda qs, cands: [np.asarray([1.0 if t == own[q] else 0.0 for t in c])
                              for q, c in zip(qs, cands, strict=True)]


def test_perfect_ranker_scores_one_and_constant_ranker_the_random_level(pairs):
    perfect, _ = score_pairs("perfect", pairs, _perfect(pairs))
    assert perfect.pairwise_accuracy == 1.0 and perfect.query_accuracy == 1.0
    const, _ = score_pairs("constant", pairs, lambda qs, cands: [np.zeros(len(c)) for c in cands])
    assert const.pairwise_accuracy == pytest.approx(RANDOM_LEVEL) and const.query_accuracy == pytest.approx(0.5)
    # a ranker that cannot tell the documents apart but always prefers the original passage: one query of each
    # pair right, no pair right
    orig = {p.docs[0] for p in pairs}
    biased, _ = score_pairs("original-first", pairs,
                            lambda qs, cands: [np.asarray([float(t in orig) for t in c]) for c in cands])
    assert biased.pairwise_accuracy == 0.0 and biased.query_accuracy == 0.5
    assert set(perfect.by_kind) == {p.kind for p in pairs}


def test_ties_count_as_a_coin_toss():
    assert first_prob(np.asarray([1.0, 1.0]), 0) == 0.5
    assert first_prob(np.asarray([2.0, 1.0]), 0) == 1.0 and first_prob(np.asarray([2.0, 1.0]), 1) == 0.0
    p = NegationPair("x", "negation", ("a", "b"), ("A", "B"), "")
    credit, per_q = pair_credits([p], [np.asarray([1.0, 0.0]), np.asarray([0.0, 0.0])])
    assert credit.tolist() == [0.5] and per_q.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="two per pair"):
        pair_credits([p], [np.asarray([1.0, 0.0])])


def test_random_and_bm25_rankers_run_and_are_reported_with_an_interval(pairs):
    res = run_negation(pairs, {"random": random_ranker(0), "bm25": bm25_ranker()})
    assert res["pairs"] == len(pairs) and set(res["rankers"]) == {"random", "bm25"}
    for s in res["rankers"].values():
        assert 0.0 <= s["ci95_low"] <= s["pairwise_accuracy"] <= s["ci95_high"] <= 1.0
    assert len(res["credits"]["bm25"]) == len(pairs)
