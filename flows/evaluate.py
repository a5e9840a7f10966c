"""The evaluate flow: ingest a BEIR folder, index it, run its queries, store the run in DuckDB."""

from __future__ import annotations

from prefect import flow

from sidestep.config import SourceConfig
from tasks.common import root_from, settings_from
from tasks.embed import embed_task
from tasks.evaluate import evaluate_task
from tasks.index import publish_task
from tasks.ingest import ingest_task
from tasks.summarize import summarize_task


@flow(name="evaluate", log_prints=True)
def evaluate_flow(dataset_dir: str, domain: str, k: int = 100, split: str = "test", min_rel: int = 1,
                  verify: bool = True, out: str | None = None, config_path: str | None = None) -> dict:
    """Evaluate DATASET_DIR's SPLIT queries against DOMAIN through the serving search path."""
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    ingest = ingest_task(root, SourceConfig(domain=domain, path=dataset_dir, format="beir", snapshot=True),
                         settings.ingest.max_text_bytes)
    emb = embed_task(root, settings, domain)
    summarize_task(root, settings, domain)
    pub = publish_task(root, settings, domain)
    res = evaluate_task(root, settings, dataset_dir, domain, k, split, min_rel, out)
    res["verify"] = {"requested": verify, "applied": False,
                     "reason": "no verifier is published yet: results are recall only"} if verify else \
        {"requested": False, "applied": False}
    res["ingest"], res["embed"], res["index"] = ingest, emb, pub
    return res
