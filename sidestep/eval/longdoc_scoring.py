"""Long-document benchmark, the scoring side: the map settings compared (query conditioning,
section-aware chunks, routing by maps across the corpus), the rank of each question's evidence
under a setting, Recall@k and paired deltas, and the grid searches that tune a setting on a set
of questions. Pure functions over a `Prepared` file (sidestep.eval.longdoc_prep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sidestep.docmaps.maps import condition_queries, doc_max_scores, section_aware_chunks
from sidestep.eval.longdoc_prep import POOLS, Prepared, fill_context
from sidestep.text.encoder import Encoder

KS = (1, 3, 5)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
GAMMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5)
ROUTE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROUTE_R = (1, 2, 3, 5)
ROUTE_LAMBDAS = (0.0, 0.5, 1.0)


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class MapSetting:
    """How a question meets one document's chunks: plain when alpha=1 and gamma=tau=0."""

    alpha: float = 1.0
    gamma: float = 0.0
    pool: str = "all"
    tau: float = 0.0


PLAIN = MapSetting()


def doc_chunks(prep: Prepared, d: int, gamma: float, tau: float = 0.0) -> np.ndarray:
    """Document d's chunk vectors carrying gamma times their sections' map vectors and tau
    times their heading paths' (cached)."""
    key = (d, gamma, tau)
    if key not in prep._chunks:
        mv = prep.map_vecs[d]
        sec = mv.section_vecs if mv is not None else np.zeros((0, prep.q_vecs.shape[1]), np.float32)
        heads = mv.title_vecs if mv is not None else None
        prep._chunks[key] = section_aware_chunks(prep.encoded[d].pooled, sec, prep.chunk_w[d], gamma, heads, tau)
    return prep._chunks[key]


def chunk_scores(prep: Prepared, i: int, d: int, ms: MapSetting) -> np.ndarray:
    """Scores of document d's chunks for question i (context vector must be filled for alpha<1)."""
    q = prep.q_vecs[i]
    if ms.alpha < 1:
        q = condition_queries(q[None], prep._ctx[(ms.pool, i, d)][None], ms.alpha)[0]
    return doc_chunks(prep, d, ms.gamma, ms.tau) @ q


MISS = 10**9  # rank of a question whose evidence is not among the scored chunks


def _rank(scores: np.ndarray, alternatives: Sequence[Sequence[int]]) -> int:
    """0-based rank at which the evidence is found: for each alternative (chunks that together hold
    the answer) the rank of its worst chunk; the best alternative counts. No alternative: a miss."""
    ranks = [max(int((scores > scores[c]).sum()) for c in alt) for alt in alternatives if len(alt)]
    return min(ranks, default=MISS)


def within_ranks(prep: Prepared, qs: np.ndarray, ms: MapSetting) -> np.ndarray:
    """0-based rank of the best evidence chunk among its own document's chunks (cached per
    setting and question: the grid search revisits every question once per fold)."""
    cache = prep._ranks.setdefault(ms, {})
    for i in qs:
        if int(i) not in cache:
            cache[int(i)] = _rank(chunk_scores(prep, int(i), prep.ds.q_doc[i], ms), prep.evidence[i])
    return np.asarray([cache[int(i)] for i in qs], dtype=np.int64)


def recalls(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    if len(ranks) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


def paired_delta(ranks: np.ndarray, base: np.ndarray, k: int = 3, n_boot: int = 2000, seed: int = 0
                 ) -> dict[str, float]:
    """Recall@k difference against a baseline on the same questions, with a paired bootstrap
    95% interval over questions: on a few dozen questions one question moves recall by
    several points. With (repeats, questions) arrays a question's hit is averaged over the
    repeats first, so the interval resamples questions, not repeats."""
    if ranks.size == 0:
        return {"delta": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan")}
    diff = (np.atleast_2d(ranks) < k).astype(np.float64).mean(0) - (np.atleast_2d(base) < k).mean(0)
    boot = np.random.default_rng(seed).choice(diff, size=(n_boot, len(diff))).mean(1)
    return {"delta": float(diff.mean()), "ci95_low": float(np.quantile(boot, 0.025)),
            "ci95_high": float(np.quantile(boot, 0.975))}


OBJECTIVE_KS = (1, 2, 3, 4, 5, 7, 10)


def _objective(ranks: np.ndarray) -> float:
    """Mean Recall@1..10 of the evidence chunk. Recall@3 alone, on a few dozen dev questions,
    moves in steps of one question and picks settings by luck; the mean over cut-offs rewards
    a setting that moves evidence up anywhere near the top."""
    return float(np.mean([np.mean(ranks < k) for k in OBJECTIVE_KS])) if len(ranks) else 0.0


def _distance(ms: MapSetting) -> float:
    return abs(1 - ms.alpha) + ms.gamma + ms.tau


def tune_within(preps: Sequence[Prepared], devs: Sequence[np.ndarray], grid: Sequence[MapSetting]) -> MapSetting:
    """Grid search on the dev questions of all files together (one setting serves every kind
    of document); ties go to the setting closest to plain retrieval."""
    best, best_key = PLAIN, None
    for ms in grid:
        ranks = np.concatenate([within_ranks(p, q, ms) for p, q in zip(preps, devs, strict=True)])
        key = (_objective(ranks), -_distance(ms))
        if best_key is None or key > best_key:
            best, best_key = ms, key
    return best


TAUS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def grids() -> dict[str, list[MapSetting]]:
    """The settings each map mode may choose from."""
    return {
        "map_query": [MapSetting(float(a), 0.0, pool) for pool in POOLS for a in ALPHAS],
        "section_aware": [MapSetting(1.0, float(g), "all", float(t)) for g in GAMMAS for t in TAUS],
    }


# ----------------------------------------------------------------------------- across the corpus
@dataclass(frozen=True)
class RouteSetting:
    map_weight: float  # routing score = w * cos(q, e(map)) + (1 - w) * best plain chunk score
    top_r: int  # documents searched after routing
    doc_lambda: float  # chunk score + lambda * routing score when ranking chunks of several documents
    chunks: MapSetting = PLAIN


def _all_chunks(prep: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = [len(e.chunks) for e in prep.encoded]
    return (np.concatenate([e.pooled for e in prep.encoded]), np.repeat(np.arange(len(sizes)), sizes),
            np.concatenate([[0], np.cumsum(sizes)]))


def _doc_rank(doc_scores: np.ndarray, d: int) -> int:
    return int((doc_scores > doc_scores[d]).sum())


def bag_corpus(prep: Prepared, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain dense over all chunks of the file: (evidence chunk rank, document rank by best chunk)."""
    chunks, owner, offsets = _all_chunks(prep)
    scores = prep.q_vecs[qs] @ chunks.T
    dmax = doc_max_scores(scores, owner, len(prep.encoded))
    c_ranks, d_ranks = [], []
    for row, i in enumerate(qs):
        d = prep.ds.q_doc[i]
        c_ranks.append(_rank(scores[row], [[offsets[d] + j for j in alt] for alt in prep.evidence[i]]))
        d_ranks.append(_doc_rank(dmax[row], d))
    return np.asarray(c_ranks, dtype=np.int64), np.asarray(d_ranks, dtype=np.int64)


def route_scores(prep: Prepared, qs: np.ndarray, map_weight: float) -> np.ndarray:
    """(len(qs), n_docs) routing scores; a document without a map routes by its best chunk."""
    chunks, owner, _ = _all_chunks(prep)
    q = prep.q_vecs[qs]
    dmax = doc_max_scores(q @ chunks.T, owner, len(prep.encoded))
    g = np.stack([m.global_vec if m is not None else np.zeros(q.shape[1], np.float32) for m in prep.map_vecs])
    has_map = np.asarray([m is not None for m in prep.map_vecs])
    mapped = np.where(has_map[None, :], q @ g.T, dmax)
    return map_weight * mapped + (1 - map_weight) * dmax


def routed_corpus(prep: Prepared, encoder: Encoder, qs: np.ndarray, rs: RouteSetting,
                  dscores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Route each question to its top-R documents, then rank their chunks (map-conditioned per
    document); returns (evidence chunk ranks, 10**9 when routing missed; document ranks)."""
    dscores = route_scores(prep, qs, rs.map_weight) if dscores is None else dscores
    routed = np.argsort(-dscores, axis=1, kind="stable")[:, :rs.top_r]
    if rs.chunks.alpha < 1:
        pairs = {(int(i), int(d)) for i, row in zip(qs, routed, strict=True) for d in row}
        fill_context(prep, encoder, rs.chunks.pool, pairs)
    c_ranks, d_ranks = [], []
    for row, i in enumerate(qs):
        d_true = prep.ds.q_doc[i]
        d_ranks.append(_doc_rank(dscores[row], d_true))
        if d_true not in routed[row]:
            c_ranks.append(MISS)
            continue
        parts = {int(d): chunk_scores(prep, int(i), int(d), rs.chunks) + rs.doc_lambda * dscores[row, d]
                 for d in routed[row]}
        at = int(sum(len(parts[int(d)]) for d in routed[row][:list(routed[row]).index(d_true)]))
        merged = np.concatenate([parts[int(d)] for d in routed[row]])
        c_ranks.append(_rank(merged, [[at + j for j in alt] for alt in prep.evidence[i]]))
    return np.asarray(c_ranks, dtype=np.int64), np.asarray(d_ranks, dtype=np.int64)


def tune_routing(preps: Sequence[Prepared], encoder: Encoder, devs: Sequence[np.ndarray], chunks: MapSetting
                 ) -> RouteSetting:
    """Grid over fusion weight, R and the document-score bonus on dev questions; ties go to
    the smaller R (less work per query)."""
    best, best_key = None, None
    for w in ROUTE_WEIGHTS:
        dscores = [route_scores(p, q, w) for p, q in zip(preps, devs, strict=True)]
        for r in ROUTE_R:
            for lam in ROUTE_LAMBDAS:
                rs = RouteSetting(w, r, lam, chunks)
                res = [routed_corpus(p, encoder, q, rs, s) for p, q, s in zip(preps, devs, dscores, strict=True)]
                c = np.concatenate([x[0] for x in res])
                d = np.concatenate([x[1] for x in res])
                key = (_objective(c), float(np.mean(d < r)) if len(d) else 0.0, -r, w)
                if best_key is None or key > best_key:
                    best, best_key = rs, key
    assert best is not None
    return best
