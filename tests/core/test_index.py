from __future__ import annotations

import faiss
import numpy as np
import pytest

from sidestep.retrieval.index import DocSearcher, build_index


def _unit(rng, n, d=16):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_document_scores_as_its_best_chunk_and_appears_once():
    rng = np.random.default_rng(0)
    vecs = _unit(rng, 30)
    doc_ids = [f"d{i // 3}" for i in range(30)]  # 10 documents x 3 chunks
    index, params = build_index(vecs, exact_max_vectors=100)
    s = DocSearcher(index, doc_ids, overfetch=1)
    q = _unit(rng, 5)
    for qi, hits in enumerate(s.search(q, k=10)):
        assert len(hits) == 10 and len({h.doc_id for h in hits}) == 10  # refetched until k distinct docs
        sims = vecs @ q[qi]
        for h in hits:
            rows = [i for i, d in enumerate(doc_ids) if d == h.doc_id]
            assert h.score == pytest.approx(float(sims[rows].max()), abs=1e-5)
            assert h.row in rows and sims[h.row] == pytest.approx(h.score, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert params.kind == "flat_ip" and params.ntotal == 30


def test_a_named_document_not_returned_scores_as_its_best_chunk():
    rng = np.random.default_rng(2)
    vecs = _unit(rng, 12)
    doc_ids = [f"d{i % 4}" for i in range(12)]  # chunks of a document need not be adjacent
    index, _ = build_index(vecs, exact_max_vectors=100)
    s = DocSearcher(index, doc_ids)
    q = _unit(rng, 1)[0]
    (top,) = s.search(q[None], k=1)
    others = [d for d in ("d0", "d1", "d2", "d3") if d != top[0].doc_id]
    sims = vecs @ q
    want = [float(sims[[i for i, d in enumerate(doc_ids) if d == o]].max()) for o in others]
    assert s.best_chunk_scores(q, others) == pytest.approx(want, abs=1e-5)
    assert s.best_chunk_scores(q, [top[0].doc_id]) == pytest.approx([top[0].score], abs=1e-5)
    with pytest.raises(KeyError):
        s.best_chunk_scores(q, ["missing"])


def test_k_larger_than_the_corpus_returns_every_document():
    rng = np.random.default_rng(1)
    index, _ = build_index(_unit(rng, 6), exact_max_vectors=100)
    hits = DocSearcher(index, ["a", "a", "b", "c", "c", "c"]).search(_unit(rng, 1), k=50)[0]
    assert sorted(h.doc_id for h in hits) == ["a", "b", "c"]


def test_above_the_threshold_an_hnsw_index_is_built_and_agrees_with_exact_search():
    rng = np.random.default_rng(2)
    vecs = _unit(rng, 2000, 32)
    approx, params = build_index(vecs, exact_max_vectors=1000, hnsw_m=16, ef_search=128)
    assert params.kind == "hnsw_flat_ip" and isinstance(approx, faiss.IndexHNSWFlat)
    exact, _ = build_index(vecs, exact_max_vectors=10_000)
    ids = [str(i) for i in range(2000)]
    q = _unit(rng, 20, 32)
    a = DocSearcher(approx, ids).search(q, 10)
    e = DocSearcher(exact, ids).search(q, 10)
    overlap = np.mean([len({h.doc_id for h in x} & {h.doc_id for h in y}) / 10 for x, y in zip(a, e, strict=True)])
    assert overlap > 0.9


def test_mismatched_rows_are_refused():
    index, _ = build_index(np.eye(4, dtype=np.float32), exact_max_vectors=10)
    with pytest.raises(ValueError):
        DocSearcher(index, ["a", "b"])
