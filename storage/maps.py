"""Document maps: content-addressed like embeddings, keyed by content hash and summarizer.

A shard is one Parquet file: per document its map (JSON), the vector of its global text,
one vector per section text and one per section heading path. Shards are immutable; a map that could not be built is
not stored (the document's map is quarantined and the document stays searchable).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidestep.docmaps.docmap import DocMap
from sidestep.docmaps.maps import MapVectors
from sidestep.text.chunking import Chunk
from sidestep.text.encoder import EncodedDoc

from .atomic import write_parquet
from .embeddings import EmbeddingStore
from .paths import DataRoot
from .schemas import with_version


def map_schema(dim: int) -> pa.Schema:
    return with_version(pa.schema([
        ("content_hash", pa.string()),
        ("map", pa.string()),  # DocMap.as_dict() as JSON
        ("global_vec", pa.list_(pa.float32(), dim)),
        ("section_vecs", pa.list_(pa.list_(pa.float32(), dim))),
        ("title_vecs", pa.list_(pa.list_(pa.float32(), dim))),
    ]), "maps")


class MapStore:
    def __init__(self, root: DataRoot, key: str, dim: int):
        self.dir = root.maps(key)
        self.dim = dim
        self.schema = map_schema(dim)

    def shards(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.parquet")) if self.dir.is_dir() else []

    def known(self) -> set[str]:
        out: set[str] = set()
        for s in self.shards():
            out.update(pq.read_table(self.dir / f"{s}.parquet", columns=["content_hash"])["content_hash"]
                       .to_pylist())
        return out

    def write(self, maps: Sequence[DocMap], vectors: Sequence[MapVectors]) -> str | None:
        if not maps:
            return None
        shard = uuid.uuid4().hex[:16]
        table = pa.table({
            "content_hash": [m.content_hash for m in maps],
            "map": [json.dumps(m.as_dict(), sort_keys=True) for m in maps],
            "global_vec": [v.global_vec.astype(np.float32).tolist() for v in vectors],
            "section_vecs": [v.section_vecs.astype(np.float32).tolist() for v in vectors],
            "title_vecs": [_titles(v).tolist() for v in vectors],
        }, schema=self.schema)
        write_parquet(self.dir / f"{shard}.parquet", table)
        return shard

    def gather(self, hashes: Iterable[str]) -> dict[str, tuple[DocMap, MapVectors]]:
        wanted = pa.array(sorted(set(hashes)), pa.string())
        out: dict[str, tuple[DocMap, MapVectors]] = {}
        for s in self.shards():
            t = pq.read_table(self.dir / f"{s}.parquet")
            t = t.filter(pc.is_in(t["content_hash"], wanted))
            for row in t.to_pylist():
                if row["content_hash"] in out:
                    continue
                m = DocMap.from_dict(json.loads(row["map"]))
                secs = np.asarray(row["section_vecs"], np.float32).reshape(-1, self.dim)
                heads = np.asarray(row["title_vecs"], np.float32).reshape(-1, self.dim)
                out[row["content_hash"]] = (m, MapVectors(np.asarray(row["global_vec"], np.float32), secs, heads))
        return out


def _titles(v: MapVectors) -> np.ndarray:
    return (v.title_vecs if v.title_vecs is not None else np.zeros_like(v.section_vecs)).astype(np.float32)


def encoded_docs(store: EmbeddingStore, hashes: Iterable[str]) -> dict[str, EncodedDoc]:
    """Rebuild EncodedDocs (chunk plan + token vectors) from stored shards, without the encoder."""
    rows, pooled = store.gather(hashes)
    cols = {c: rows[c].to_pylist() for c in ("content_hash", "chunk_idx", "tok_start", "tok_end", "char_start",
                                             "char_end", "shard", "token_offset", "n_tokens")}
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(cols["content_hash"]):
        by_hash.setdefault(h, []).append(i)
    mm: dict[str, np.ndarray] = {}
    out = {}
    for h, idx in by_hash.items():
        idx.sort(key=lambda i: cols["chunk_idx"][i])
        chunks, toks = [], []
        for i in idx:
            chunks.append(Chunk(cols["chunk_idx"][i], cols["tok_start"][i], cols["tok_end"][i],
                                cols["char_start"][i], cols["char_end"][i]))
            arr = mm.setdefault(cols["shard"][i], store.tokens(cols["shard"][i]))
            o = cols["token_offset"][i]
            toks.append(np.asarray(arr[o:o + cols["n_tokens"][i]]))
        out[h] = EncodedDoc(h, chunks, pooled[idx], toks)
    return out
