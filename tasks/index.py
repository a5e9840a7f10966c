"""Publish task: rebuild a domain's index and publish it atomically (sidestep.pipeline.index)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.index import publish_domain
from sidestep.results import PublishResult
from sidestep.storage.paths import DataRoot

from .common import RETRY


@task(name="publish-index", **RETRY, cache_policy=NO_CACHE, tags=["index"])
def publish_task(root: str, settings: Settings, domain: str, force: bool = False) -> PublishResult:
    out = publish_domain(DataRoot(Path(root)), settings, domain, force=force)
    log = get_run_logger()
    if out.published:
        log.info("index %s: published %s (%d documents, %d chunks, %s)", out.domain, out.version, out.documents,
                 out.chunks, out.index)
    else:
        log.info("index %s: nothing published (%s); serving %s", out.domain, out.reason, out.version)
    return out
