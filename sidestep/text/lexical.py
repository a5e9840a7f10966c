"""BM25 (bm25s, Snowball stemming, English stop words): the lexical baseline, and the lexical half
of reciprocal-rank fusion. Evaluation builds it in-process over a domain's live documents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BM25:
    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]):
        import logging

        import bm25s
        import Stemmer

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG into the run's log
        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.doc_ids = list(doc_ids)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        toks = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer, show_progress=False,
                                    return_ids=False)
        out = []
        for q in toks:
            if not q:
                out.append([])
                continue
            scores = self.index.get_scores(q)
            top = np.argsort(-scores, kind="stable")[:k]
            out.append([(self.doc_ids[i], float(scores[i])) for i in top if scores[i] > 0])
        return out


    def score_all(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries, n_docs) BM25 scores of every document (0 where a query has no indexed term)."""
        toks = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer, show_progress=False,
                                    return_ids=False)
        return np.stack([self.index.get_scores(q) if q else np.zeros(len(self.doc_ids)) for q in toks]
                        ) if len(toks) else np.zeros((0, len(self.doc_ids)))


def rrf(rankings: Sequence[Sequence[str]], k: int, c: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion (Cormack et al.): score = sum over rankings of 1 / (c + rank)."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for r, d in enumerate(ranking, 1):
            fused[d] = fused.get(d, 0.0) + 1.0 / (c + r)
    return sorted(fused.items(), key=lambda x: -x[1])[:k]
