"""Title pseudo-queries: which documents give one, recall's document scores, and the lists built."""

from __future__ import annotations

import numpy as np
import pytest

from sidestep.rec.doctables import max_chunk_scores
from sidestep.verify.candidates import prescore
from sidestep.verify.model import served_rows
from sidestep.verify.pseudo import held_out_lists, pseudo_lists, title_docs


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_title_docs_needs_a_title_and_a_text_and_samples_reproducibly():
    titles = ["Aspirin lowers stroke risk", None, "  ", "Statins and liver injury", "Short",
              "Vitamin D and bone density"]
    texts = ["a", "b", "c", "", "d", "e"]
    assert title_docs(titles, texts, 10, seed=0) == [0, 5]
    many = [f"title number {i}" for i in range(50)]
    a, b = title_docs(many, ["x"] * 50, 7, seed=3), title_docs(many, ["x"] * 50, 7, seed=3)
    assert a == b and len(a) == 7 and a == sorted(a)
    assert title_docs(many, ["x"] * 50, 7, seed=4) != a


def test_doc_scores_is_each_documents_best_chunk():
    """Recall's document score, as pseudo lists rank by it: chunks contiguous per document, and shuffled."""
    rng = np.random.default_rng(0)
    sizes = [1, 3, 2, 4]
    chunks = unit(rng, sum(sizes))
    q = unit(rng, 5)
    starts = np.cumsum(sizes) - sizes
    chunk_doc = np.repeat(np.arange(len(sizes)), sizes)
    got = max_chunk_scores(q, chunks, chunk_doc, len(sizes))
    s = q @ chunks.T
    want = np.stack([s[:, a:a + n].max(1) for a, n in zip(starts, sizes, strict=True)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    perm = rng.permutation(len(chunks))
    np.testing.assert_allclose(max_chunk_scores(q, chunks[perm], chunk_doc[perm], len(sizes)), want, rtol=1e-6)


def _corpus(rng, n_docs, d=16):
    docs = []
    for _ in range(n_docs):
        toks = unit(rng, int(rng.integers(8, 14)), d)
        pieces = rng.integers(0, 50, len(toks)).astype(np.int32)
        pooled = toks.mean(0, keepdims=True)
        docs.append((toks, pieces, pooled / np.linalg.norm(pooled)))
    return docs


def test_pseudo_lists_label_their_own_document_and_match_served_rows():
    rng = np.random.default_rng(1)
    docs = _corpus(rng, 30)
    idf = np.ones(50, np.float32)
    positives = [2, 7, 11]
    # each query is its positive's pooled vector plus noise, its tokens a few of the positive's tokens
    q_pooled = np.stack([docs[p][2][0] + 0.05 * unit(rng, 1)[0] for p in positives]).astype(np.float32)
    q_tokens = [docs[p][0][:6] for p in positives]  # [CLS] + 4 + [SEP], as the encoder gives them
    q_pieces = [[101, *docs[p][1][:4].tolist(), 102] for p in positives]
    whole = pseudo_lists(q_pooled, q_tokens, q_pieces, positives, docs, idf, candidates=10, max_doc_tokens=64,
                         train_top=0, max_query_tokens=16)
    assert len(whole) == 3
    for ex, p, qp in zip(whole, positives, q_pooled, strict=True):
        assert ex.cands.glob.shape[0] == 10 and int(ex.labels.sum()) == 1
        # the recall column is the positive's best-chunk cosine, and the list is recall's top 10 in order
        recall = ex.cands.glob[:, 0].numpy()
        assert np.all(np.diff(recall) <= 1e-6)
        assert recall[int(ex.labels.nonzero()[0, 0])] == pytest.approx(float(docs[p][2][0] @ qp), abs=1e-5)
    cut = pseudo_lists(q_pooled, q_tokens, q_pieces, positives, docs, idf, candidates=10, max_doc_tokens=64,
                       train_top=4, max_query_tokens=16)
    want = [e for e in (served_rows(w, 4, 10) for w in whole) if e is not None]
    assert len(cut) == len(want)
    for a, b in zip(cut, want, strict=True):
        assert a.cands.glob.shape[0] == 4
        np.testing.assert_allclose(a.cands.glob.numpy(), b.cands.glob.numpy())
        assert prescore(a.cands.glob).shape == (4,)


def test_pseudo_lists_skip_a_query_whose_positive_recall_misses():
    rng = np.random.default_rng(2)
    docs = _corpus(rng, 20)
    far = -docs[5][2][0]  # points away from its positive: doc 5 is recall's last
    out = pseudo_lists(far[None, :].astype(np.float32), [docs[5][0][:5]], [[101, 1, 2, 3, 102]], [5], docs,
                       np.ones(50, np.float32), candidates=5, max_doc_tokens=64, train_top=0, max_query_tokens=16)
    assert out == []
    with pytest.raises(ValueError, match="chunk"):
        pseudo_lists(far[None, :].astype(np.float32), [docs[5][0][:3]], [[1, 2]], [5],
                     [*docs[:3], (docs[3][0], docs[3][1], np.zeros((0, 16), np.float32))], np.ones(50, np.float32),
                     candidates=5, max_doc_tokens=64, train_top=0, max_query_tokens=16)


def test_near_misses_join_below_their_positive_and_allowed_limits_recall():
    rng = np.random.default_rng(3)
    docs = _corpus(rng, 20)
    idf = np.ones(50, np.float32)
    positives = [2, 7]
    q_pooled = np.stack([docs[p][2][0] for p in positives]).astype(np.float32)
    q_tokens = [docs[p][0][:6] for p in positives]
    q_pieces = [[101, *docs[p][1][:4].tolist(), 102] for p in positives]
    near = [[_corpus(rng, 1)[0], _corpus(rng, 1)[0]], []]
    allowed = np.ones(20, bool)
    allowed[[3, 4, 5]] = False
    out = pseudo_lists(q_pooled, q_tokens, q_pieces, positives, docs, idf, candidates=10, max_doc_tokens=64,
                       train_top=0, max_query_tokens=16, allowed=allowed, near=near)
    plain = pseudo_lists(q_pooled, q_tokens, q_pieces, positives, docs, idf, candidates=10, max_doc_tokens=64,
                         train_top=0, max_query_tokens=16, allowed=allowed)
    assert [e.cands.glob.shape[0] for e in out] == [12, 10]
    pos = int(out[0].labels.nonzero()[0, 0])
    assert out[0].pairs.tolist() == [[pos, 10], [pos, 11]] and not out[0].labels[10:].any()
    # the recall rows are the list without near-misses (list statistics come from them alone)
    np.testing.assert_allclose(out[0].cands.glob[:10].numpy(), plain[0].cands.glob.numpy(), rtol=1e-6)
    # documents outside `allowed` are never candidates: recall picks 10 of the 17 allowed
    full = max_chunk_scores(q_pooled, np.concatenate([p for _, _, p in docs]), np.arange(20), 20)
    row = np.where(allowed, full[0], -np.inf)
    np.testing.assert_allclose(out[0].cands.glob[:10, 0].numpy(), np.sort(row)[::-1][:10], rtol=1e-5)

    held = held_out_lists(q_pooled, q_tokens, q_pieces, positives, docs, idf, candidates=10, max_doc_tokens=64,
                          max_query_tokens=16, near=near)
    assert [h.n_near for h in held] == [2, 0] and [len(h.gains) for h in held] == [12, 10]
    for h, p in zip(held, positives, strict=True):
        assert h.gains.sum() == 1 and h.top[int(h.gains.argmax())] == p
        s, g = h.plain(h.recall)
        assert len(s) == len(g) == 10 and np.all(np.diff(s) <= 1e-6)
