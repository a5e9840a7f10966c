"""Versioned Arrow schemas of every Parquet dataset sidestep writes.

The schema version is stored in each file's metadata; a reader refuses a file
written by a newer, unknown schema instead of misreading it.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = b"1"


def with_version(schema: pa.Schema, name: str) -> pa.Schema:
    return schema.with_metadata({b"sidestep.schema": name.encode(), b"sidestep.schema_version": SCHEMA_VERSION})


DOCUMENTS = with_version(pa.schema([
    ("doc_id", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("content_hash", pa.string()),
    ("source", pa.string()),
    ("location", pa.string()),
    ("metadata", pa.string()),  # JSON
    ("first_seen", pa.timestamp("ms", tz="UTC")),
    ("updated_at", pa.timestamp("ms", tz="UTC")),
    ("deleted", pa.bool_()),
]), "documents")

INTERACTIONS = with_version(pa.schema([
    ("user_id", pa.string()),
    ("history", pa.list_(pa.string())),
    ("target", pa.string()),
    ("split", pa.string()),
    ("source", pa.string()),
]), "interactions")

QUARANTINE = with_version(pa.schema([
    ("run_id", pa.string()),
    ("domain", pa.string()),
    ("source", pa.string()),
    ("location", pa.string()),
    ("record_id", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),
    ("quarantined_at", pa.timestamp("ms", tz="UTC")),
]), "quarantine")


def chunk_schema(dim: int) -> pa.Schema:
    """Rows of an embedding shard: one per chunk; token vectors live in the shard's .npy."""
    return with_version(pa.schema([
        ("content_hash", pa.string()),
        ("chunk_idx", pa.int32()),
        ("n_chunks", pa.int32()),
        ("tok_start", pa.int32()),
        ("tok_end", pa.int32()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("token_offset", pa.int64()),
        ("pooled", pa.list_(pa.float32(), dim)),
    ]), "embedding_shard")


INDEX_CHUNKS = with_version(pa.schema([
    ("doc_id", pa.string()),
    ("title", pa.string()),
    ("content_hash", pa.string()),
    ("chunk_idx", pa.int32()),
    ("char_start", pa.int32()),
    ("char_end", pa.int32()),
    ("shard", pa.string()),
    ("token_offset", pa.int64()),
    ("n_tokens", pa.int32()),
    ("snippet", pa.string()),
    ("section", pa.int32()),  # the chunk's section in its document's map; -1 without a map
]), "index_chunks")


def index_maps_schema(dim: int) -> pa.Schema:
    """Per document of an index version: its map's summary and vectors (null vectors: no map)."""
    return with_version(pa.schema([
        ("doc_id", pa.string()),
        ("global_summary", pa.string()),
        ("section_titles", pa.list_(pa.string())),
        ("global_vec", pa.list_(pa.float32(), dim)),
        ("section_vecs", pa.list_(pa.list_(pa.float32(), dim))),
        ("title_vecs", pa.list_(pa.list_(pa.float32(), dim))),
    ]), "index_maps")

RUN = with_version(pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("rank", pa.int32()),
    ("score", pa.float32()),
]), "run")


def check_version(schema: pa.Schema, path: str) -> None:
    meta = schema.metadata or {}
    v = meta.get(b"sidestep.schema_version")
    if v is not None and int(v) > int(SCHEMA_VERSION):
        raise ValueError(f"{path} was written with schema version {v.decode()}, newer than this sidestep knows")
