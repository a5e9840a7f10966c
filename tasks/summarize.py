"""Summarize task: a domain's document maps (sidestep.pipeline.summarize)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.summarize import summarize_domain
from sidestep.results import SummarizeReport
from sidestep.storage.paths import DataRoot

from .common import RETRY


@task(name="summarize-domain", **RETRY, cache_policy=NO_CACHE, tags=["summarize"])
def summarize_task(root: str, settings: Settings, domain: str) -> SummarizeReport:
    logger = get_run_logger()
    out = summarize_domain(DataRoot(Path(root)), settings, domain, log=logger.info)
    logger.info("summarize %s: summarized=%d reused=%d failed=%d unmapped_short=%d seconds=%.1f", out.domain,
                out.summarized, out.reused, out.failed, out.unmapped_short, out.seconds)
    return out
