"""Ingest: read a source, quarantine bad records, apply an incremental upsert by content hash."""

from __future__ import annotations

import uuid

from sidestep.config import SourceConfig
from sidestep.ingest.planning import plan_ingest
from sidestep.ingest.readers import read_source
from sidestep.results import IngestReport
from sidestep.storage.documents import DocumentStore, QuarantineStore
from sidestep.storage.paths import DataRoot


def ingest_source(root: DataRoot, source: SourceConfig, *, max_text_bytes: int,
                  run_id: str | None = None) -> IngestReport:
    """Plain function (also used outside Prefect); raises SourceError before writing anything."""
    run_id = run_id or uuid.uuid4().hex[:12]
    result = read_source(source.path, source.format, id_field=source.id_field, title_field=source.title_field,
                         text_field=source.text_field, max_text_bytes=max_text_bytes)
    docs, quarantine = DocumentStore(root), QuarantineStore(root)
    quarantine.write(source.domain, run_id, source.path, result.bad)
    with docs.writer(source.domain):  # plan and rewrite against the domain as it is, one writer at a time
        existing = docs.state(source.domain)
        plan = plan_ingest(existing, result.documents, snapshot=source.snapshot)
        # A snapshot tombstones only what this source ingested before, never another source's documents.
        own = docs.ids_from_source(source.domain, source.path)
        tombstoned = [d for d in plan.tombstoned_ids if d in own]
        upserts = [*plan.new, *plan.updated, *plan.revived]
        live = docs.apply(source.domain, source.path, upserts, tombstoned) if (upserts or tombstoned) else \
            docs.live_count(source.domain)
        n_inter = docs.replace_interactions(source.domain, source.path, result.interactions) \
            if result.interactions else 0
    counts = plan.counts()
    return IngestReport(domain=source.domain, source=source.path, format=result.format, run_id=run_id,
                        read=result.n_read, new=counts["new"], updated=counts["updated"],
                        unchanged=counts["unchanged"], tombstoned=len(tombstoned), quarantined=len(result.bad),
                        duplicates=result.n_duplicates, interactions=n_inter, live_documents=live)
