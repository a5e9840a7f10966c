"""Ingest: read a source, quarantine bad records, apply an incremental upsert by content hash.

The source streams: each record is validated as it is read and written to disk in bounded batches
(documents to a staging file, bad records to the run's quarantine file), so memory does not grow with
the source; only ids and content hashes are held, for de-duplication and planning.
"""

from __future__ import annotations

import uuid

from sidestep.config import SourceConfig
from sidestep.ingest.dedupe import StreamDedupe
from sidestep.ingest.planning import plan_ingest
from sidestep.ingest.readers import stream_source
from sidestep.ingest.records import BadRecord
from sidestep.results import IngestReport
from sidestep.storage.documents import DocumentStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.staging import QuarantineWriter, Staging, rewrite_partition


def ingest_source(root: DataRoot, source: SourceConfig, *, max_text_bytes: int,
                  run_id: str | None = None) -> IngestReport:
    """Plain function (also used outside Prefect); raises SourceError before writing anything."""
    run_id = run_id or uuid.uuid4().hex[:12]
    stream = stream_source(source.path, source.format, id_field=source.id_field, title_field=source.title_field,
                           text_field=source.text_field, max_text_bytes=max_text_bytes)
    docs = DocumentStore(root)
    dedupe, n_read = StreamDedupe(), 0
    with QuarantineWriter(root, source.domain, run_id, source.path) as bad, \
            Staging(root, source.domain, run_id) as staging:
        for item in stream.items:
            n_read += 1
            if isinstance(item, BadRecord):
                bad.add(item)
            elif dedupe.add(item):
                staging.add(item)
        conflicts = dedupe.conflicting_ids()
        bad.extend(dedupe.conflicts(staging.documents(conflicts)))
        bad.extend(stream.bad_interactions)
        n_bad = bad.count
        bad.commit()
        with docs.writer(source.domain):  # plan and rewrite against the domain as it is, one writer at a time
            existing = docs.state(source.domain)
            plan = plan_ingest(existing, dedupe.unique(), snapshot=source.snapshot)  # type: ignore[arg-type]
            # A snapshot tombstones only what this source ingested before, never another source's documents.
            own = docs.ids_from_source(source.domain, source.path)
            tombstoned = [d for d in plan.tombstoned_ids if d in own]
            upserts = {d.doc_id for d in plan.to_write}
            live = rewrite_partition(docs, source.domain, source.path, staging, upserts, tombstoned) \
                if (upserts or tombstoned) else docs.live_count(source.domain)
            n_inter = docs.replace_interactions(source.domain, source.path, stream.interactions) \
                if stream.interactions else 0
    counts = plan.counts()
    return IngestReport(domain=source.domain, source=source.path, format=stream.format, run_id=run_id,
                        read=n_read, new=counts["new"], updated=counts["updated"],
                        unchanged=counts["unchanged"], tombstoned=len(tombstoned), quarantined=n_bad,
                        duplicates=dedupe.n_duplicates, interactions=n_inter, live_documents=live,
                        skipped=stream.skipped, skipped_files=stream.skipped_files)
