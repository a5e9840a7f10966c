"""Content-addressed embedding cache: immutable shards keyed by document content hash.

A shard is `<id>.tokens.npy` (float16 token vectors of all its chunks, stacked)
plus `<id>.parquet` (one row per chunk: content hash, positions, pooled vector,
offset into the .npy). The Parquet file is written last, so a shard without it
is an interrupted write and is ignored. Index versions reference shards by id;
nothing rewrites a shard once written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidestep.text.encoder import EncodedDoc

from . import schemas
from .atomic import sha256_file, write_parquet, write_with
from .paths import DataRoot


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array)


@dataclass(frozen=True)
class ShardInfo:
    shard: str
    rows: int
    tokens: int
    npy_sha256: str


class EmbeddingStore:
    def __init__(self, root: DataRoot, encoder_key: str, dim: int):
        self.dir = root.embeddings(encoder_key)
        self.dim = dim
        self.schema = schemas.chunk_schema(dim)
        self._catalog: pa.Table | None = None

    def shard_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".parquet")] for p in self.dir.glob("*.parquet"))

    def catalog(self) -> pa.Table:
        """All chunk rows of all complete shards (without pooled vectors), with their shard id."""
        if self._catalog is None:
            parts = []
            for s in self.shard_ids():
                t = pq.read_table(self.dir / f"{s}.parquet", columns=[c for c in self.schema.names if c != "pooled"])
                parts.append(t.append_column("shard", pa.array([s] * t.num_rows, pa.string())))
            self._catalog = pa.concat_tables(parts) if parts else pa.table(
                {**{f.name: pa.array([], f.type) for f in self.schema if f.name != "pooled"},
                 "shard": pa.array([], pa.string())})
        return self._catalog

    def known(self) -> set[str]:
        return set(self.catalog()["content_hash"].to_pylist())

    def chunk_counts(self) -> dict[str, int]:
        """Chunks stored per content hash (by chunk index, so a content written twice counts once); reads two
        columns of each shard's table, or the catalog where it is already loaded."""
        cols = ["content_hash", "chunk_idx"]
        parts = ([self._catalog.select(cols)] if self._catalog is not None
                 else [pq.read_table(self.dir / f"{s}.parquet", columns=cols) for s in self.shard_ids()])
        parts = [t for t in parts if t.num_rows]
        if not parts:
            return {}
        g = pa.concat_tables(parts).group_by("content_hash").aggregate([("chunk_idx", "max")])
        return dict(zip(g["content_hash"].to_pylist(), (n + 1 for n in g["chunk_idx_max"].to_pylist()), strict=True))

    def write(self, docs: Sequence[EncodedDoc]) -> ShardInfo:
        """Write one immutable shard; .npy first, .parquet last (its presence marks completion)."""
        shard = uuid.uuid4().hex[:16]
        tokens = [t for d in docs for t in d.tokens]
        stacked = np.concatenate(tokens).astype(np.float16) if tokens else np.zeros((0, self.dim), np.float16)
        npy = self.dir / f"{shard}.tokens.npy"
        write_with(npy, lambda tmp: _save_npy(tmp, stacked))
        rows: dict[str, list] = {n: [] for n in self.schema.names}
        offset = 0
        for d in docs:
            for c, tok in zip(d.chunks, d.tokens, strict=True):
                rows["content_hash"].append(d.content_hash)
                rows["chunk_idx"].append(c.chunk_idx)
                rows["n_chunks"].append(len(d.chunks))
                rows["tok_start"].append(c.tok_start)
                rows["tok_end"].append(c.tok_end)
                rows["char_start"].append(c.char_start)
                rows["char_end"].append(c.char_end)
                rows["n_tokens"].append(len(tok))
                rows["token_offset"].append(offset)
                offset += len(tok)
        pooled = np.concatenate([d.pooled for d in docs]).astype(np.float32) if docs else np.zeros((0, self.dim))
        rows["pooled"] = pa.FixedSizeListArray.from_arrays(pa.array(pooled.ravel(), pa.float32()), self.dim)
        table = pa.table(rows, schema=self.schema)
        write_parquet(self.dir / f"{shard}.parquet", table)
        self._catalog = None
        return ShardInfo(shard, table.num_rows, int(stacked.shape[0]), sha256_file(npy))

    def gather(self, hashes: Iterable[str]) -> tuple[pa.Table, np.ndarray]:
        """Chunk rows and pooled vectors for the given content hashes, in catalog order.

        If a hash was written to several shards (two runs racing), the first shard wins.
        """
        wanted = pa.array(sorted(set(hashes)), pa.string())
        cat = self.catalog()
        rows = cat.filter(pc.is_in(cat["content_hash"], wanted))
        # de-duplicate: keep the first shard seen per (content_hash)
        first: dict[str, str] = {}
        keep = []
        for i, (h, s) in enumerate(zip(rows["content_hash"].to_pylist(), rows["shard"].to_pylist(), strict=True)):
            if first.setdefault(h, s) == s:
                keep.append(i)
        rows = rows.take(pa.array(keep, pa.int64()))
        pooled = np.zeros((rows.num_rows, self.dim), np.float32)
        shards = rows["shard"].to_pylist()
        for s in sorted(set(shards)):
            sel = [i for i, x in enumerate(shards) if x == s]
            t = pq.read_table(self.dir / f"{s}.parquet", columns=["content_hash", "chunk_idx", "pooled"])
            key = {(h, c): j for j, (h, c) in enumerate(zip(t["content_hash"].to_pylist(),
                                                            t["chunk_idx"].to_pylist(), strict=True))}
            mat = t["pooled"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            hs, cs = rows["content_hash"].to_pylist(), rows["chunk_idx"].to_pylist()
            pooled[sel] = mat[[key[(hs[i], cs[i])] for i in sel]]
        return rows, pooled

    def tokens(self, shard: str) -> np.ndarray:
        """Memory-mapped float16 token vectors of one shard."""
        return np.load(self.dir / f"{shard}.tokens.npy", mmap_mode="r")

    def shard_path(self, shard: str) -> Path:
        return self.dir / f"{shard}.tokens.npy"
