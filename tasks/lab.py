"""The gradient lab's tasks: run one lab task (the core does the work), store its rows in DuckDB."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.lab.planted import PlantedConfig, report_rows, run_planted
from sidestep.storage.warehouse import Warehouse

from .common import RETRY, root_from, settings_from

AVAILABLE = ("planted",)
PLANNED = ("retrieval", "rec")


def check_lab_task(name: str) -> None:
    """Fail before any work on a task that is not built (yet)."""
    if name in PLANNED:
        raise NotImplementedError(f"lab task {name!r} is not built yet; available: {', '.join(AVAILABLE)}")
    if name not in AVAILABLE:
        raise ValueError(f"unknown lab task {name!r}; available: {', '.join(AVAILABLE)}")


def planted_config(options: dict[str, Any] | None) -> PlantedConfig:
    """PlantedConfig with ``options`` overriding its fields (lists become the config's tuples)."""
    known = {f.name for f in fields(PlantedConfig)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ValueError(f"unknown planted options {unknown}; known: {sorted(known)}")
    return PlantedConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()})


@task(name="lab-planted", cache_policy=NO_CACHE, tags=["lab"])
def planted_task(estimators: list[str] | None, seeds: int, budget_seconds: float | None,
                 options: dict[str, Any] | None) -> dict:
    log = get_run_logger()
    return run_planted(planted_config(options), estimators, seeds, budget_seconds, log=log.info)


@task(name="lab-store", cache_policy=NO_CACHE, tags=["lab", "warehouse"], **RETRY)
def store_lab_task(config_path: str | None, run_id: str, report: dict, seconds: float) -> int:
    with Warehouse(root_from(settings_from(config_path)).eval_db()) as wh:
        return wh.record_lab(run_id=run_id, task=report["task"], rows=report_rows(report),
                             config=report["config"], seconds=seconds)
