"""The nightly reindex: ingest → embed → summarize (document maps) → index → publish, per domain."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import deployment

from sidestep.pipeline.rec import rec_domains
from sidestep.priority import lower_priority
from sidestep.results import ReindexReport
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import ARTIFACT_KINDS, DataRoot
from sidestep.storage.sources import domains_in, sources_to_read
from sidestep.storage.status import record_nightly
from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.rec import fit_codebooks_task, refresh_tables_task
from sidestep.tasks.verifier import adapt_verifier_task

from .common import index_domain


class ReindexFailed(RuntimeError):
    def __init__(self, summary: dict):
        self.summary = summary
        failed = ", ".join(f"{d}: {e}" for d, e in summary["failed"].items())
        super().__init__(f"reindex failed for {len(summary['failed'])} domain(s): {failed}")


@flow(name="nightly-reindex", log_prints=True)
def nightly_reindex(domains: list[str] | None = None, force: bool = False, skip_ingest: bool = False,
                    config_path: str | None = None, ray_address: str | None = None) -> dict:
    """Ingest every configured source, embed what changed, rebuild and publish each domain's index;
    for domains with interactions, fit codebooks (only on drift), then train or re-encode their tables.

    An unchanged corpus re-encodes nothing and publishes nothing. One failing domain does not stop
    the others; the run fails at the end, naming them.

    Args:
        domains: Domains to process; when empty, every domain the config names or the data root holds.
        force: Publish new versions even if nothing changed, and refit the codebook and token codec (the full refit).
        skip_ingest: Reuse the stored documents instead of reading the sources again.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
        ray_address: A Ray cluster to run the embed stage on (overrides the config's `[ray] address`).
    """
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    settings = settings_from(config_path)
    if ray_address:
        settings = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": ray_address})})
    root = str(root_from(settings).root)
    known = domains_in(settings, DataRoot(Path(root)))
    chosen = domains or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}: no config names them and nothing was ingested into them "
                         f"in {root}; ingest first (`sidestep ingest PATH --domain D`, or `sidestep index PATH "
                         f"--domain D` for both steps); known here: {known}")
    log = get_run_logger()
    if deployment.id:  # a scheduled or UI run has its own process: lower it below serving (the CLI does its own)
        log.info("priority: %s", lower_priority(settings.nightly_niceness).note)
    report = ReindexReport(staging_swept=sweep_staging(DataRoot(Path(root))))
    for domain in chosen:
        try:
            sources, gone = sources_to_read(settings, DataRoot(Path(root)), domain)
            for path in gone:
                log.warning("domain %s: recorded source %s no longer exists; its stored documents are kept",
                            domain, path)
            built = index_domain(root, settings, domain, [] if skip_ingest else sources, force=force)
        except Exception as e:  # one domain's failure must not stop the others
            log.error("domain %s failed: %s", domain, e)
            report.failed[domain] = f"{type(e).__name__}: {e}"
            continue
        report.add(domain, built)
    _recommendation_stages(root, settings, [d for d in chosen if d not in report.failed], force, report)
    pinned = {p["domain"] for p in report.pinned}  # a rollback froze them: nothing is published over them
    for domain in [d for d in chosen if d not in report.failed and d not in pinned]:  # adapt the general verifier
        adapted = adapt_verifier_task(root, settings, domain)
        if adapted is not None:
            report.adaptation = {**(report.adaptation or {}), domain: adapted}
            log.info("adaptation %s: %s", domain, adapted.get("reason") or adapted.get("error"))
    log.info("reindex: %d domains, encoded=%d reused=%d summarized=%d maps_failed=%d unmapped_short=%d "
             "published=%d quarantined=%d failed=%d pinned=%d", len(chosen), report.encoded, report.reused,
             report.summarized, report.maps_failed, report.unmapped_short, len(report.published), report.quarantined,
             len(report.failed), len(report.pinned))
    summary = report.as_dict()
    record_nightly(DataRoot(Path(root)), summary, run_name=_run_name(), started_at=started,
                   seconds=time.perf_counter() - t0)
    if report.failed:
        raise ReindexFailed(summary)
    return summary


def sweep_staging(root: DataRoot) -> int:
    """Staging folders a killed run left behind, in every store, removed before this run starts."""
    return sum(IndexStore(root, kind).sweep_staging() for kind in ARTIFACT_KINDS)


def _run_name() -> str | None:
    from prefect.runtime import flow_run

    return f"{flow_run.name} ({flow_run.id})" if flow_run.id else None


def _recommendation_stages(root: str, settings, domains: list[str], force: bool, report: ReindexReport) -> None:
    """fit_codebooks once over every domain with interactions, then per domain: tables trained on an older
    codebook (or none) are trained, current ones only re-encode new items (rebuild_index)."""
    rec = [d for d in rec_domains(DataRoot(Path(root))) if d in domains]
    report.tables = {}
    if not rec:
        return
    try:
        report.codebook = fit_codebooks_task(root, settings, rec, force)
        for domain in rec:
            report.tables[domain] = refresh_tables_task(root, settings, domain)
            if report.tables[domain].get("pinned"):
                report.pinned.append({"domain": domain, "kind": "tables", "version": report.tables[domain]
                                      .get("version"), "reason": report.tables[domain].get("reason")})
    except Exception as e:
        get_run_logger().error("recommendation stages failed: %s", e)
        report.failed["recommendation"] = f"{type(e).__name__}: {e}"
