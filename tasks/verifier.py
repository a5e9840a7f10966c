"""train_verifier task: mine, train and publish a domain's verifier (sidestep.pipeline.verifier)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.selfsup import summary_line, train_verifier_self_supervised
from sidestep.pipeline.verifier import train_verifier_domain
from sidestep.storage.paths import DataRoot

from .common import TRAIN_RETRY


@task(name="train-verifier", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["verifier"])
def train_verifier_task(root: str, settings: Settings, dataset_dir: str, domain: str, split: str = "train",
                        seed: int = 0) -> dict:
    log = get_run_logger()
    out = train_verifier_domain(DataRoot(Path(root)), settings, dataset_dir, domain, split=split, seed=seed,
                                log=log.info)
    log.info("verifier %s/%s: %d parameters, best validation nDCG@10 %.4f at epoch %s, %.0f s", domain,
             out["version"], out["parameters"], out["val_ndcg10"] or 0.0, out["best_epoch"], out["seconds"])
    return out


@task(name="train-verifier-self-supervised", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["verifier"])
def train_verifier_self_supervised_task(root: str, settings: Settings, domain: str, seed: int = 0) -> dict:
    """DOMAIN's verifier from its own stored text (no judgment read), published only past the gate."""
    log = get_run_logger()
    out = train_verifier_self_supervised(DataRoot(Path(root)), settings, domain, seed=seed, log=log.info)
    log.info(summary_line(out))
    return out
