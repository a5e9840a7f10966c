"""eval-rec task: train a domain's tables and evaluate them with their controls (sidestep.pipeline.evalrec)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.evalrec import eval_rec
from sidestep.pipeline.rec import RecError
from sidestep.storage.paths import DataRoot


@task(name="eval-rec", retries=0, cache_policy=NO_CACHE, tags=["rec", "eval"])
def eval_rec_task(root: str, settings: Settings, dataset: str, domain: str, mode: str | None = None,
                  pretrained_from: str | None = None, controls: bool = True, epochs: int | None = None,
                  max_seconds: float | None = None, seed: int = 0) -> dict:
    log = get_run_logger()
    try:
        return eval_rec(DataRoot(Path(root)), settings, dataset, domain, mode=mode, pretrained_from=pretrained_from,
                        controls=controls, epochs=epochs, max_seconds=max_seconds, seed=seed, log=log.info)
    except RecError as e:
        log.error("eval-rec %s: %s", domain, e)
        raise
