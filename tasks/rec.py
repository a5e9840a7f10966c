"""Recommendation tasks: fit_codebooks, finetune_tables, refresh, pretrain and rebuild the item index
(sidestep.pipeline.rec)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.rec import (
    finetune_tables,
    fit_codebooks,
    pretrain_tables,
    rebuild_item_index,
    refresh_tables,
)
from sidestep.storage.paths import DataRoot

from .cluster import run_remote
from .common import RETRY, TRAIN_RETRY


@task(name="fit-codebooks", **RETRY, cache_policy=NO_CACHE, tags=["rec"])
def fit_codebooks_task(root: str, settings: Settings, domains: list[str] | None = None, refit: bool = False) -> dict:
    log = get_run_logger()
    if settings.ray.address:  # a Ray task on the cluster, its CPUs and memory declared
        out = run_remote(settings, fit_codebooks, DataRoot(Path(root)), settings, domains, refit=refit, log=print)
    else:
        out = fit_codebooks(DataRoot(Path(root)), settings, domains, refit=refit, log=log.info)
    log.info("codebook %(version)s: refit=%(refit)s", out)
    return out


@task(name="rebuild-item-index", **RETRY, cache_policy=NO_CACHE, tags=["rec", "index"])
def rebuild_item_index_task(root: str, settings: Settings, domain: str) -> dict:
    out = rebuild_item_index(DataRoot(Path(root)), settings, domain)
    get_run_logger().info("item index %s: %s", domain, out)
    return out


@task(name="finetune-tables", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["rec", "train"])
def finetune_task(root: str, settings: Settings, domain: str, mode: str = "scratch",
                  pretrained_from: str | None = None, epochs: int | None = None) -> dict:
    log = get_run_logger()
    out = finetune_tables(DataRoot(Path(root)), settings, domain, mode, pretrained_from, epochs, log=log.info)
    log.info("tables %(domain)s: published %(version)s (%(mode)s, %(seconds).0f s)", out)
    return out


@task(name="refresh-tables", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["rec"])
def refresh_tables_task(root: str, settings: Settings, domain: str) -> dict:
    log = get_run_logger()
    if settings.ray.address:
        out = run_remote(settings, refresh_tables, DataRoot(Path(root)), settings, domain, log=print)
    else:
        out = refresh_tables(DataRoot(Path(root)), settings, domain, log=log.info)
    log.info("tables %s: %s", domain, {k: v for k, v in out.items() if k in ("version", "trained", "published")})
    return out


@task(name="pretrain-tables", retries=0, cache_policy=NO_CACHE, tags=["rec", "train"])
def pretrain_task(root: str, settings: Settings, domains: list[str], epochs: int | None = None) -> dict:
    log = get_run_logger()
    out = pretrain_tables(DataRoot(Path(root)), settings, domains, epochs, log=log.info)
    log.info("pretrain %s: %.0f s, %d epochs", ",".join(domains), out["seconds"], out["epochs_run"])
    return out
