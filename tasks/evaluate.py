"""Evaluate: run a BEIR split's queries through the serving search path, store the run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.beir import load_qrels, load_queries
from sidestep.config import Settings
from sidestep.search import search_texts
from storage import schemas
from storage.artifacts import IndexStore
from storage.atomic import write_parquet
from storage.indexes import load_current
from storage.paths import DataRoot
from storage.warehouse import Warehouse

from .common import encoder_for

QUERY_BATCH = 64


def evaluate_domain(root: DataRoot, settings: Settings, dataset_dir: str, domain: str, *, k: int = 100,
                    split: str = "test", min_rel: int = 1, out: str | None = None, label: str = "main",
                    group_id: str | None = None) -> dict:
    queries = load_queries(dataset_dir, split=split)
    qrels = load_qrels(dataset_dir, split)
    store = IndexStore(root)
    ix = settings.index
    corpus = load_current(store, domain, overfetch=ix.chunk_overfetch, doc_score=ix.doc_score,
                          ef_search=ix.hnsw_ef_search)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    enc = encoder_for(settings)
    qids = list(queries)
    cols: dict[str, list] = {"query_id": [], "doc_id": [], "rank": [], "score": []}
    t0 = time.perf_counter()
    for s in range(0, len(qids), QUERY_BATCH):
        batch = qids[s:s + QUERY_BATCH]
        hits, _ = search_texts(enc, corpus, [queries[q] for q in batch], k)
        for q, hs in zip(batch, hits, strict=True):
            for r, h in enumerate(hs, 1):
                cols["query_id"].append(q)
                cols["doc_id"].append(h.doc_id)
                cols["rank"].append(r)
                cols["score"].append(h.score)
    seconds = time.perf_counter() - t0
    run = pa.table(cols, schema=schemas.RUN)
    run_id = f"{domain}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_path = root.runs() / f"{run_id}.parquet"
    write_parquet(run_path, run)
    if out:
        write_parquet(Path(out).resolve(), run)
    config = {"k": k, "split": split, "verify": False, "stage": "recall", "index": corpus.manifest.get("index"),
              "encoder": corpus.manifest.get("encoder"), "chunking": corpus.manifest.get("chunking")}
    with Warehouse(root.eval_db()) as wh:
        wh.record_run(run_id=run_id, dataset=str(Path(dataset_dir).resolve()), domain=domain,
                      index_version=corpus.version, config=config, results=run, qrels=qrels, queries=qids,
                      min_rel=min_rel, label=label, group_id=group_id)
        metrics = wh.metrics(run_id)
    return {"run_id": run_id, "domain": domain, "index_version": corpus.version, "split": split,
            "queries": len(qids), "k": k, "min_rel": min_rel, "metrics": metrics, "baselines": {},
            "verify": {"requested": False, "applied": False}, "run_parquet": str(run_path), "out": out,
            "query_seconds": round(seconds, 3), "queries_per_s": round(len(qids) / seconds, 1) if seconds else None}


@task(name="evaluate", cache_policy=NO_CACHE, tags=["eval"])
def evaluate_task(root: str, settings: Settings, dataset_dir: str, domain: str, k: int, split: str, min_rel: int,
                  out: str | None) -> dict:
    res = evaluate_domain(DataRoot(Path(root)), settings, dataset_dir, domain, k=k, split=split, min_rel=min_rel,
                          out=out)
    m = res["metrics"]
    get_run_logger().info("eval %s on %d queries: nDCG@10=%.4f MRR@10=%.4f Recall@100=%.4f (%s)", domain,
                          res["queries"], m["ndcg@10"], m["mrr@10"], m["recall@100"], res["run_id"])
    return res
