"""`sidestep lab TASK`: the gradient lab, a thin layer over Engine.lab."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOpt, _emit, _engine, _run, out


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise typer.BadParameter(f"{what} takes KEY=VALUE, got {v!r}")
        pairs[key] = val
    return pairs


def lab(
    task: Annotated[str, typer.Argument(help="planted: a synthetic top-k selection small enough for the exact "
                                        "gradient by enumeration; retrieval: a query-side scorer trained through "
                                        "the hard top 10 of recall's 100 candidates on judged, indexed corpora; "
                                        "rec: frozen OPQ/PQ codes against codes learned end to end, in-domain and "
                                        "table-only transfer (Amazon Scientific and Office by default).")],
    estimators: Annotated[list[str] | None, typer.Option("--estimators", "-e", help="Estimators to run (repeat "
                                                         "the option); all of them when omitted.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per optimisation run (mean and std over them).")] = 3,
    budget_seconds: Annotated[float | None, typer.Option(help="Wall-clock cap; optimisation stops early and grid "
                                                         "cells are skipped once it is spent (retrieval: split "
                                                         "evenly into one cap per training run).")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="retrieval: DOMAIN=DIR, a judged BEIR "
                                                      "folder whose corpus is indexed as DOMAIN in the data root "
                                                      "(repeat for several).")] = None,
    min_rel: Annotated[list[str] | None, typer.Option("--min-rel", help="retrieval: DOMAIN=GRADE, the lowest "
                                                      "grade counted relevant for Recall@10 (default 1).")] = None,
    steps: Annotated[int | None, typer.Option(help="retrieval: training steps per run (default 200); rec: the "
                                              "same for every training run (default 100).")] = None,
    users: Annotated[int | None, typer.Option(help="rec: a seeded sample of this many users per domain (0: all; "
                                              "default: sidestep.lab.rec.DEFAULT_USERS).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure whether sidestepping a discrete selection beats differentiating through it: every gradient
    estimator (sidestep, marginal likelihood, Gumbel-softmax, straight-through, perturbed optimizers,
    REINFORCE, SoftSort) against the exact gradient (planted) or on held-out queries (retrieval); results
    stored in DuckDB (lab_runs, lab_results)."""
    options = None
    if task == "retrieval":
        if not dataset:
            raise typer.BadParameter("the retrieval task needs --dataset DOMAIN=DIR (a judged BEIR folder whose "
                                     "corpus is indexed as DOMAIN)", param_hint="--dataset")
        rel = _pairs(min_rel, "--min-rel")
        options = {"datasets": [{"domain": d, "dir": p, "rel": int(rel.get(d, 1))}
                                for d, p in _pairs(dataset, "--dataset").items()]}
        if steps is not None:
            options["steps"] = steps
    if task == "rec":
        options = {"datasets": _rec_datasets(_pairs(dataset, "--dataset"))}
        if users is not None:
            options["users"] = users or None
        if steps is not None:
            options["steps"] = steps
    res = _run(_engine().lab, as_json, task, estimators=estimators or None, seeds=seeds,
               budget_seconds=budget_seconds, options=options).as_dict()
    _emit(res, as_json)
    if as_json:
        return
    if task == "rec":
        _rec_table(res)
        return
    if task == "retrieval":
        for ds, d in res["datasets"].items():
            t = Table("ranker", "test nDCG@10", "Recall@10", "no-overlap nDCG@10", "s / run",
                      title=f"lab retrieval {ds} ({res['run_id']})")
            for name, c in d["controls"].items():
                t.add_row(f"{name} (untrained)", f"{c['test']['ndcg@10']:.4f}", f"{c['test']['recall@10']:.4f}",
                          f"{c['test']['no_overlap_ndcg@10']:.4f}", "")
            for name, r in d["estimators"].items():
                t.add_row(name, f"{r['ndcg@10_mean']:.4f} ± {r['ndcg@10_std']:.4f}",
                          f"{r['recall@10_mean']:.4f} ± {r['recall@10_std']:.4f}",
                          f"{r['no_overlap_ndcg@10_mean']:.4f} ± {r['no_overlap_ndcg@10_std']:.4f}",
                          f"{r['seconds_mean']:.1f}")
            out.print(t)
        return
    t = Table("estimator", "targets g*", "cosine", "bias", "variance", title=f"lab {task} ({res['run_id']})")
    for name, r in res["estimators"].items():
        t.add_row(name, "yes" if r.get("targets_exact_gradient") else "no", f"{r['cosine']:+.3f}",
                  f"{r['bias']:.4f}", f"{r['variance']:.2e}")
    out.print(t)


def _rec_datasets(given: dict[str, str]) -> list[dict]:
    """--dataset DOMAIN=DIR pairs, or Amazon Scientific and Office from $SIDESTEP_DATA (default ../shared/data)."""
    import os
    from pathlib import Path

    if given:
        return [{"domain": d, "dir": p} for d, p in given.items()]
    base = Path(os.environ.get("SIDESTEP_DATA", "../shared/data"))
    found = [{"domain": d, "dir": str(base / f"amazon-{d}")} for d in ("scientific", "office")]
    missing = [f["dir"] for f in found if not Path(f["dir"]).is_dir()]
    if missing:
        raise typer.BadParameter(f"no rec data at {', '.join(missing)}: pass --dataset DOMAIN=DIR (twice: "
                                 "scientific and office) or set SIDESTEP_DATA", param_hint="--dataset")
    return found


def _rec_table(res: dict) -> None:
    t = Table("setting", "arm", "R@10", "N@10", "s / run", title=f"lab rec ({res['run_id']})")
    rows = [(f"in-domain {n}", d["arms"], d["controls"]) for n, d in res["domains"].items()]
    tr = res.get("transfer") or {}
    rows += [(f"{s} {tr['source']}->{tr['target']}", by, {}) for s, by in tr.get("settings", {}).items()]
    for label, arms, controls in rows:
        for arm, r in arms.items():
            t.add_row(label, arm, f"{r['recall@10_mean']:.4f} ± {r['recall@10_std']:.4f}",
                      f"{r['ndcg@10_mean']:.4f} ± {r['ndcg@10_std']:.4f}", f"{r['seconds_mean']:.1f}")
        for c, m in controls.items():
            t.add_row(label, f"{c} (control)", f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}", "")
    out.print(t)
