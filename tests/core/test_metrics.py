"""The one nDCG implementation (sidestep.eval.metrics), each of its forms checked against ir_measures
(trec_eval's ndcg_cut) on random runs with graded relevance, tied scores, queries without any relevant
document, queries without judgments and queries without a ranking."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from ir_measures import nDCG

from sidestep.eval.metrics import dcg, mean_ndcg, mean_ndcg_rows, ndcg, ndcg_of_scores

TOL = 1e-9


def _reference(qrels: dict, run: dict, k: int = 10) -> float:
    return float(ir_measures.calc_aggregate([nDCG @ k], qrels, run)[nDCG @ k])


def _doc(j: int) -> str:
    """Document ids whose descending order (trec_eval's tie-break) is ascending column order."""
    return f"d{999 - j:03d}"


def _random_case(rng: np.random.Generator, tied: bool) -> tuple[dict, dict]:
    run, qrels = {}, {}
    for q in range(int(rng.integers(1, 25))):
        qid = f"q{q}"
        docs = rng.choice(200, size=int(rng.integers(0, 60)), replace=False)
        scores = rng.normal(size=len(docs))
        if tied:
            scores = np.round(scores, 1)  # many equal scores per list
        if rng.random() < 0.9:
            run[qid] = {f"doc{int(d)}": float(s) for d, s in zip(docs, scores, strict=True)}
        kind = rng.random()
        if kind < 0.1:
            continue  # no judgments at all: ignored by both
        if kind < 0.2:
            qrels[qid] = {}  # judged, nothing relevant
        elif kind < 0.3:
            qrels[qid] = {f"doc{int(d)}": 0 for d in rng.choice(200, size=5, replace=False)}  # only non-relevant
        else:
            judged = rng.choice(200, size=int(rng.integers(1, 15)), replace=False)
            qrels[qid] = {f"doc{int(d)}": int(rng.integers(0, 4)) for d in judged}  # graded 0..3
    for extra in range(int(rng.integers(0, 3))):
        run[f"unjudged{extra}"] = {"doc1": 1.0}  # ranked but never judged: ignored by both
    return qrels, run


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("k", [1, 3, 10, 20])
def test_mean_ndcg_equals_ir_measures_on_random_runs(tied, k):
    rng = np.random.default_rng(100 * k + tied)
    for _ in range(40):
        qrels, run = _random_case(rng, tied)
        if not qrels:  # no query judged at all: ir_measures has no mean (NaN), ours is 0.0
            assert np.isnan(_reference(qrels, run, k)) and mean_ndcg(run, qrels, k) == 0.0
            continue
        assert mean_ndcg(run, qrels, k) == pytest.approx(_reference(qrels, run, k), abs=TOL)


def test_mean_ndcg_edge_cases_equal_ir_measures():
    cases = [
        ({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}),  # tie: trec_eval ranks "b" before "a"
        ({"q": {"b": 1}}, {"q": {"b": 1.0, "c": 1.0}}),
        ({"q": {"a": 2, "b": 1}}, {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}),
        ({"q": {"a": 0, "b": 0}}, {"q": {"a": 1.0}}),  # no relevant document: 0, counted
        ({"q": {"a": 1}, "r": {"x": 3}}, {"q": {"a": 1.0}}),  # "r" has no ranking: 0, counted
        ({"q": {"a": 1}, "r": {}}, {"q": {"a": 1.0}, "r": {"a": 1.0}}),  # "r" judged empty: 0, counted
        ({"q": {"a": 1}}, {"q": {"a": 1.0}, "s": {"a": 1.0}}),  # "s" not judged: ignored
        ({"q": {"a": 1, "b": 3}}, {"q": {f"z{i}": 2.0 for i in range(30)} | {"a": 1.0, "b": 0.0}}),  # beyond k
    ]
    for qrels, run in cases:
        assert mean_ndcg(run, qrels) == pytest.approx(_reference(qrels, run), abs=TOL), (qrels, run)


def test_ndcg_of_scores_equals_ir_measures_per_list():
    """The verifier's form: one candidate list, ties in list order, ideal from the list's own gains."""
    rng = np.random.default_rng(7)
    for t in range(300):
        n = int(rng.integers(1, 80))
        scores = rng.normal(size=n).astype(np.float32)
        if t % 2:
            scores = np.round(scores, 1)
        gains = rng.choice([0, 0, 0, 1, 2, 3], size=n).astype(np.float32)
        if t % 10 == 0:
            gains[:] = 0
        k = int(rng.choice([1, 5, 10]))
        run = {"q": {_doc(j): float(s) for j, s in enumerate(scores)}}
        qrels = {"q": {_doc(j): int(g) for j, g in enumerate(gains)}}
        ref = _reference(qrels, run, k)
        assert ndcg_of_scores(scores, gains.astype(np.float64), k) == pytest.approx(ref, abs=TOL)
        # float32 gains (as the verifier's lists hold them) are summed in float32: equal to its precision
        assert ndcg_of_scores(scores, gains, k) == pytest.approx(ref, abs=1e-6)


def test_mean_ndcg_rows_equals_ir_measures():
    """The document tables' form: a score matrix, binary relevance per row, ties in column order."""
    rng = np.random.default_rng(1)
    for t in range(20):
        n_rows, n_cols = 20, 30
        scores = rng.standard_normal((n_rows, n_cols))
        if t % 2:
            scores = np.round(scores, 1)
        rel = {i: set(rng.choice(n_cols, int(rng.integers(0, 4)), replace=False).tolist())
               for i in range(n_rows) if rng.random() < 0.8}
        run = {str(i): {_doc(j): float(scores[i, j]) for j in range(n_cols)} for i in rel}
        qrels = {str(i): {_doc(j): 1 for j in ds} for i, ds in rel.items()}
        assert mean_ndcg_rows(scores, rel) == pytest.approx(_reference(qrels, run), abs=TOL)


def test_the_core_by_hand():
    assert dcg([3, 2, 0, 1], k=3) == pytest.approx(3 + 2 / np.log2(3))
    assert ndcg([1, 0], [1]) == 1.0 and ndcg([0, 1], [1]) == pytest.approx(1 / np.log2(3))
    assert ndcg([0, 0], [0, 0]) == 0.0 and ndcg([], []) == 0.0 and mean_ndcg({}, {}) == 0.0
    assert ndcg([1], [1, 1]) == pytest.approx(1 / (1 + 1 / np.log2(3)))  # a relevant document left unranked


def test_the_target_rank_form_is_ndcg_with_one_relevant_item():
    from sidestep.eval.metrics import ndcg, ndcg_of_target_ranks

    rng = np.random.default_rng(3)
    ranks = rng.integers(0, 60, size=200)
    for k in (1, 10, 50):
        want = [ndcg([0.0] * int(r) + [1.0], [1.0], k) for r in ranks]
        np.testing.assert_allclose(ndcg_of_target_ranks(ranks, k), want, rtol=0, atol=1e-12)
