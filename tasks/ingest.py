"""Ingest task: one source into one domain (sidestep.pipeline.ingest); a bad source is not retried."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import SourceConfig
from sidestep.ingest.readers import SourceError
from sidestep.pipeline.ingest import ingest_source
from sidestep.results import IngestReport, skipped_preview
from sidestep.storage.paths import DataRoot

from .common import RETRY


@task(name="ingest-source", **RETRY, cache_policy=NO_CACHE,
      retry_condition_fn=lambda task, run, state: not isinstance(state.result(raise_on_failure=False), SourceError),
      tags=["ingest"])
def ingest_task(root: str, source: SourceConfig, max_text_bytes: int, run_id: str | None = None) -> IngestReport:
    out = ingest_source(DataRoot(Path(root)), source, max_text_bytes=max_text_bytes,
                        run_id=run_id)
    get_run_logger().info(
        "ingest %s: read=%d new=%d updated=%d unchanged=%d tombstoned=%d quarantined=%d interactions=%d",
        out.domain, out.read, out.new, out.updated, out.unchanged, out.tombstoned, out.quarantined, out.interactions)
    if out.skipped:
        get_run_logger().warning("ingest %s: %d file(s) not read (a text folder reads only .txt and .md): %s",
                                 out.domain, out.skipped, skipped_preview(out.skipped, out.skipped_files))
    return out
