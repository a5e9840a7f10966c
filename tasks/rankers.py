"""Ranker-choice task: which ranker serves a domain without a verifier of its own (sidestep.pipeline.rankers)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.rankers import choose_ranker
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import verifier_store


@task(name="choose-ranker", cache_policy=NO_CACHE, tags=["index"])
def choose_ranker_task(root: str, settings: Settings, domain: str, force: bool = False) -> dict | None:
    """Choose and publish DOMAIN's ranker; None where the domain has a verifier of its own (it serves) or the
    choice is turned off (verify.ranker_queries = 0). A failure is logged and leaves the last choice serving:
    the index it follows is already published."""
    log = get_run_logger()
    r = DataRoot(Path(root))
    if not settings.verify.ranker_queries or verifier_store(r).current(domain) is not None:
        return None
    try:
        return choose_ranker(r, settings, domain, force=force, log=log.info)
    except Exception as e:  # the index is published; the previous choice (or dense recall) keeps serving
        log.warning("ranker choice for %s failed: %s: %s", domain, type(e).__name__, e)
        return {"domain": domain, "error": f"{type(e).__name__}: {e}"}
