"""The nightly reindex: ingest → embed → summarize (document maps) → index → publish, per domain."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.common import root_from, settings_from
from tasks.embed import embed_task
from tasks.index import publish_task
from tasks.ingest import ingest_task
from tasks.summarize import summarize_task


class ReindexFailed(RuntimeError):
    def __init__(self, summary: dict):
        self.summary = summary
        failed = ", ".join(f"{d}: {e}" for d, e in summary["failed"].items())
        super().__init__(f"reindex failed for {len(summary['failed'])} domain(s): {failed}")


@flow(name="nightly-reindex", log_prints=True)
def nightly_reindex(domains: list[str] | None = None, force: bool = False, skip_ingest: bool = False,
                    config_path: str | None = None) -> dict:
    """Ingest every configured source, embed what changed, rebuild and publish each domain's index.

    An unchanged corpus re-encodes nothing and publishes nothing. One failing domain does not stop
    the others; the run fails at the end, naming them."""
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    known = settings.domains()
    chosen = domains or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; configured: {known}")
    log = get_run_logger()
    summary: dict = {"domains": {}, "failed": {}, "encoded": 0, "reused": 0, "summarized": 0, "maps_failed": 0,
                     "published": [], "quarantined": 0}
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
    log.info("reindex: %d domains, encoded=%d reused=%d summarized=%d maps_failed=%d published=%d "
             "quarantined=%d failed=%d", len(chosen), summary["encoded"], summary["reused"], summary["summarized"],
             summary["maps_failed"], len(summary["published"]), summary["quarantined"], len(summary["failed"]))
    if summary["failed"]:
        raise ReindexFailed(summary)
    return summary
