"""The nightly reindex: ingest → embed → summarize (document maps) → index → publish, per domain."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.status import record_nightly
from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.embed import embed_task
from sidestep.tasks.index import publish_task
from sidestep.tasks.ingest import ingest_task
from sidestep.tasks.rec import fit_codebooks_task, refresh_tables_task
from sidestep.tasks.summarize import summarize_task

from sidestep.pipeline.rec import rec_domains


class ReindexFailed(RuntimeError):
    def __init__(self, summary: dict):
        self.summary = summary
        failed = ", ".join(f"{d}: {e}" for d, e in summary["failed"].items())
        super().__init__(f"reindex failed for {len(summary['failed'])} domain(s): {failed}")


@flow(name="nightly-reindex", log_prints=True)
def nightly_reindex(domains: list[str] | None = None, force: bool = False, skip_ingest: bool = False,
                    config_path: str | None = None) -> dict:
    """Ingest every configured source, embed what changed, rebuild and publish each domain's index;
    for domains with interactions, fit codebooks (only on drift), then train or re-encode their tables.

    An unchanged corpus re-encodes nothing and publishes nothing. One failing domain does not stop
    the others; the run fails at the end, naming them.

    Args:
        domains: Domains to process; all configured domains when empty.
        force: Publish new versions even if nothing changed, and refit the codebook and token codec (the full refit).
        skip_ingest: Reuse the stored documents instead of reading the sources again.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    known = settings.domains()
    chosen = domains or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; configured: {known}")
    log = get_run_logger()
    summary: dict = {"domains": {}, "failed": {}, "encoded": 0, "reused": 0, "summarized": 0, "maps_failed": 0,
                     "published": [], "quarantined": 0, "staging_swept": sweep_staging(DataRoot(Path(root)))}
    for domain in chosen:
        try:
            ingests = [] if skip_ingest else [
                ingest_task(root, s, settings.ingest.max_text_bytes) for s in settings.sources_for(domain)]
            emb = embed_task(root, settings, domain)
            maps = summarize_task(root, settings, domain)
            pub = publish_task(root, settings, domain, force=force)
        except Exception as e:  # one domain's failure must not stop the others
            log.error("domain %s failed: %s", domain, e)
            summary["failed"][domain] = f"{type(e).__name__}: {e}"
            continue
        summary["domains"][domain] = {"ingest": ingests, "embed": emb, "summarize": maps, "index": pub}
        summary["summarized"] += maps["summarized"]
        summary["maps_failed"] += maps["failed"]
        summary["encoded"] += emb["encoded"]
        summary["reused"] += emb["reused"]
        summary["quarantined"] += sum(i["quarantined"] for i in ingests)
        if pub["published"]:
            summary["published"].append({"domain": domain, "version": pub["version"]})
    _recommendation_stages(root, settings, [d for d in chosen if d not in summary["failed"]], force, summary)
    log.info("reindex: %d domains, encoded=%d reused=%d summarized=%d maps_failed=%d published=%d "
             "quarantined=%d failed=%d", len(chosen), summary["encoded"], summary["reused"], summary["summarized"],
             summary["maps_failed"], len(summary["published"]), summary["quarantined"], len(summary["failed"]))
    record_nightly(DataRoot(Path(root)), summary, run_name=_run_name(), started_at=started,
                   seconds=time.perf_counter() - t0)
    if summary["failed"]:
        raise ReindexFailed(summary)
    return summary


def sweep_staging(root: DataRoot) -> int:
    """Staging folders a killed run left behind, in every store, removed before this run starts."""
    return sum(IndexStore(root, kind).sweep_staging() for kind in ("indexes", "tables", "codebooks", "verifiers"))


def _run_name() -> str | None:
    from prefect.runtime import flow_run

    return f"{flow_run.name} ({flow_run.id})" if flow_run.id else None


def _recommendation_stages(root: str, settings, domains: list[str], force: bool, summary: dict) -> None:
    """fit_codebooks once over every domain with interactions, then per domain: tables trained on an older
    codebook (or none) are trained, current ones only re-encode new items (rebuild_index)."""
    rec = [d for d in rec_domains(DataRoot(Path(root))) if d in domains]
    summary["tables"] = {}
    if not rec:
        return
    try:
        summary["codebook"] = fit_codebooks_task(root, settings, rec, force)
        for domain in rec:
            summary["tables"][domain] = refresh_tables_task(root, settings, domain)
    except Exception as e:
        get_run_logger().error("recommendation stages failed: %s", e)
        summary["failed"]["recommendation"] = f"{type(e).__name__}: {e}"
