"""The lab flow: gradient estimators through a top-k selection, measured on one task, stored in DuckDB."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger

from sidestep.tasks.lab import check_lab_task, planted_task, rec_task, retrieval_task, store_lab_task


@flow(name="lab", log_prints=True)
def lab_flow(task: str = "planted", estimators: list[str] | None = None, seeds: int = 3,
             budget_seconds: float | None = None, config_path: str | None = None,
             options: dict[str, Any] | None = None) -> dict:
    """Measure every gradient estimator for a top-k selection (sidestep, marginal likelihood, Gumbel-softmax,
    straight-through, perturbed optimizers, REINFORCE, SoftSort) on one lab task.

    Args:
        task: Lab task: planted (synthetic, exact gradient by enumeration); retrieval (a query-side scorer trained
            through the hard top 10 of recall's 100 candidates, on judged corpora already indexed); rec (frozen OPQ/PQ
            codes against codes learned end to end by straight-through, in-domain and table-only transfer).
        estimators: Estimators to run (default: all of them).
        seeds: Seeds of each optimisation run (mean and std are reported over them).
        budget_seconds: Wall-clock cap: optimisation runs stop early and grid cells are skipped once it is spent.
        config_path: TOML config file (for the data root); default: $SIDESTEP_CONFIG, else the embedded sample.
        options: Overrides of the task's own settings, e.g. {"draws": 200, "grid_k": [1, 2], "steps": 100}
            for planted (the fields of sidestep.lab.planted.PlantedConfig); for retrieval the fields of
            sidestep.lab.retrieval.RetrievalConfig plus "datasets": [{"dir": BEIR folder, "domain": its indexed
            domain, "rel": the lowest relevant grade}]; for rec the fields of sidestep.lab.rec.RecLabConfig plus
            "datasets": [{"dir": recommendation folder, "domain": name}] and "users" (a seeded user sample).
    """
    check_lab_task(task)
    t0 = time.perf_counter()
    if task == "retrieval":
        report = retrieval_task(config_path, estimators, seeds, budget_seconds, options)
    elif task == "rec":
        report = rec_task(config_path, seeds, budget_seconds, options)
    else:
        report = planted_task(estimators, seeds, budget_seconds, options)
    run_id = f"lab-{task}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    seconds = round(time.perf_counter() - t0, 1)
    n = store_lab_task(config_path, run_id, report, seconds)
    get_run_logger().info("lab %s: %d rows stored as %s (%.1f s)", task, n, run_id, seconds)
    return {**report, "run_id": run_id, "seconds": seconds}
