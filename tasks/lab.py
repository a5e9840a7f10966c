"""The gradient lab's tasks: run one lab task (the core does the work), store its rows in DuckDB."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.lab import rec as lab_rec
from sidestep.lab import retrieval as lab_retrieval
from sidestep.lab.planted import PlantedConfig, report_rows, run_planted
from sidestep.pipeline.lab import retrieval_data
from sidestep.pipeline.labrec import rec_lab_data
from sidestep.storage.warehouse import Warehouse

from .common import RETRY, root_from, settings_from

AVAILABLE = ("planted", "retrieval", "rec")
PLANNED: tuple[str, ...] = ()


def check_lab_task(name: str) -> None:
    """Fail before any work on a task that is not built (yet)."""
    if name in PLANNED:
        raise NotImplementedError(f"lab task {name!r} is not built yet; available: {', '.join(AVAILABLE)}")
    if name not in AVAILABLE:
        raise ValueError(f"unknown lab task {name!r}; available: {', '.join(AVAILABLE)}")


def _config(cls, options: dict[str, Any] | None, what: str):
    """cls (a frozen config dataclass) with ``options`` overriding its fields (lists become tuples)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ValueError(f"unknown {what} options {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()})


def planted_config(options: dict[str, Any] | None) -> PlantedConfig:
    """PlantedConfig with ``options`` overriding its fields (lists become the config's tuples)."""
    return _config(PlantedConfig, options, "planted")


# retrieval options that are not RetrievalConfig fields: where the judged corpora are
DATASET_OPTIONS = ("datasets",)


def retrieval_inputs(options: dict[str, Any] | None) -> tuple[list[dict], lab_retrieval.RetrievalConfig]:
    """``options["datasets"]``: [{"dir": BEIR folder, "domain": indexed domain, "rel": relevant grade}], the rest
    RetrievalConfig fields."""
    opts = dict(options or {})
    datasets = opts.pop("datasets", None)
    if not datasets:
        raise ValueError("the retrieval task needs datasets: a judged BEIR folder per indexed domain "
                         "(`--dataset DOMAIN=DIR`)")
    return list(datasets), _config(lab_retrieval.RetrievalConfig, opts, "retrieval")


@task(name="lab-planted", cache_policy=NO_CACHE, tags=["lab"])
def planted_task(estimators: list[str] | None, seeds: int, budget_seconds: float | None,
                 options: dict[str, Any] | None) -> dict:
    log = get_run_logger()
    return run_planted(planted_config(options), estimators, seeds, budget_seconds, log=log.info)


@task(name="lab-retrieval", cache_policy=NO_CACHE, tags=["lab"])
def retrieval_task(config_path: str | None, estimators: list[str] | None, seeds: int, budget_seconds: float | None,
                   options: dict[str, Any] | None) -> dict:
    log = get_run_logger()
    datasets, cfg = retrieval_inputs(options)
    settings = settings_from(config_path)
    root = root_from(settings)
    data = [retrieval_data(root, settings, d["dir"], d["domain"], rel_threshold=int(d.get("rel", 1)), log=log.info)
            for d in datasets]
    return lab_retrieval.run_retrieval(data, cfg, estimators, seeds, budget_seconds, log=log.info)


def rec_inputs(options: dict[str, Any] | None) -> tuple[list[dict], int | None, lab_rec.RecLabConfig]:
    """``options["datasets"]``: [{"dir": a recommendation folder, "domain": its name}], ``options["users"]``: a
    seeded user sample per domain (all users when absent); the rest RecLabConfig fields."""
    opts = dict(options or {})
    datasets, users = opts.pop("datasets", None), opts.pop("users", lab_rec.DEFAULT_USERS)
    if not datasets:
        raise ValueError("the rec task needs datasets: a recommendation folder per domain (`--dataset DOMAIN=DIR`)")
    return list(datasets), users, _config(lab_rec.RecLabConfig, opts, "rec")


@task(name="lab-rec", cache_policy=NO_CACHE, tags=["lab"])
def rec_task(config_path: str | None, seeds: int, budget_seconds: float | None, options: dict[str, Any] | None,
             ) -> dict:
    log = get_run_logger()
    datasets, users, cfg = rec_inputs(options)
    settings = settings_from(config_path)
    root = root_from(settings)
    data = {d["domain"]: rec_lab_data(root, settings, d["dir"], d["domain"], users=users, seed=cfg.seed,
                                      max_history=cfg.max_history, log=log.info) for d in datasets}
    return lab_rec.run_rec(data, cfg, seeds, budget_seconds, log=log.info)


def lab_rows(report: dict) -> list[dict]:
    if report["task"] == "rec":
        return lab_rec.report_rows(report)
    return lab_retrieval.report_rows(report) if report["task"] == "retrieval" else report_rows(report)


@task(name="lab-store", cache_policy=NO_CACHE, tags=["lab", "warehouse"], **RETRY)
def store_lab_task(config_path: str | None, run_id: str, report: dict, seconds: float) -> int:
    with Warehouse(root_from(settings_from(config_path)).eval_db()) as wh:
        return wh.record_lab(run_id=run_id, task=report["task"], rows=lab_rows(report),
                             config=report["config"], seconds=seconds)
