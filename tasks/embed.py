"""Embed task: encode a domain's new content (sidestep.pipeline.embed)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.embed import embed_domain
from sidestep.results import EmbedReport
from sidestep.storage.paths import DataRoot

from .common import RETRY


@task(name="embed-domain", **RETRY, cache_policy=NO_CACHE, tags=["embed"])
def embed_task(root: str, settings: Settings, domain: str) -> EmbedReport:
    logger = get_run_logger()
    out = embed_domain(DataRoot(Path(root)), settings, domain, log=logger.info)
    logger.info("embed %s: documents=%d encoded=%d reused=%d chunks_encoded=%d seconds=%.1f", out.domain,
                out.documents, out.encoded, out.reused, out.chunks_encoded, out.seconds)
    return out
