"""`sidestep lab TASK`: the gradient lab, a thin layer over Engine.lab."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOpt, _emit, _engine, _run, out


def lab(
    task: Annotated[str, typer.Argument(help="planted: a synthetic top-k selection small enough for the exact "
                                        "gradient by enumeration (retrieval and rec are not built yet).")],
    estimators: Annotated[list[str] | None, typer.Option("--estimators", "-e", help="Estimators to run (repeat "
                                                         "the option); all of them when omitted.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per optimisation run (mean and std over them).")] = 3,
    budget_seconds: Annotated[float | None, typer.Option(help="Wall-clock cap; optimisation stops early and grid "
                                                         "cells are skipped once it is spent.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure whether sidestepping a discrete selection beats differentiating through it: every gradient
    estimator (sidestep, marginal likelihood, Gumbel-softmax, straight-through, perturbed optimizers,
    REINFORCE, SoftSort) against the exact gradient; results stored in DuckDB (lab_runs, lab_results)."""
    res = _run(_engine().lab, as_json, task, estimators=estimators or None, seeds=seeds,
               budget_seconds=budget_seconds).as_dict()
    _emit(res, as_json)
    if not as_json:
        t = Table("estimator", "targets g*", "cosine", "bias", "variance", title=f"lab {task} ({res['run_id']})")
        for name, r in res["estimators"].items():
            t.add_row(name, "yes" if r.get("targets_exact_gradient") else "no", f"{r['cosine']:+.3f}",
                      f"{r['bias']:.4f}", f"{r['variance']:.2e}")
        out.print(t)
