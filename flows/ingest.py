"""The ingest flow: one source into one domain."""

from __future__ import annotations

from prefect import flow

from sidestep.config import Format, SourceConfig
from sidestep.storage.sources import SourceRegistry
from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.ingest import ingest_task


@flow(name="ingest", log_prints=True)
def ingest_flow(path: str, domain: str, format: Format | None = None, id_field: str = "id",
                title_field: str | None = "title", text_field: str = "text", snapshot: bool = False,
                max_text_bytes: int | None = None, config_path: str | None = None) -> dict:
    """Read PATH into DOMAIN: new and changed documents are upserted by content hash, bad records
    quarantined with their reason; with snapshot, documents this source no longer has are tombstoned.
    The source is recorded in the data root, so the nightly run re-reads it and knows DOMAIN without a config.

    Args:
        path: File or folder to read.
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        format: Source format; guessed from the path when empty.
        id_field: Field holding the record id (JSON/CSV).
        title_field: Field holding the title, if any.
        text_field: Field holding the text.
        snapshot: The source is complete: documents it no longer has are tombstoned.
        max_text_bytes: Longest text accepted; longer records are quarantined. Default from [ingest].
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    source = SourceConfig(domain=domain, path=path, format=format, id_field=id_field, title_field=title_field,
                          text_field=text_field, snapshot=snapshot)
    root = root_from(settings)
    report = ingest_task(str(root.root), source, max_text_bytes or settings.ingest.max_text_bytes)
    # remembered in the data root, so the nightly run, `reindex --domain` and `status` know this domain
    SourceRegistry(root).record(source.model_copy(update={"format": report.format}))
    return report.as_dict()
