"""Streaming writes for ingest: records go to disk in bounded batches as a source is read, never all
held in memory.

- `Staging`: the validated documents of one run, written as they come to a temporary Parquet file
  beside the domain's partition (removed when the run ends, whatever happens).
- `QuarantineWriter`: the run's bad records, streamed into `quarantine/<domain>/<run>.parquet`, which
  appears atomically on `commit` (nothing on failure).
- `rewrite_partition`: the domain's new partition from the old one and the staged documents, batch by
  batch: the old rows kept, upserts and tombstones applied, the generation bumped, then one atomic
  replace, as `DocumentStore.apply` does for a list.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidestep.ingest.records import BadRecord, Document

from . import schemas
from .atomic import fsync_dir, fsync_file, tmp_name
from .documents import GENERATION, DocumentStore
from .paths import DataRoot

BATCH_BYTES = 16 << 20
BATCH_ROWS = 8192
STAGED = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                    ("content_hash", pa.string()), ("location", pa.string()), ("metadata", pa.string())])


class _Batcher:
    """Rows gathered column-wise and flushed to a ParquetWriter every BATCH_BYTES / BATCH_ROWS."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str):
        self.path, self.schema = path, schema
        self.writer = pq.ParquetWriter(path, schema, compression=compression)
        self.cols: dict[str, list] = {n: [] for n in schema.names}
        self.bytes = self.rows = self.written = 0

    def add(self, row: dict[str, Any], size: int) -> None:
        for n in self.schema.names:
            self.cols[n].append(row[n])
        self.bytes += size
        self.rows += 1
        if self.bytes >= BATCH_BYTES or self.rows >= BATCH_ROWS:
            self.flush()

    def write(self, table: pa.Table) -> None:
        self.flush()
        if table.num_rows:
            self.writer.write_table(table)
            self.written += table.num_rows

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.table(self.cols, schema=self.schema))
            self.written += self.rows
        self.cols = {n: [] for n in self.schema.names}
        self.bytes = self.rows = 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


class Staging:
    """Validated documents of one ingest run, on disk as they are read."""

    def __init__(self, root: DataRoot, domain: str, run_id: str):
        folder = root.documents(domain)
        # the folders this run creates (the domain's, and documents/ on a fresh root), removed again when empty
        self._made = [p for p in (folder, *folder.parents) if p.is_relative_to(root.root) and p != root.root
                      and not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / f".staging-{run_id}.parquet"
        self._out: _Batcher | None = _Batcher(self.path, STAGED, "snappy")
        # held while the run lives: `sidestep gc` collects a staging file only when nobody holds it (a killed run)
        self._lock = open(self.path, "rb")  # noqa: SIM115 (closed in __exit__)
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
            self.path.unlink(missing_ok=True)
        finally:
            self._lock.close()
        for made in self._made:  # a first ingest that wrote nothing leaves no (phantom) domain behind
            with contextlib.suppress(OSError):
                made.rmdir()  # only when empty

    def add(self, doc: Document) -> None:
        assert self._out is not None, "staging is closed"
        self._out.add({"doc_id": doc.doc_id, "title": doc.title, "text": doc.text, "content_hash": doc.content_hash,
                       "location": doc.location,
                       "metadata": json.dumps(doc.metadata, sort_keys=True) if doc.metadata else None},
                      len(doc.text) + len(doc.title) + 200)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        self.close()
        yield from _batches(self.path, columns)

    def documents(self, ids: set[str]) -> dict[str, Document]:
        """The staged documents with these ids (a few: the first copies of conflicting ids)."""
        out: dict[str, Document] = {}
        if not ids:
            return out
        wanted = pa.array(sorted(ids), pa.string())
        for b in self.batches(["doc_id", "title", "text", "location"]):
            hit = b.filter(pc.is_in(b.column("doc_id"), value_set=wanted))
            for r in hit.to_pylist():
                out.setdefault(r["doc_id"], Document(r["doc_id"], r["text"], r["title"], r["location"]))
        return out


def _batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows a bounded number of bytes at a time (rows per batch from its metadata)."""
    pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    md = pf.metadata
    for rg in range(md.num_row_groups):
        g = md.row_group(rg)
        per_row = g.total_byte_size // max(1, g.num_rows)
        rows = int(min(BATCH_ROWS, max(1, BATCH_BYTES // max(1, per_row))))
        yield from pf.iter_batches(batch_size=rows, row_groups=[rg], columns=columns)


class QuarantineWriter:
    """One run's bad records, streamed; the file appears atomically on `commit` if there were any."""

    def __init__(self, root: DataRoot, domain: str, run_id: str, source: str):
        self.final = root.quarantine(domain) / f"{run_id}.parquet"
        self.domain, self.run_id, self.source = domain, run_id, source
        self.count = 0
        self._tmp: Path | None = None
        self._out: _Batcher | None = None

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._out is not None:  # not committed: leave nothing behind
            self._out.writer.close()
            self._out = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def add(self, bad: BadRecord) -> None:
        if self._out is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tmp_name(self.final)
            self._out = _Batcher(self._tmp, schemas.QUARANTINE, "zstd")
        self._out.add({"run_id": self.run_id, "domain": self.domain, "source": self.source,
                       "location": bad.location, "record_id": bad.record_id, "reason": bad.reason,
                       "raw": bad.raw, "quarantined_at": datetime.now(UTC)}, len(bad.raw) + 200)
        self.count += 1

    def extend(self, bad: Iterable[BadRecord]) -> None:
        for b in bad:
            self.add(b)

    def commit(self) -> Path | None:
        if self._out is None or self._tmp is None:
            return None
        self._out.close()
        self._out = None
        fsync_file(self._tmp)
        os.replace(self._tmp, self.final)
        fsync_dir(self.final.parent)
        self._tmp = None
        return self.final


def rewrite_partition(store: DocumentStore, domain: str, source: str, staging: Staging, upserts: set[str],
                      tombstones: Iterable[str]) -> int:
    """Upsert the staged documents whose ids are in `upserts` and tombstone `tombstones`, in one atomic
    rewrite streamed batch by batch, the generation bumped; returns the live count. Callers hold
    `store.writer(domain)`."""
    path = store.path(domain)
    old_gen = 0
    if path.is_file():
        old_schema = pq.read_schema(path)
        schemas.check_version(old_schema, str(path))
        old_gen = int((old_schema.metadata or {}).get(GENERATION, b"0"))
    dead = set(tombstones) - upserts
    touched = pa.array(sorted(upserts | dead), pa.string())
    dead_arr = pa.array(sorted(dead), pa.string())
    now = datetime.now(UTC)
    meta = {**(schemas.DOCUMENTS.metadata or {}), GENERATION: str(old_gen + 1).encode()}
    schema = schemas.DOCUMENTS.with_metadata(meta)
    ts = schemas.DOCUMENTS.field("updated_at").type
    first_seen: dict[str, Any] = {}
    live = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        out = _Batcher(tmp, schema, "zstd")
        if path.is_file():
            for b in _batches(path):
                t = pa.Table.from_batches([b]).cast(schemas.DOCUMENTS)
                hit = pc.is_in(t["doc_id"], value_set=touched)
                keep = t.filter(pc.invert(hit))
                live += int(pc.sum(pc.invert(keep["deleted"])).as_py() or 0)
                out.write(keep)
                changed = t.filter(hit)
                first_seen.update(zip(changed["doc_id"].to_pylist(), changed["first_seen"].to_pylist(), strict=True))
                gone = changed.filter(pc.is_in(changed["doc_id"], value_set=dead_arr))
                if gone.num_rows:
                    n = gone.num_rows
                    gone = gone.set_column(gone.schema.get_field_index("deleted"), "deleted", pa.array([True] * n))
                    gone = gone.set_column(gone.schema.get_field_index("updated_at"), "updated_at",
                                           pa.array([now] * n, ts))
                    out.write(gone)
        wanted = pa.array(sorted(upserts), pa.string())
        for b in staging.batches():
            t = pa.Table.from_batches([b])
            t = t.filter(pc.is_in(t["doc_id"], value_set=wanted))
            n = t.num_rows
            if not n:
                continue
            ids = t["doc_id"].to_pylist()
            rows = pa.table({
                "doc_id": t["doc_id"], "title": t["title"], "text": t["text"], "content_hash": t["content_hash"],
                "source": pa.array([source] * n, pa.string()), "location": t["location"], "metadata": t["metadata"],
                "first_seen": pa.array([first_seen.get(d) or now for d in ids], ts),
                "updated_at": pa.array([now] * n, ts), "deleted": pa.array([False] * n),
            }, schema=schemas.DOCUMENTS)
            live += n
            out.write(rows)
        out.close()
        written = pq.ParquetFile(tmp).metadata.num_rows
        if written != out.written:
            raise OSError(f"parquet verify failed for {path}: wrote {out.written} rows, read {written}")
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return live
