"""The documents, interactions and quarantine datasets: Parquet, partitioned by domain.

Each domain's partition is rewritten atomically (one file per partition) so a
crash mid-ingest leaves the previous snapshot whole. Writers of one domain take its
lock (`writer`), so two ingests into one domain never lose each other's updates; every
rewrite of the documents bumps the domain's *generation*, stored in the file's own
metadata, so a reader gets the table and its generation from one read (`snapshot`) and
a publish can tell an older snapshot from a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidestep.ingest.records import BadRecord, Document, Interaction

from . import schemas
from .atomic import write_parquet
from .paths import DataRoot

PART = "part-0.parquet"
GENERATION = b"sidestep.generation"


def _now() -> datetime:
    return datetime.now(UTC)


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    return _read_with_generation(path, schema)[0]


def documents_generation(root: DataRoot, domain: str) -> int:
    """A domain's documents generation from the file's metadata alone (0 when nothing was ingested)."""
    path = root.documents(domain) / PART
    if not path.is_file():
        return 0
    return int((pq.read_schema(path).metadata or {}).get(GENERATION, b"0"))


def _read_with_generation(path: Path, schema: pa.Schema) -> tuple[pa.Table, int]:
    """The table and the generation written into its metadata (0 for a file that predates generations)."""
    if not path.is_file():
        return schema.empty_table(), 0
    table = pq.read_table(path)
    schemas.check_version(table.schema, str(path))
    generation = int((table.schema.metadata or {}).get(GENERATION, b"0"))
    return table.cast(schema), generation


class DocumentStore:
    def __init__(self, root: DataRoot):
        self.root = root

    def path(self, domain: str) -> Path:
        return self.root.documents(domain) / PART

    def read(self, domain: str, include_deleted: bool = True) -> pa.Table:
        return self.snapshot(domain, include_deleted)[0]

    def snapshot(self, domain: str, include_deleted: bool = True) -> tuple[pa.Table, int]:
        """The domain's documents and their generation, from one read of one file."""
        t, generation = _read_with_generation(self.path(domain), schemas.DOCUMENTS)
        if not include_deleted:
            t = t.filter(pc.invert(t["deleted"]))
        return t, generation

    @contextlib.contextmanager
    def writer(self, domain: str) -> Iterator[None]:
        """The domain's write lock (an flock, released if the process dies): one ingest at a time reads,
        plans and rewrites a domain, so concurrent ingests of different sources both land."""
        p = self.root.lock(domain, "documents")
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def columns(self, domain: str, names: list[str]) -> pa.Table:
        """Only these columns (never the texts unless asked): what planning and counts need."""
        p = self.path(domain)
        if not p.is_file():
            return schemas.DOCUMENTS.empty_table().select(names)
        t = pq.read_table(p, columns=names)
        schemas.check_version(t.schema, str(p))
        return t

    def state(self, domain: str) -> dict[str, tuple[str, bool]]:
        """doc_id -> (content_hash, deleted): what ingest planning needs."""
        t = self.columns(domain, ["doc_id", "content_hash", "deleted"]).to_pydict()
        return {d: (h, x) for d, h, x in zip(t["doc_id"], t["content_hash"], t["deleted"], strict=True)}

    def ids_from_source(self, domain: str, source: str) -> set[str]:
        t = self.columns(domain, ["doc_id", "source"])
        return set(t.filter(pc.equal(t["source"], source))["doc_id"].to_pylist())

    def live_count(self, domain: str) -> int:
        t = self.columns(domain, ["deleted"])
        return int(pc.sum(pc.invert(t["deleted"])).as_py() or 0)

    def apply(self, domain: str, source: str, upserts: Sequence[Document], tombstones: Iterable[str]) -> int:
        """Upsert documents and tombstone ids in one atomic rewrite, the generation bumped; returns live count.
        Callers hold `writer(domain)`."""
        old, generation = self.snapshot(domain)
        now = _now()
        first_seen = dict(zip(old["doc_id"].to_pylist(), old["first_seen"].to_pylist(), strict=True))
        changed = {d.doc_id for d in upserts}
        dead = set(tombstones) - changed
        keep = old.filter(pc.invert(pc.is_in(old["doc_id"], pa.array(sorted(changed | dead), pa.string()))))
        rows = {
            "doc_id": [d.doc_id for d in upserts],
            "title": [d.title for d in upserts],
            "text": [d.text for d in upserts],
            "content_hash": [d.content_hash for d in upserts],
            "source": [source] * len(upserts),
            "location": [d.location for d in upserts],
            "metadata": [json.dumps(d.metadata, sort_keys=True) if d.metadata else None for d in upserts],
            "first_seen": [first_seen.get(d.doc_id) or now for d in upserts],
            "updated_at": [now] * len(upserts),
            "deleted": [False] * len(upserts),
        }
        parts = [keep, pa.table(rows, schema=schemas.DOCUMENTS)]
        if dead:
            gone = old.filter(pc.is_in(old["doc_id"], pa.array(sorted(dead), pa.string())))
            n = gone.num_rows
            gone = gone.set_column(gone.schema.get_field_index("deleted"), "deleted", pa.array([True] * n))
            gone = gone.set_column(gone.schema.get_field_index("updated_at"), "updated_at",
                                   pa.array([now] * n, schemas.DOCUMENTS.field("updated_at").type))
            parts.append(gone)
        table = pa.concat_tables(parts).sort_by("doc_id")
        meta = {**(table.schema.metadata or {}), GENERATION: str(generation + 1).encode()}
        write_parquet(self.path(domain), table.replace_schema_metadata(meta))
        return int(pc.sum(pc.invert(table["deleted"])).as_py() or 0)

    # interactions -----------------------------------------------------------
    def interactions_path(self, domain: str) -> Path:
        return self.root.interactions(domain) / PART

    def read_interactions(self, domain: str) -> pa.Table:
        return _read(self.interactions_path(domain), schemas.INTERACTIONS)

    def replace_interactions(self, domain: str, source: str, rows: Sequence[Interaction]) -> int:
        """Interactions of a source are a snapshot: replace that source's rows."""
        old = self.read_interactions(domain)
        keep = old.filter(pc.not_equal(old["source"], source))
        new = pa.table({
            "user_id": [r.user_id for r in rows],
            "history": [list(r.history) for r in rows],
            "target": [r.target for r in rows],
            "split": [r.split for r in rows],
            "source": [source] * len(rows),
        }, schema=schemas.INTERACTIONS)
        write_parquet(self.interactions_path(domain), pa.concat_tables([keep, new]))
        return len(rows)


class QuarantineStore:
    def __init__(self, root: DataRoot):
        self.root = root

    def write(self, domain: str, run_id: str, source: str, bad: Sequence[BadRecord]) -> Path | None:
        if not bad:
            return None
        now = _now()
        table = pa.table({
            "run_id": [run_id] * len(bad),
            "domain": [domain] * len(bad),
            "source": [source] * len(bad),
            "location": [b.location for b in bad],
            "record_id": [b.record_id for b in bad],
            "reason": [b.reason for b in bad],
            "raw": [b.raw for b in bad],
            "quarantined_at": [now] * len(bad),
        }, schema=schemas.QUARANTINE)
        path = self.root.quarantine(domain) / f"{run_id}.parquet"
        write_parquet(path, table)
        return path

    def read(self, domain: str | None = None) -> pa.Table:
        base = self.root.quarantine(domain) if domain else self.root.quarantine_root()
        files = sorted(base.rglob("*.parquet")) if base.is_dir() else []
        if not files:
            return schemas.QUARANTINE.empty_table()
        return pa.concat_tables([_read(f, schemas.QUARANTINE) for f in files])

    def count(self, domain: str | None = None) -> int:
        """Distinct bad records (a rerun that meets the same bad record again does not double it)."""
        t = self.read(domain).select(["domain", "source", "location", "reason", "raw"])
        return len(set(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))) if t.num_rows else 0
