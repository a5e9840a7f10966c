"""`make run`: the whole product on the embedded sample corpus, start to finish, in one process.

Nightly reindex (Prefect; ingest, embed, document maps, index, publish) → evaluation into DuckDB → Ray Serve
on loopback → sample queries over HTTP → evaluation summary from SQL → everything stopped.
"""

from __future__ import annotations

import socket
import time

import httpx
from rich.console import Console
from rich.table import Table

from sidestep.config import SAMPLES_DIR, Settings
from sidestep.storage.paths import DataRoot
from sidestep.storage.warehouse import Warehouse


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def sample_queries() -> list[tuple[str, str]]:
    rows = []
    for line in (SAMPLES_DIR / "queries.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, query = line.split("\t", 1)
            rows.append((domain.strip(), query.strip()))
    return rows


def sample_histories(settings: Settings) -> list[tuple[str, list[str]]]:
    """A known two-item history and one with an id the catalogue lacks, for each recommendation domain."""
    return [(s.domain, ["0", "2", "no-such-item"]) for s in settings.sources
            if s.format in ("lcrec", "recbole", "unisrec")]


def run_demo(settings: Settings, root: DataRoot, *, port: int = 8000, console: Console | None = None) -> int:
    from sidestep.flows.evaluate import evaluate_flow
    from sidestep.flows.reindex import nightly_reindex
    from sidestep.serving.run import ServeHandle

    con = console or Console()
    con.rule("1. nightly reindex (Prefect flow)")
    summary = nightly_reindex()
    con.print(f"encoded {summary['encoded']} documents, reused {summary['reused']}, mapped "
              f"{summary['summarized']} (maps failed {summary['maps_failed']}), published "
              f"{len(summary['published'])} version(s), quarantined {summary['quarantined']}")

    con.rule("2. evaluation (Prefect flow → Parquet + DuckDB)")
    run_ids = []
    for src in settings.sources:
        if src.eval:
            res = evaluate_flow(dataset_dir=src.path, domain=src.domain, verify=False)
            run_ids.append(res["run_id"])
            con.print(f"{src.domain}: {res['queries']} queries → run {res['run_id']}")

    port = _free_port(port)
    con.rule(f"3. Ray Serve on 127.0.0.1:{port}")
    t0 = time.perf_counter()
    with ServeHandle(root, host="127.0.0.1", port=port, preset="local") as server:
        con.print(f"ready in {time.perf_counter() - t0:.1f}s; health: {httpx.get(server.url + '/healthz').json()}")
        con.rule("4. sample queries over HTTP")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for domain, query in sample_queries():
                r = http.post("/search", json={"query": query, "domain": domain, "k": 3, "verify": False})
                r.raise_for_status()
                body = r.json()
                t = Table("#", "doc_id", "score", "title", title=f"[{domain}] {query}  →  index_version "
                          f"{body['index_version']}  ({body['timings_ms']['total']:.1f} ms)")
                for i, h in enumerate(body["results"], 1):
                    t.add_row(str(i), h["doc_id"], f"{h['score']:.3f}", (h["title"] or h["snippet"])[:60])
                con.print(t)
            for domain, history in sample_histories(settings):
                r = http.post("/recommend", json={"history": history, "k": 3, "domain": domain})
                r.raise_for_status()
                body = r.json()
                t = Table("#", "item_id", "score", title=f"[{domain}] recommend after {history}  →  "
                          f"index_version {body['index_version']}  ({body['timings_ms']['total']:.1f} ms)")
                for i, h in enumerate(body["items"], 1):
                    t.add_row(str(i), h["item_id"], f"{h['score']:.3f}")
                con.print(t)
                if body["unknown_items"]:
                    con.print(f"unknown item ids reported, not fatal: {body['unknown_items']}")
            bad = http.post("/search", json={"query": "", "k": 5000})
            con.print(f"a bad request is refused with HTTP {bad.status_code}: {bad.json()['detail'][:120]}")
    con.print("serving stopped")

    con.rule("5. evaluation summary (SQL over eval.duckdb)")
    with Warehouse(root.eval_db(), read_only=True) as wh:
        ids = ", ".join(f"'{r}'" for r in run_ids)
        rows = wh.query(f"SELECT domain, index_version, n_queries, ndcg_10, mrr_10, recall_100 FROM run_metrics "
                        f"WHERE run_id IN ({ids}) ORDER BY domain").to_pylist() if run_ids else []
    t = Table("domain", "index_version", "queries", "nDCG@10", "MRR@10", "Recall@100")
    for r in rows:
        t.add_row(r["domain"], r["index_version"], str(r["n_queries"]), f"{r['ndcg_10']:.4f}",
                  f"{r['mrr_10']:.4f}", f"{r['recall_100']:.4f}")
    con.print(t)
    con.print(f"data root: {root.root}  ·  try: .venv/bin/sidestep status")
    return 0
