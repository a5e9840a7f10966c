"""`make run`: the whole product on the embedded sample corpus, start to finish, in one process.

Nightly reindex (Prefect; ingest, embed, document maps, index, publish) → self-supervised verifiers for the
text domains (published only where they beat pooled cosine and MaxSim on held-out titles) → evaluation into
DuckDB, summarized from SQL → Ray Serve on loopback → sample queries over HTTP with verify on, each saying
whether a verifier was applied and which → what to try next → everything stopped (or, with keep_serving,
the endpoint left up until Ctrl-C or SIGTERM: `make serve`).
"""

from __future__ import annotations

import json
import shlex
import socket
import time

import httpx
from rich.console import Console
from rich.table import Table

from sidestep.config import SAMPLES_DIR, Settings
from sidestep.results import SearchResults
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
    return [(s.domain, ["0", "2", "no-such-item"]) for s in settings.sources if s.format in ("lcrec", "recbole")]


TEXT_FORMATS = ("beir", "jsonl", "csv", "parquet", "textdir")


def try_next(root: DataRoot, url: str, queries: list[tuple[str, str]], *, serving: bool) -> list[str]:
    """What to try by hand afterwards: requests to the endpoint, the same search from the command line, status."""
    domain, query = queries[0] if queries else ("handbook", "roll back a bad deploy")
    body = json.dumps({"query": query, "domain": domain, "k": 3})
    home = shlex.quote(str(root.root))
    where = "the endpoint is up" if serving else "with the endpoint up (make serve, or sidestep demo --keep-serving)"
    return [f"# {where}:",
            f"curl -s {url}/search -H 'content-type: application/json' -d {shlex.quote(body)}",
            f"curl -s {url}/search -H 'content-type: application/json' -d "
            + shlex.quote(json.dumps({"query": query, "domain": domain, "k": 3, "verify": False})) + "   # recall only",
            f"curl -s {url}/healthz;  curl -s {url}/metrics | head",
            "# from the command line (in process, no server needed):",
            f".venv/bin/sidestep --home {home} search {shlex.quote(query)} --domain {domain} --k 3",
            f".venv/bin/sidestep --home {home} status",
            f".venv/bin/sidestep --home {home} train-verifier --domain {domain} --self-supervised"]


def _wait_for_stop(con: Console) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; the caller's `with` then stops the server cleanly."""
    from sidestep.serving.run import wait_for_stop

    wait_for_stop()
    con.print("stopping")


def run_demo(settings: Settings, root: DataRoot, *, port: int = 8000, console: Console | None = None,
             keep_serving: bool = False) -> int:
    from sidestep.flows.evaluate import evaluate_flow, train_verifier_flow
    from sidestep.flows.reindex import nightly_reindex
    from sidestep.pipeline.selfsup import summary_line
    from sidestep.serving.run import ServeHandle

    con = console or Console()
    needed, have = sorted({d for d, _ in sample_queries()}), {s.domain for s in settings.sources}
    if not set(needed) <= have:  # the demo queries the sample's domains: say so before minutes of work
        names = ", ".join(sorted(have)) or "none"
        con.print(f"sidestep demo runs the sample corpus, and this config's sources ({names}) do not include "
                  f"its domains ({', '.join(needed)}). Drop --config / unset SIDESTEP_CONFIG for "
                  "the demo; for your own data use `sidestep reindex` and `sidestep serve`.", style="red",
                  markup=False, highlight=False)
        return 2
    con.rule("1. nightly reindex (Prefect flow)")
    summary = nightly_reindex()
    con.print(f"encoded {summary['encoded']} documents, reused {summary['reused']}, mapped "
              f"{summary['summarized']} (maps failed {summary['maps_failed']}, "
              f"{summary.get('unmapped_short', 0)} too short for a map), published "
              f"{len(summary['published'])} version(s), quarantined {summary['quarantined']}")

    con.rule("2. self-supervised verifiers (Prefect flow; no judgment read, published only past the gate)")
    verified_domains = []
    for src in settings.sources:
        if src.format in TEXT_FORMATS:
            res = train_verifier_flow(dataset_dir=None, domain=src.domain, self_supervised=True)
            con.print(summary_line(res))
            if res["published"]:
                verified_domains.append(src.domain)
    if not verified_domains:
        con.print("[yellow]no sample domain's verifier passed the gate[/yellow]")
    for d, r in summary.get("domains", {}).items():  # domains without a verifier: the ranker chosen at index time
        if d not in verified_domains and (r.get("ranker") or {}).get("ranker"):
            con.print(f"{d}: served by {r['ranker']['ranker']} ({r['ranker']['reason']})")

    con.rule("3. evaluation (Prefect flow → Parquet + DuckDB)")
    run_ids = []
    for src in settings.sources:
        if src.eval:
            res = evaluate_flow(dataset_dir=src.path, domain=src.domain)
            run_ids.append(res["run_id"])
            main = ("recall → verify" if res["verify"]["applied"]
                    else res["verify"].get("ranker", "pooled_cosine") + " (the domain's chosen ranker)")
            base = ", ".join(f"{n} {m['ndcg@10']:.4f}" for n, m in res["baselines"].items())
            con.print(f"{src.domain}: {res['queries']} queries → run {res['run_id']}; nDCG@10 {main} "
                      f"{res['metrics']['ndcg@10']:.4f}; baselines {base}")
    rows = []
    if run_ids:  # no source marked `eval = true`: nothing evaluated, and no evaluation database to read
        with Warehouse(root.eval_db(), read_only=True) as wh:
            ids = ", ".join(f"'{r}'" for r in run_ids)
            rows = wh.query(f"SELECT domain, index_version, n_queries, ndcg_10, mrr_10, recall_100 FROM "
                            f"run_metrics WHERE run_id IN ({ids}) ORDER BY domain").to_pylist()
    t = Table("domain", "index_version", "queries", "nDCG@10", "MRR@10", "Recall@100",
              title="evaluation summary (SQL over eval.duckdb)")
    for r in rows:
        t.add_row(r["domain"], r["index_version"], str(r["n_queries"]), f"{r['ndcg_10']:.4f}",
                  f"{r['mrr_10']:.4f}", f"{r['recall_100']:.4f}")
    con.print(t)

    port = _free_port(port)
    con.rule(f"4. Ray Serve on 127.0.0.1:{port}")
    t0 = time.perf_counter()
    queries = sample_queries()
    with ServeHandle(root, host="127.0.0.1", port=port, preset="local") as server:
        con.print(f"ready in {time.perf_counter() - t0:.1f}s; health: {httpx.get(server.url + '/healthz').json()}")
        con.rule("5. sample queries over HTTP (verify on)")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for domain, query in queries:
                r = http.post("/search", json={"query": query, "domain": domain, "k": 3, "verify": True})
                r.raise_for_status()
                body = r.json()
                how = f"ranked by {SearchResults.from_dict(body).ranked_by}"
                t = Table("#", "doc_id", "score", "recall", "title", title=f"[{domain}] {query}  →  index_version "
                          f"{body['index_version']}  ({body['timings_ms']['total']:.1f} ms)")
                for i, h in enumerate(body["results"], 1):
                    t.add_row(str(i), h["doc_id"], f"{h['score']:.3f}", f"{h['recall_score']:.3f}",
                              (h["title"] or h["snippet"])[:60])
                con.print(t)
                con.print(f"[{domain}] {how}", markup=False, highlight=False)
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
        if keep_serving:
            con.rule("try next")
            for line in try_next(root, server.url, queries, serving=True):
                con.print(line, markup=False, highlight=False, soft_wrap=True)
            con.print(f"serving on {server.url} (docs: {server.url}/docs) until Ctrl-C")
            _wait_for_stop(con)
    con.print("serving stopped")
    if not keep_serving:
        con.rule("try next")
        for line in try_next(root, f"http://127.0.0.1:{settings.serve.port}", queries, serving=False):
            con.print(line, markup=False, highlight=False, soft_wrap=True)
    con.print(f"data root: {root.root}")
    return 0
