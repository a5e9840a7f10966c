"""The search path shared by the HTTP endpoint and offline evaluation.

Both call `search_texts`, so an evaluation measures exactly what users get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .encoder import Encoder
from .index import DocSearcher


@dataclass
class IndexedCorpus:
    """One published index version, loaded: what a replica needs to answer queries."""

    domain: str
    version: str
    searcher: DocSearcher
    titles: Sequence[str]
    snippets: Sequence[str]
    chunk_idx: Sequence[int]
    manifest: dict = field(default_factory=dict)

    @property
    def n_docs(self) -> int:
        return self.searcher.n_docs


@dataclass
class SearchHit:
    doc_id: str
    score: float
    recall_score: float
    title: str
    snippet: str
    chunk: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def search_vectors(corpus: IndexedCorpus, qvecs: np.ndarray, k: int) -> list[list[SearchHit]]:
    out = []
    for hits in corpus.searcher.search(qvecs, k):
        out.append([SearchHit(h.doc_id, h.score, h.score, corpus.titles[h.row], corpus.snippets[h.row],
                              int(corpus.chunk_idx[h.row])) for h in hits])
    return out


def search_texts(encoder: Encoder, corpus: IndexedCorpus, texts: Sequence[str], k: int
                 ) -> tuple[list[list[SearchHit]], dict[str, float]]:
    """Encode queries, recall from the index; returns hits and per-stage timings in ms."""
    t0 = time.perf_counter()
    qvecs = encoder.encode_queries(texts)
    t1 = time.perf_counter()
    hits = search_vectors(corpus, qvecs, k)
    t2 = time.perf_counter()
    return hits, {"encode": (t1 - t0) * 1e3, "recall": (t2 - t1) * 1e3}
