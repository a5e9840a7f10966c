"""nDCG, written once.

`ndcg` is the one implementation: trec_eval's ``ndcg_cut`` (linear gain, ``gain / log2(rank + 1)``
for 1-based ranks, ideal ranking from the query's judged gains, 0 when none is positive). The
forms callers need are thin wrappers that only decide what the ranking and the judged gains are:

- `ndcg_of_scores`: one candidate list with a score and a gain per candidate (the verifier's and
  the query adapter's validation); ties keep list order, the ideal comes from the list's gains.
- `mean_ndcg_rows`: a score matrix whose rows are queries and columns documents, with binary
  relevance per row (document tables).
- `ndcg_of_target_ranks`: one relevant item per query, given only its 0-based rank among all items
  (leave-one-out recommendation over a full ranking), vectorised: `ndcg` with one judged gain of 1.
- `mean_ndcg`: a TREC-style run and graded qrels, with trec_eval's conventions (ties broken by
  document id, descending; the mean is over the judged queries, an unranked one counts 0), so it
  equals ``ir_measures.calc_aggregate([nDCG@10], qrels, run)`` (tests/test_metrics.py checks).

The DuckDB warehouse computes the same measure in SQL over stored runs (storage/warehouse.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def dcg(ranked_gains: Sequence[float] | np.ndarray, k: int = 10) -> float:
    """DCG@k of gains in rank order: sum of gain / log2(rank + 1) over the first k (1-based ranks)."""
    return float(sum(g / math.log2(r + 2) for r, g in enumerate(ranked_gains[:k])))


def ndcg(ranked_gains: Sequence[float] | np.ndarray, judged_gains: Sequence[float] | np.ndarray, k: int = 10) -> float:
    """nDCG@k of one ranking: `ranked_gains` are the gains of the ranked documents in rank order,
    `judged_gains` every gain judged for the query (the ideal ranking is built from them). Gains are
    non-negative; 0.0 when no judged gain is positive."""
    ideal = np.sort(np.asarray(judged_gains))[::-1]
    idcg = dcg(ideal, k)
    return dcg(ranked_gains, k) / idcg if idcg > 0 else 0.0


def ndcg_of_scores(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """nDCG@k of one candidate list ranked by `scores` (ties keep list order) against its own `gains`."""
    order = np.argsort(-scores, kind="stable")[:k]
    return ndcg(gains[order], gains, k)


def ndcg_of_target_ranks(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per query, nDCG@k when exactly one item is relevant and it sits at 0-based rank `ranks[i]`: the
    vectorised form of `ndcg([0] * r + [1], [1], k)` (the ideal DCG is 1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return (ranks < k) / np.log2(ranks + 2.0)


def mean_ndcg_rows(scores: np.ndarray, qrels: Mapping[int, set[int]], k: int = 10) -> float:
    """Mean binary-relevance nDCG@k over the rows of `scores` named in qrels (row -> relevant columns);
    ties keep column order. 0.0 without qrels."""
    vals = []
    for row, rel in qrels.items():
        top = np.argsort(-scores[row], kind="stable")[:k]
        vals.append(ndcg(np.asarray([1.0 if d in rel else 0.0 for d in top]), np.ones(len(rel)), k))
    return float(np.mean(vals)) if vals else 0.0


def mean_ndcg(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], k: int = 10) -> float:
    """Mean nDCG@k of a run (query -> document -> score) against graded qrels (query -> document ->
    relevance), as trec_eval computes it: documents ranked by score, ties by document id descending;
    relevance <= 0 gains nothing; the mean is over the queries in qrels, one absent from the run
    counting 0; queries only in the run are ignored. 0.0 without qrels (where ir_measures says NaN)."""
    vals = []
    for q, judged in qrels.items():
        ranked = sorted(run.get(q, {}).items(), key=lambda ds: (ds[1], ds[0]), reverse=True)
        gains = [max(judged.get(d, 0), 0) for d, _ in ranked]
        vals.append(ndcg(gains, [g for g in judged.values() if g > 0], k))
    return float(np.mean(vals)) if vals else 0.0
