"""Evaluate task: a BEIR split's queries through the serving search path (sidestep.pipeline.evaluate)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.evaluate import evaluate_domain
from sidestep.storage.paths import DataRoot


@task(name="evaluate", cache_policy=NO_CACHE, tags=["eval"])
def evaluate_task(root: str, settings: Settings, dataset_dir: str, domain: str, k: int, split: str, min_rel: int,
                  out: str | None, verify: bool = False, verifier_from: str | None = None,
                  baselines: bool = True) -> dict:
    res = evaluate_domain(DataRoot(Path(root)), settings, dataset_dir, domain, k=k, split=split, min_rel=min_rel,
                          out=out, verify=verify, verifier_from=verifier_from, baselines=baselines)
    m = res["metrics"]
    get_run_logger().info("eval %s on %d queries: nDCG@10=%.4f MRR@10=%.4f Recall@100=%.4f (%s)", domain,
                          res["queries"], m["ndcg@10"], m["mrr@10"], m["recall@100"], res["run_id"])
    return res
