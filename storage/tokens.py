"""Token vectors of an index version's documents, for token x token maps.

Two stores:
- "float16": the embedding stage's shards, memory-mapped (no copy);
- "pq": the same vectors product-quantized (faiss PQ, `m` bytes per token), written
  into the index version as `tokens_pq.faiss` + `tokens_pq.npy` + `tokens_pq.parquet`
  (each document's [start, end) rows), a fraction of the bytes.

Both return a document's tokens with each chunk's [CLS]/[SEP] dropped and the
chunks concatenated in order (overlapping tokens appear twice, as they were encoded).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidestep.retrieval.faissblas import blas_assignment
from sidestep.verify.features import FlatTokens, flatten_tokens

from .atomic import write_parquet, write_with

PQ_CODEC = "tokens_pq.faiss"
PQ_CODES = "tokens_pq.npy"
PQ_DOCS = "tokens_pq.parquet"
PIECES = "pieces.parquet"
IDF = "idf.npy"


class TokenSource:
    """float16 token vectors of a version's documents, read from the embedding shards."""

    kind = "float16"

    def __init__(self, shard_dir: Path, chunks: pa.Table):
        self.shard_dir = shard_dir
        cols = chunks.select(["doc_id", "chunk_idx", "shard", "token_offset", "n_tokens"]).to_pydict()
        self._rows: dict[str, list[tuple[int, str, int, int]]] = {}
        for d, c, s, o, n in zip(cols["doc_id"], cols["chunk_idx"], cols["shard"], cols["token_offset"],
                                 cols["n_tokens"], strict=True):
            self._rows.setdefault(d, []).append((c, s, o, n))
        for rows in self._rows.values():
            rows.sort()
        self._mm: dict[str, np.ndarray] = {}

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._rows

    def doc_ids(self) -> list[str]:
        return list(self._rows)

    def _shard(self, s: str) -> np.ndarray:
        if s not in self._mm:
            path = self.shard_dir / f"{s}.tokens.npy"
            if not path.is_file():
                raise FileNotFoundError(f"token shard missing: {path}")
            self._mm[s] = np.load(path, mmap_mode="r")
        return self._mm[s]

    def doc(self, doc_id: str) -> np.ndarray:
        parts = [self._shard(s)[o + 1:o + n - 1] for _, s, o, n in self._rows[doc_id]]
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]:
        return [self.doc(d) for d in doc_ids]

    def flat(self, doc_ids: list[str], max_tokens: int) -> FlatTokens:
        return flatten_tokens(self.docs(doc_ids), max_tokens)

    def bytes_per_doc(self) -> float:
        n = sum(n for rows in self._rows.values() for _, _, _, n in rows)
        dim = next(iter(self._mm.values())).shape[1] if self._mm else self._dim()
        return n * dim * 2 / max(len(self._rows), 1)

    def _dim(self) -> int:
        first = next(iter(self._rows.values()))[0]
        return int(self._shard(first[1]).shape[1])


class PQTokenSource:
    """Product-quantized token vectors stored in the index version."""

    kind = "pq"

    def __init__(self, folder: Path):
        self.codec = faiss.read_index(str(folder / PQ_CODEC))
        self.codes = np.load(folder / PQ_CODES, mmap_mode="r")
        t = pq.read_table(folder / PQ_DOCS).to_pydict()
        self._span = {d: (s, e) for d, s, e in zip(t["doc_id"], t["start"], t["end"], strict=True)}
        p = self.codec.pq if isinstance(self.codec, faiss.IndexPQ) else None
        self._centroids = (faiss.vector_to_array(p.centroids).reshape(p.M, p.ksub, p.dsub)
                           if p is not None and p.nbits == 8 else None)  # one byte per code: table lookups
        meta = pq.read_schema(folder / PQ_DOCS).metadata or {}
        self.dim = int(meta.get(b"dim", self.codec.d))  # the codec's vectors may be zero-padded past it

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.codec.sa_decode(np.ascontiguousarray(codes))[:, :self.dim]

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._span

    def doc_ids(self) -> list[str]:
        return list(self._span)

    def doc(self, doc_id: str) -> np.ndarray:
        s, e = self._span[doc_id]
        return self._decode(self.codes[s:e])

    def flat(self, doc_ids: list[str], max_tokens: int) -> FlatTokens:
        """The first max_tokens tokens of each document as one flat run of codes (scored against
        lookup tables, never decoded), or decoded vectors where the codes are bit-packed."""
        spans = [self._span[d] for d in doc_ids]
        lengths = np.asarray([min(e - s, max_tokens) for s, e in spans], dtype=np.int64)
        if not lengths.sum():
            return FlatTokens(np.zeros((0, self.dim), np.float32), lengths)
        rows = np.concatenate([np.arange(s, s + n) for (s, _), n in zip(spans, lengths, strict=True)])
        codes = np.ascontiguousarray(self.codes[rows])
        if self._centroids is None:
            return FlatTokens(self._decode(codes), lengths)
        return FlatTokens(None, lengths, codes, self._centroids, self.dim)

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]:
        spans = [self._span[d] for d in doc_ids]
        if not spans:
            return []
        flat = np.concatenate([self.codes[s:e] for s, e in spans])
        dec = self._decode(flat)
        out, r = [], 0
        for s, e in spans:
            out.append(dec[r:r + e - s])
            r += e - s
        return out

    def bytes_per_doc(self) -> float:
        return self.codes.shape[0] * self.codes.shape[1] / max(len(self._span), 1)


def padded_dim(dim: int, m: int) -> int:
    """The codec's dimension for m sub-quantizers: dim padded with zeros to a multiple of m, so that any
    byte budget can be spent (384 dimensions in 43 bytes: 43 sub-spaces of 9, the last 3 dimensions zero).
    Refused where a whole sub-space would be padding."""
    if not _fits(dim, m):
        near = [k for k in range(max(1, m - 8), m + 9) if _fits(dim, k)]
        raise ValueError(f"pq_bytes = {m} would leave a sub-quantizer of padding only for {dim}-d tokens; "
                         f"sizes near it that work: {near}")
    return m * -(-dim // m)


def _fits(dim: int, m: int) -> bool:
    dsub = -(-dim // m)
    return m <= dim and m * dsub - dim < dsub


def pad(x: np.ndarray, width: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x if x.shape[1] == width else np.ascontiguousarray(np.pad(x, ((0, 0), (0, width - x.shape[1]))))


def train_pq(sample: np.ndarray, m: int, nbits: int = 8) -> faiss.Index:
    """A PQ codec over unit-norm token vectors (the maps are cosine maps, so norms do not matter), zero-
    padded where m does not divide their dimension."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    faiss.normalize_L2(x)
    x = pad(x, padded_dim(x.shape[1], m))
    nbits = max(1, min(nbits, int(np.log2(max(len(x), 2)))))  # a tiny corpus has fewer tokens than codewords
    codec = faiss.IndexPQ(x.shape[1], m, nbits)
    codec.pq.cp.min_points_per_centroid = 1  # few tokens are expected on small corpora: no warning for it
    # k-means assignment through BLAS: faiss's default (no BLAS below 128,000 query vectors) is fast
    # only for the sub-space widths it has kernels for; 9-d sub-spaces (43 bytes) trained 10x slower
    with blas_assignment():
        codec.train(x)
    return codec


def write_pq_tokens(folder: Path, source: TokenSource, *, m: int = 48, sample_tokens: int = 100_000,
                    seed: int = 0, parent: Path | None = None, unchanged: set[str] | frozenset = frozenset(),
                    parent_stats: dict | None = None, retrain_fraction: float = 0.2) -> dict:
    """Quantize every document's tokens of `source` into `folder`; returns size figures.

    Incremental: with a `parent` version folder (verified, same encoder: the caller's job) holding PQ codes
    of the same size, the parent's codec is kept and the codes of the `unchanged` documents are copied, so
    only changed documents are read and encoded. The codec is refit once the documents encoded since it
    was fit (`parent_stats`, the parent manifest's "tokens", carries the running count) pass
    `retrain_fraction` of the corpus, so that slow nightly churn cannot keep a stale codec forever."""
    ids = source.doc_ids()
    old = _reusable_pq(parent, m, source, parent_stats, sample_tokens) if parent is not None else None
    changed = len(set(ids) - set(unchanged))
    since = changed + int((parent_stats or {}).get("docs_encoded_since_fit", 0))
    if old is not None and since > retrain_fraction * max(len(ids), 1):
        old = None  # too much changed since the codec was fit: refit it to the corpus as it is now
    if old is None:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(ids), size=min(len(ids), max(1, sample_tokens // 200)), replace=False)
        sample = np.concatenate([source.doc(ids[i]) for i in sorted(pick)]).astype(np.float32)
        if len(sample) > sample_tokens:
            sample = sample[rng.choice(len(sample), sample_tokens, replace=False)]
        codec = train_pq(sample, m)
        since = 0
    else:
        codec = old.codec
    reuse = {d for d in ids if old is not None and d in unchanged and d in old}
    encoded = _encode_docs(codec, source, [d for d in ids if d not in reuse])
    codes, starts, ends, r = [], [], [], 0
    for d in ids:
        if d in reuse:
            s, e = old._span[d]
            codes.append(np.asarray(old.codes[s:e]))
        else:
            codes.append(encoded[d])
        starts.append(r)
        r += len(codes[-1])
        ends.append(r)
    copied = len(reuse)
    allc = np.concatenate(codes) if codes else np.zeros((0, codec.sa_code_size()), np.uint8)
    write_with(folder / PQ_CODEC, lambda tmp: faiss.write_index(codec, str(tmp)))

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, allc)

    write_with(folder / PQ_CODES, _save)
    dim = source.doc(ids[0]).shape[1] if ids else codec.d
    write_parquet(folder / PQ_DOCS, pa.table({"doc_id": ids, "start": pa.array(starts, pa.int64()),
                                              "end": pa.array(ends, pa.int64())}, metadata={"dim": str(dim)}))
    return {"m": m, "bits": int(codec.pq.nbits), "tokens": int(r),
            "bytes_per_doc": float(allc.nbytes / max(len(ids), 1)), "codec_reused": old is not None,
            "docs_copied": copied, "docs_encoded_since_fit": since}


ENCODE_BLOCK = 65_536  # token vectors quantized per call (100 MB of float32 at 387 dimensions)


def _encode_docs(codec: faiss.IndexPQ, source: TokenSource, doc_ids: list[str]) -> dict[str, np.ndarray]:
    """PQ codes of each document's tokens, the documents' tokens quantized together in blocks of about
    ENCODE_BLOCK vectors, so that pq_encode's BLAS search works on large matrices."""
    out: dict[str, np.ndarray] = {}
    batch: list[tuple[str, np.ndarray]] = []
    rows = 0

    def flush() -> None:
        x = np.concatenate([v for _, v in batch], dtype=np.float32)
        faiss.normalize_L2(x)
        codes = pq_encode(codec, pad(x, codec.d))
        at = 0
        for d, v in batch:
            out[d] = codes[at:at + len(v)]
            at += len(v)
        batch.clear()

    for d in doc_ids:
        v = source.doc(d)
        batch.append((d, v))
        rows += len(v)
        if rows >= ENCODE_BLOCK:
            flush()
            rows = 0
    if batch:
        flush()
    return out


def pq_encode(codec: faiss.IndexPQ, x: np.ndarray) -> np.ndarray:
    """faiss's PQ codes of x (n, codec.d), each sub-quantizer's nearest centroid found through BLAS
    (ProductQuantizer.compute_codes_with_assign_index over a flat L2 index). faiss's own encoder has fast
    kernels only for some sub-space widths: on 542,481 SciFact tokens in 9-d sub-spaces (43 bytes) it took
    19.1 s, this 7.5 s, with the same codes but for float ties (6 in 10 million) and the same reconstruction
    error. Codes of fewer than 8 bits go through faiss's encoder as they are."""
    pqz = codec.pq
    if x.ndim != 2 or x.shape[1] != codec.d:
        raise ValueError(f"vectors of shape {x.shape} for a PQ codec of dimension {codec.d}")
    x = np.ascontiguousarray(x, dtype=np.float32)  # swig_ptr reads raw memory
    if pqz.nbits != 8 or len(x) < 1024:
        return codec.sa_encode(x)
    codes = np.empty((len(x), pqz.code_size), np.uint8)
    flat = faiss.IndexFlatL2(pqz.dsub)  # held here: the quantizer keeps only a pointer to it
    pqz.assign_index = flat
    try:
        with blas_assignment():
            pqz.compute_codes_with_assign_index(faiss.swig_ptr(x), faiss.swig_ptr(codes), len(x))
    finally:
        pqz.assign_index = None
    return codes


def _reusable_pq(parent: Path, m: int, source: TokenSource, stats: dict | None, sample_tokens: int
                 ) -> PQTokenSource | None:
    """The parent's codes, if they have this code size and dimension, and as many bits per code as a
    codec fit on today's corpus would get (one fit on a corpus too small for 8 bits is refit once the
    corpus has grown enough)."""
    if not has_pq(parent):
        return None
    old = PQTokenSource(parent)
    ids = source.doc_ids()
    dim = source.doc(ids[0]).shape[1] if ids else old.dim
    if m != old.codec.pq.M or old.dim != dim:
        return None
    if stats and stats.get("tokens") and old.codec.pq.nbits < 8:
        per_doc = stats["tokens"] / max(len(old.doc_ids()), 1)
        sample = min(sample_tokens, per_doc * min(len(ids), max(1, sample_tokens // 200)))
        if min(8, int(np.log2(max(sample, 2)))) > old.codec.pq.nbits:
            return None
    return old


def has_pq(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (PQ_CODEC, PQ_CODES, PQ_DOCS))


def write_pieces(folder: Path, doc_ids: list[str], pieces: list[np.ndarray], idf: np.ndarray) -> None:
    """Each document's word-piece ids (aligned with its token vectors) and the corpus idf table."""
    write_parquet(folder / PIECES, pa.table({"doc_id": doc_ids,
                                             "pieces": pa.array([p.tolist() for p in pieces],
                                                                pa.list_(pa.int32()))}))

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, idf.astype(np.float32))

    write_with(folder / IDF, _save)


def read_pieces(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    if not (folder / PIECES).is_file() or not (folder / IDF).is_file():
        return None
    t = pq.read_table(folder / PIECES)
    ids = t["doc_id"].to_pylist()
    col = t["pieces"].combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)
    offs = col.offsets.to_numpy()
    return ({d: flat[offs[i]:offs[i + 1]] for i, d in enumerate(ids)}, np.load(folder / IDF))
