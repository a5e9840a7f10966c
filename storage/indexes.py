"""Index version files: the FAISS index and its chunk table, written into a staging
folder and loaded back (verified) into a pure `IndexedCorpus`."""

from __future__ import annotations

from pathlib import Path

import faiss
import pyarrow as pa
import pyarrow.parquet as pq

from sidestep.index import DocSearcher, configure_search
from sidestep.search import IndexedCorpus

from . import schemas
from .artifacts import IndexStore
from .atomic import write_parquet, write_with

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.parquet"


def write_version_files(staged: Path, index: faiss.Index, chunks: pa.Table) -> None:
    write_with(staged / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    write_parquet(staged / CHUNKS_FILE, chunks.cast(schemas.INDEX_CHUNKS))


def load_version(store: IndexStore, domain: str, version: str, *, verify: bool = True,
                 overfetch: int = 4, doc_score: str = "max", ef_search: int | None = None) -> IndexedCorpus:
    """Load a published version; with verify, checksums are checked first (corrupt → CorruptArtifact)."""
    manifest = store.verify(domain, version) if verify else store.manifest(domain, version)
    folder = store.path(domain, version)
    index = faiss.read_index(str(folder / INDEX_FILE))
    configure_search(index, ef_search)
    chunks = pq.read_table(folder / CHUNKS_FILE, columns=["doc_id", "title", "chunk_idx", "snippet"])
    doc_ids = chunks["doc_id"].to_pylist()
    return IndexedCorpus(
        domain=domain,
        version=version,
        searcher=DocSearcher(index, doc_ids, overfetch=overfetch, doc_score=doc_score),
        titles=chunks["title"].to_pylist(),
        snippets=chunks["snippet"].to_pylist(),
        chunk_idx=chunks["chunk_idx"].to_pylist(),
        manifest=manifest,
    )


def load_current(store: IndexStore, domain: str, **kw) -> IndexedCorpus | None:
    v = store.current(domain)
    return load_version(store, domain, v, **kw) if v else None


def read_chunks(store: IndexStore, domain: str, version: str) -> pa.Table:
    return pq.read_table(store.path(domain, version) / CHUNKS_FILE)
