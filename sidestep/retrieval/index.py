"""FAISS indexes over pooled chunk vectors, and search that returns documents.

Exact inner product (IndexFlatIP) below a size threshold; above it IVF-PQ with exact re-ranking
(sidestep.retrieval.ivfpq, the default) or HNSW, chosen and tuned by `benchmarks/scale.py`. For corpora
under a few hundred thousand chunks exact search is the honest default. Vectors are unit-norm, so inner
product is cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from .ivfpq import IVFPQSpec, RerankedIndex, auto_nlist, build_ivfpq


@dataclass(frozen=True)
class IndexParams:
    kind: str  # "flat_ip" | "hnsw_flat_ip" | "ivfpq_rerank"
    dim: int
    ntotal: int
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    refine_k: int | None = None
    quantizer_reused: bool | None = None
    codes_copied: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class IVFBuild:
    """How an IVF-PQ index is built (config [index] ivf_*), and what a rebuild may reuse of its parent:
    the trained quantizer, and with `parent`/`new_row` the codes of rows that live on."""
    spec: IVFPQSpec | None = None  # None: nlist chosen from the size, the rest defaults
    train_vectors: int = 40_000
    shard_vectors: int = 250_000
    workers: int = 1
    trained: faiss.Index | None = None
    parent: faiss.Index | None = None
    new_row: np.ndarray | None = None


def build_index(vectors: np.ndarray, *, exact_max_vectors: int, hnsw_m: int = 32, ef_construction: int = 200,
                ef_search: int = 256, scale_kind: str = "hnsw", ivf: IVFBuild | None = None
                ) -> tuple[faiss.Index | RerankedIndex, IndexParams]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n <= exact_max_vectors:
        index = faiss.IndexFlatIP(dim)
        params = IndexParams("flat_ip", dim, n)
    elif scale_kind == "ivfpq":
        ivf = ivf or IVFBuild()
        spec = ivf.spec or IVFPQSpec(nlist=auto_nlist(n))
        index = build_ivfpq(vectors, spec, train_vectors=ivf.train_vectors, shard_vectors=ivf.shard_vectors,
                            workers=ivf.workers, trained=ivf.trained, parent=ivf.parent, new_row=ivf.new_row)
        copied = int((ivf.new_row >= 0).sum()) if ivf.parent is not None and ivf.new_row is not None else 0
        return index, IndexParams("ivfpq_rerank", dim, n, nlist=int(faiss.extract_index_ivf(index.ivf).nlist),
                                  pq_m=spec.m, nprobe=spec.nprobe, refine_k=spec.refine_k,
                                  quantizer_reused=ivf.trained is not None, codes_copied=copied)
    elif scale_kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params = IndexParams("hnsw_flat_ip", dim, n, hnsw_m, ef_construction, ef_search)
    else:
        raise ValueError(f"unknown index kind {scale_kind!r} (ivfpq or hnsw)")
    index.add(vectors)
    return index, params


def configure_search(index, ef_search: int | None, nprobe: int | None = None, refine_k: int | None = None) -> None:
    if ef_search and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search
    if isinstance(index, RerankedIndex):
        if nprobe:
            index.set_nprobe(nprobe)
        if refine_k:
            index.refine_k = refine_k


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    row: int  # the best chunk's row in the index


class DocSearcher:
    """Chunk-level FAISS search aggregated to documents (a document scores as its best chunk)."""

    def __init__(self, index: faiss.Index, doc_ids: Sequence[str], *, overfetch: int = 4,
                 doc_score: str = "max"):
        if index.ntotal != len(doc_ids):
            raise ValueError(f"index has {index.ntotal} vectors but {len(doc_ids)} chunk rows")
        self.index = index
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.n_docs = len(set(doc_ids))
        self.overfetch = overfetch
        self.doc_score = doc_score

    @cached_property
    def rows_by_doc(self) -> dict[str, np.ndarray]:
        """Each document's chunk rows in the index (a loaded version never changes, so built once)."""
        rows: dict[str, list[int]] = {}
        for i, d in enumerate(self.doc_ids):
            rows.setdefault(d, []).append(i)
        return {d: np.asarray(r, np.int64) for d, r in rows.items()}

    def best_chunk_scores(self, query: np.ndarray, doc_ids: Sequence[str]) -> list[float]:
        """One query's cosine with each named document's best chunk: the recall score a document would have
        had, for documents recall did not return (KeyError for one the index does not hold)."""
        q = np.asarray(query, np.float32)
        return [float((self.index.reconstruct_batch(self.rows_by_doc[d]) @ q).max()) for d in doc_ids]

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.index.ntotal == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        want = min(k, self.n_docs)
        fetch = min(max(k * self.overfetch, k), self.index.ntotal)
        out: list[list[Hit] | None] = [None] * len(queries)
        todo = list(range(len(queries)))
        while todo:
            scores, rows = self.index.search(queries[todo], fetch)
            again = []
            for j, q in enumerate(todo):
                hits = self._aggregate(scores[j], rows[j], k)
                if len(hits) < want and fetch < self.index.ntotal:
                    again.append(q)
                else:
                    out[q] = hits
            todo, fetch = again, min(fetch * 4, self.index.ntotal)
        return [h or [] for h in out]

    def _aggregate(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        best: dict[str, Hit] = {}
        second: dict[str, float] = {}
        for s, r in zip(scores, rows, strict=True):
            if r < 0:
                continue
            d = self.doc_ids[r]
            if d not in best:
                best[d] = Hit(d, float(s), int(r))
            elif d not in second:
                second[d] = float(s)
        hits = list(best.values())
        if self.doc_score == "mean_top2":
            hits = [Hit(h.doc_id, (h.score + second.get(h.doc_id, h.score)) / 2, h.row) for h in hits]
            hits.sort(key=lambda h: -h.score)
        return hits[:k]


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
