"""IVF-PQ with exact re-ranking: the index kind for corpora past exact search.

A coarse quantizer (k-means, `nlist` centroids) trained on a sample splits the vectors into inverted
lists; each vector is stored there as `m` one-byte product-quantization codes of its residual. A query
scans the `nprobe` nearest lists with table lookups, keeps the best `refine_k` candidates, and re-ranks
them exactly against the stored full vectors (an array in memory or memory-mapped from the version's
files), so the scores it returns are true inner products and recall is bounded only by the candidates.

Building is embarrassingly parallel once the quantizer is trained: `encode_shards` encodes row ranges
independently (threads here, nodes on a cluster) and `merge_shards` joins them; storage merges shard
files on disk instead (faiss's OnDiskInvertedLists), so the merged lists never need to fit in memory.
Between refits a version reuses its parent's trained quantizer and only encodes (`add`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

from .faissblas import blas_assignment


@dataclass(frozen=True)
class IVFPQSpec:
    nlist: int
    m: int = 48
    nbits: int = 8
    nprobe: int = 32
    refine_k: int = 100


def auto_nlist(n: int) -> int:
    """About sqrt(n) lists, a power of two (1,024 at 2 M vectors: measured there, recall@10 0.988 at nprobe 16
    with re-ranking; BENCHMARKS.md "Indexes at scale"), at least 1 and at most n/39 (k-means wants ≥ 39
    points each)."""
    if n < 2 * 39:
        return 1
    want = 2 ** round(math.log2(math.sqrt(n)))
    return int(max(1, min(want, 2 ** int(math.log2(n // 39)))))


def train_ivfpq(sample: np.ndarray, nlist: int, m: int, nbits: int = 8, seed: int = 0) -> faiss.IndexIVFPQ:
    """An empty IVF-PQ index (inner product) trained on `sample`; nlist and nbits shrink to what the sample
    can train (a small corpus has fewer vectors than codewords)."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    n, dim = x.shape
    if dim % m:
        raise ValueError(f"PQ with m={m} sub-quantizers needs a dimension divisible by m, not {dim}")
    nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
    nbits = max(1, min(nbits, int(np.log2(max(n, 2)))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.cp.min_points_per_centroid = 1
    index.pq.cp.min_points_per_centroid = 1
    # k-means assignment through BLAS (as storage.tokens.train_pq): faiss's default keeps narrow PQ
    # sub-spaces off BLAS, which trained 10x slower here (4-d sub-spaces: 15 s against 1.4 s)
    with blas_assignment():
        index.train(x)
    return index


def _filled(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    shard = faiss.clone_index(trained)
    shard.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64))
    return shard


def encode_shards(trained: faiss.Index, vectors: np.ndarray, shard_size: int, workers: int = 1,
                  ids: np.ndarray | None = None) -> list[faiss.Index]:
    """Row ranges of `vectors` encoded into copies of `trained` (ids: `ids`, by default the rows),
    `workers` at a time; faiss's own threads are split between the workers meanwhile."""
    if trained.ntotal:
        raise ValueError("encode_shards wants an empty trained index")
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    starts = list(range(0, len(vectors), max(1, shard_size)))
    workers = max(1, min(workers, len(starts)))

    def one(s: int) -> faiss.Index:
        return _filled(trained, vectors[s:s + shard_size], ids[s:s + shard_size])

    if workers == 1:
        return [one(s) for s in starts]
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, saved // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:  # faiss releases the GIL while it encodes
            return list(pool.map(one, starts))
    finally:
        faiss.omp_set_num_threads(saved)


def merge_shards(trained: faiss.Index, shards: Sequence[faiss.Index]) -> faiss.Index:
    """One in-memory index holding every shard's codes (ids kept); the shards are emptied (faiss moves the
    lists)."""
    out = faiss.clone_index(trained)
    for s in shards:
        out.merge_from(s, 0)
    return out


class RerankedIndex:
    """An IVF index whose candidates are re-scored exactly against `vectors` (rows = ids).

    Quacks like the parts of faiss.Index the searcher uses (ntotal, d, search, reconstruct*), so a
    DocSearcher takes it as it takes an exact index."""

    def __init__(self, ivf: faiss.Index, vectors: np.ndarray, *, nprobe: int = 32, refine_k: int = 100):
        if ivf.ntotal != len(vectors):
            raise ValueError(f"the IVF index holds {ivf.ntotal} vectors but the re-rank array {len(vectors)}")
        self.ivf = ivf
        self.vectors = vectors
        self.refine_k = refine_k
        self.set_nprobe(nprobe)

    def set_nprobe(self, nprobe: int) -> None:
        faiss.extract_index_ivf(self.ivf).nprobe = nprobe

    @property
    def nprobe(self) -> int:
        return faiss.extract_index_ivf(self.ivf).nprobe

    @property
    def ntotal(self) -> int:
        return self.ivf.ntotal

    @property
    def d(self) -> int:
        return self.ivf.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(max(k, self.refine_k), self.ntotal)
        _, cand = self.ivf.search(q, fetch)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for j in range(len(q)):
            ids = np.sort(cand[j][cand[j] >= 0])  # sorted rows read a memory-mapped array in order
            if not len(ids):
                continue
            s = np.asarray(self.vectors[ids], np.float32) @ q[j]
            top = np.argsort(-s, kind="stable")[:k]
            scores[j, :len(top)], rows[j, :len(top)] = s[top], ids[top]
        return scores, rows

    def reconstruct(self, i: int) -> np.ndarray:
        return np.asarray(self.vectors[int(i)], np.float32)

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows, np.int64)], np.float32)

    def reconstruct_n(self, i0: int, n: int) -> np.ndarray:
        return np.asarray(self.vectors[i0:i0 + n], np.float32)

    def add(self, vectors: np.ndarray) -> None:
        """Incremental add with the trained quantizer as it is (in-memory indexes only; a memory-mapped
        version is immutable: publish a new one)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ivf.add_with_ids(x, np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64))
        self.vectors = np.concatenate([np.asarray(self.vectors, np.float32), x])



def carry_codes(trained: faiss.Index, parent: faiss.Index, new_row: np.ndarray) -> tuple[faiss.Index, np.ndarray]:
    """A copy of `trained` holding the parent's codes of the rows that live on (`new_row[old]` ≥ 0), under
    their new row ids, and the new rows that got a code. Exact, not approximate: with the same quantizer a
    vector's list and code do not depend on the other vectors, so a copied code is the code it would get."""
    out = faiss.clone_index(trained)
    src, dst = faiss.extract_index_ivf(parent).invlists, faiss.extract_index_ivf(out).invlists
    if src.nlist != dst.nlist or src.code_size != dst.code_size:
        raise ValueError("the parent index was built with another quantizer")
    have = []
    for lst in range(src.nlist):
        n = src.list_size(lst)
        if not n:
            continue
        ids = faiss.rev_swig_ptr(src.get_ids(lst), n).copy()
        codes = faiss.rev_swig_ptr(src.get_codes(lst), n * src.code_size).copy()
        rows = new_row[ids]
        keep = rows >= 0
        if keep.any():
            r = np.ascontiguousarray(rows[keep], np.int64)
            c = np.ascontiguousarray(codes.reshape(n, -1)[keep])
            dst.add_entries(lst, len(r), faiss.swig_ptr(r), faiss.swig_ptr(c))
            have.append(r)
    kept = np.concatenate(have) if have else np.zeros(0, np.int64)
    out.ntotal = faiss.extract_index_ivf(out).ntotal = len(kept)
    return out, kept


def build_ivfpq(vectors: np.ndarray, spec: IVFPQSpec, *, train_vectors: int = 40_000, shard_vectors: int = 250_000,
                workers: int = 1, trained: faiss.Index | None = None, parent: faiss.Index | None = None,
                new_row: np.ndarray | None = None, seed: int = 0) -> RerankedIndex:
    """IVF-PQ + re-rank over `vectors` (rows = ids). Without `trained` the quantizer is trained on a sample;
    with it (the parent version's, between refits) it is reused, and with `parent` and `new_row` (each
    parent row's row here, -1 for gone) the parent's codes of surviving rows are copied and only the other
    rows are encoded. Rows are encoded in shards, `workers` at a time, and merged."""
    n = len(vectors)
    if trained is None:
        rng = np.random.default_rng(seed)
        size = min(n, max(train_vectors, 39 * spec.nlist))
        trained = train_ivfpq(np.asarray(vectors[np.sort(rng.choice(n, size, replace=False))]), spec.nlist,
                              spec.m, spec.nbits, seed)
    if parent is not None and new_row is not None:
        ivf, kept = carry_codes(trained, parent, new_row)
        todo = np.setdiff1d(np.arange(n, dtype=np.int64), kept)
    else:
        ivf, todo = faiss.clone_index(trained), np.arange(n, dtype=np.int64)
    if len(todo) == n:  # a fresh build: row ranges, no copy of the vectors
        shards = encode_shards(trained, vectors, shard_vectors, workers)
    else:
        shards = encode_shards(trained, np.asarray(vectors[todo]), shard_vectors, workers, ids=todo)
    for s in shards:
        ivf.merge_from(s, 0)
    index = RerankedIndex(ivf, vectors, nprobe=spec.nprobe, refine_k=spec.refine_k)
    index.trained = trained
    return index

