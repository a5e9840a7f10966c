"""Lookup tables as document vectors: fine-tuning on query-document pairs, fusion with pooled cosine."""

from __future__ import annotations

import numpy as np
import torch

from sidestep.eval.metrics import mean_ndcg_rows
from sidestep.rec.doctables import (
    DocTableConfig,
    DocTables,
    max_chunk_scores,
    table_scores,
    train_doc_tables,
    tune_weight,
)
from sidestep.rec.quantize import CodebookSpec, fit_codebook


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_fine_tuning_on_pairs_teaches_the_table_what_the_text_vectors_miss():
    """Queries point to their document along a hidden direction the document text vector does not
    show; only training on pairs can find it, and the untrained table cannot."""
    rng = np.random.default_rng(0)
    n, dim = 300, 32
    docs = _unit(rng.standard_normal((n, dim)))
    hidden = _unit(rng.standard_normal((n, dim)))
    queries = _unit(0.3 * docs + hidden + 0.1 * rng.standard_normal((n, dim)))
    book = fit_codebook(docs, CodebookSpec(positions=4, bits=5, opq=False))
    codes = torch.from_numpy(book.encode(docs).astype(np.int64))
    model = DocTables(book.table_init())
    rel = {i: {i} for i in range(n)}
    before = mean_ndcg_rows(table_scores(model, codes, queries), rel)
    curve = train_doc_tables(model, codes, queries, [(i, i) for i in range(n)], DocTableConfig(epochs=60, lr=1e-2,
                                                                                               adapter_lr=1e-2))
    after = mean_ndcg_rows(table_scores(model, codes, queries), rel)
    assert curve[-1] < curve[0]
    assert after > before + 0.2, (before, after)


def test_max_chunk_scores_take_each_documents_best_chunk():
    q = np.array([[1.0, 0.0]], np.float32)
    chunks = np.array([[0.2, 0.9], [0.9, 0.1], [0.5, 0.5]], np.float32)
    assert max_chunk_scores(q, chunks, np.array([0, 0, 1]), 2).tolist() == [[np.float32(0.9), np.float32(0.5)]]


def test_the_fusion_weight_is_the_best_on_the_tuning_queries():
    pooled = np.array([[0.9, 0.8], [0.9, 0.8]])
    table = np.array([[0.0, 1.0], [0.0, 1.0]])  # the table knows doc 1 is right
    w, grid = tune_weight(pooled, table, {0: {1}, 1: {1}}, grid=(0.0, 0.5))
    assert w == 0.5 and grid[0.5] == 1.0 and grid[0.0] < 1.0
