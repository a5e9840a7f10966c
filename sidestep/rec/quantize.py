"""OPQ + product quantization of pooled text embeddings into D discrete codes per item (faiss).

The codes are the frozen, discrete step: nothing downstream differentiates
through them. A fitted codebook is reused for new items until its quantization
error on them drifts past a threshold (or a refit is asked for), so that code
ids keep their meaning across nightly runs and the lookup tables stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class CodebookSpec:
    positions: int = 32  # D: code positions (PQ sub-quantizers)
    bits: int = 8  # log2(M): 8 -> M = 256 codewords per position
    opq: bool = True
    sample: int = 50_000  # training vectors at most (a random sample)
    seed: int = 0
    opq_iterations: int = 20

    @property
    def codewords(self) -> int:
        return 1 << self.bits

    def factory(self, dim: int) -> str:
        pq = f"PQ{self.positions}x{self.bits}"
        return f"OPQ{self.positions},{pq}" if self.opq else pq


class Codebook:
    """A trained faiss index (OPQ rotation + PQ) used only for `sa_encode` / `sa_decode`."""

    def __init__(self, index, spec: CodebookSpec, fit_error: float):
        self.index = index
        self.spec = spec
        self.fit_error = fit_error

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) float -> (n, D) uint8 codes (bits == 8) or int64 codes otherwise."""
        x = _as_f32(x, self.dim)
        raw = self.index.sa_encode(x)
        if self.spec.bits == 8:
            return np.ascontiguousarray(raw.reshape(len(x), self.spec.positions))
        return _unpack(raw, self.spec)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.spec.bits != 8:
            raise ValueError("decode is implemented for 8-bit codes only")
        return self.index.sa_decode(np.ascontiguousarray(codes.astype(np.uint8)))

    def error(self, x: np.ndarray) -> float:
        """Mean squared reconstruction error relative to the mean squared norm (0 = exact)."""
        x = _as_f32(x, self.dim)
        if len(x) == 0:
            return 0.0
        rec = self.index.sa_decode(self.index.sa_encode(x))
        return float(((x - rec) ** 2).sum(1).mean() / max((x ** 2).sum(1).mean(), 1e-12))

    def table_init(self) -> np.ndarray:
        """(D, M, dim) code embeddings whose mean over positions is the codebook's own reconstruction:
        entry (d, m) is D times codeword m of sub-space d, rotated back by the OPQ matrix. A table started
        here represents every item by its PQ-decoded text vector before any training."""
        import faiss

        index = self.index
        rot = np.eye(self.dim, dtype=np.float32)
        if isinstance(index, faiss.IndexPreTransform):
            vt = faiss.downcast_VectorTransform(index.chain.at(0))
            rot = faiss.vector_to_array(vt.A).reshape(vt.d_out, vt.d_in)
            index = faiss.downcast_index(index.index)
        pq = index.pq
        d, m, dsub = pq.M, pq.ksub, pq.dsub
        cents = faiss.vector_to_array(pq.centroids).reshape(d, m, dsub)
        out = np.stack([cents[p] @ rot[p * dsub:(p + 1) * dsub, :] for p in range(d)])
        return (out * d).astype(np.float32)

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, spec: CodebookSpec, fit_error: float) -> Codebook:
        import faiss

        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.d <= 0 or not index.is_trained:
            raise ValueError("codebook file holds an untrained index")
        return cls(index, spec, fit_error)


def fit_codebook(x: np.ndarray, spec: CodebookSpec = CodebookSpec(), threads: int = 1) -> Codebook:
    """Train OPQ + PQ on a random sample of x (OPQ is slow on 2 cores; a sample of a few 10k is plenty).

    One OpenMP thread by default: faiss's OpenMP k-means stalls for minutes when another process
    holds a core, and the nightly flow never has the machine to itself."""
    import faiss

    x = _as_f32(x, x.shape[1] if x.ndim == 2 else -1)
    if x.shape[1] % spec.positions:
        raise ValueError(f"embedding dim {x.shape[1]} is not divisible by {spec.positions} code positions")
    if len(x) < spec.codewords:
        raise ValueError(f"need at least {spec.codewords} vectors to fit {spec.codewords} codewords, got {len(x)}")
    rng = np.random.default_rng(spec.seed)
    sample = x[rng.choice(len(x), spec.sample, replace=False)] if len(x) > spec.sample else x
    if spec.opq and len(sample) < x.shape[1]:
        # faiss's OPQ crashes (segfault, not an exception) with fewer training vectors than dimensions
        spec = replace(spec, opq=False)
    index = faiss.index_factory(x.shape[1], spec.factory(x.shape[1]))
    keep = _configure(index, spec)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        index.train(np.ascontiguousarray(sample))
    finally:
        faiss.omp_set_num_threads(before)
    del keep
    book = Codebook(index, spec, 0.0)
    return Codebook(index, spec, book.error(sample))


def _configure(index, spec: CodebookSpec) -> list:
    """Seed k-means, cap OPQ's alternations (it trains a PQ per iteration: slow on 2 cores), and accept
    catalogues smaller than faiss's 39 points per centroid without warning. Returns objects that must
    stay referenced until training ends."""
    import faiss

    keep = []
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if isinstance(inner, faiss.IndexPQ):
        inner.do_polysemous_training = False  # the factory's default: minutes of annealing we never use
        _quiet(inner.pq.cp, spec.seed)
    if isinstance(index, faiss.IndexPreTransform):
        vt = faiss.downcast_VectorTransform(index.chain.at(0))
        if isinstance(vt, faiss.OPQMatrix):
            vt.niter = spec.opq_iterations
            vt.verbose = False
            pq = faiss.ProductQuantizer(vt.d_out, spec.positions, spec.bits)
            _quiet(pq.cp, spec.seed)
            vt.pq = pq
            keep.append(pq)
    return keep


def _quiet(cp, seed: int) -> None:
    cp.seed = seed
    cp.min_points_per_centroid = 1
    cp.verbose = False


def _as_f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or (dim > 0 and x.shape[1] != dim):
        raise ValueError(f"expected a (n, {dim}) matrix, got shape {x.shape}")
    return x


def _unpack(raw: np.ndarray, spec: CodebookSpec) -> np.ndarray:
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, : spec.positions * spec.bits]
    bits = bits.reshape(len(raw), spec.positions, spec.bits).astype(np.int64)
    return (bits << np.arange(spec.bits)).sum(-1)


# ----------------------------------------------------------------------------- diagnostics


def diagnostics(codes: np.ndarray, codewords: int) -> dict:
    """Codeword usage entropy per position (bits; log2(M) is uniform use), dead codewords,
    and items whose full code collides with another item's (they become indistinguishable)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, positions = codes.shape
    entropy, dead = [], []
    for d in range(positions):
        counts = np.bincount(codes[:, d], minlength=codewords)
        p = counts[counts > 0] / max(n, 1)
        entropy.append(float(-(p * np.log2(p)).sum()))
        dead.append(int((counts == 0).sum()))
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    colliding = int((counts[inverse.reshape(-1)] > 1).sum()) if n else 0
    return {
        "items": int(n),
        "entropy_bits_mean": float(np.mean(entropy)) if entropy else 0.0,
        "entropy_bits_min": float(np.min(entropy)) if entropy else 0.0,
        "entropy_bits_max": float(np.log2(codewords)),
        "dead_codewords": int(np.sum(dead)),
        "dead_codewords_max_position": int(np.max(dead)) if dead else 0,
        "colliding_items": colliding,
        "entropy_per_position": [round(e, 4) for e in entropy],
    }


def drift(book: Codebook, x_new: np.ndarray) -> float:
    """Quantization error on new items relative to the error at fit time (1.0 = no drift)."""
    if len(x_new) == 0:
        return 1.0
    return book.error(x_new) / max(book.fit_error, 1e-12)


def shuffled_codes(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    """The control: codes permuted across items. Tables trained on these can learn popularity and
    sequence statistics, but nothing that comes from an item's text."""
    rng = np.random.default_rng(seed)
    return codes[rng.permutation(len(codes))]
