"""Recall -> verify benchmark on the real public datasets; writes the verify section of BENCHMARKS.md.

One run, one machine, every baseline beside the verifier:
- SciFact test: `sidestep eval` (trains the verifier on qrels/train.tsv first) with pooled cosine, MaxSim
  reranking the same 100 candidates, BM25 and BM25 + dense fusion; verify-stage cost as a ratio to MaxSim;
- msmarco-5k: the same command with SciFact's verifier (msmarco-5k has no training queries);
- scifact-antonym: does the constraint-satisfying document rank above the violating one, among recall's
  candidates from that corpus (pooled cosine, MaxSim, verifier);
- compressed token store: the SciFact index republished with PQ codes, the same verifier evaluated on it;
- HTTP: the Ray Serve endpoint with verify on, 100 candidates, one client (p50/p99) and 8 clients.

Usage: .venv/bin/python benchmarks/verify.py [--data ../shared/data] [--resume ROOT] [--render-only ROOT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import ir_measures
import numpy as np
from common import BENCHMARKS_MD, DATA, bench_env, ray_rss_mb, sh, splice, write_last_run
from ir_measures import nDCG

from sidestep.config import load_settings
from sidestep.eval.beir import load_qrels, load_queries
from sidestep.retrieval.search import maxsim_rerank, rerank
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import load_verifier, verifier_store

START, END = "<!-- verify:start -->", "<!-- verify:end -->"


def antonym_probe(root: Path, data: Path, env: dict) -> dict:
    """Ingest the probe corpus, then rank recall's top candidates for each probe query three ways."""
    from sidestep.tasks.common import encoder_for

    folder = data / "scifact-antonym"
    cfg = root / "antonym.toml"
    cfg.write_text(f'[[sources]]\ndomain = "antonym"\npath = "{folder / "corpus_antonym.jsonl"}"\nformat = "jsonl"\n'
                   'id_field = "doc_id"\ntitle_field = "title"\ntext_field = "text"\n')
    sh(["reindex", "--domain", "antonym", "--json"], {**env, "SIDESTEP_CONFIG": str(cfg)})
    settings = load_settings(None)
    dr = DataRoot(root)
    corpus = load_current(IndexStore(dr), "antonym")
    view = load_token_view(dr, settings, "antonym", corpus.version)
    ver = load_verifier(dr, "scifact")
    enc = encoder_for(settings)
    qs = [json.loads(x) for x in (folder / "queries_antonym.jsonl").read_text().splitlines() if x.strip()]
    wins = {"pooled_cosine": 0, "maxsim": 0, "verifier": 0}
    pairs = 0
    for q in qs:
        pooled, toks = enc.encode_queries_with_tokens([q["query"]])
        pieces = enc.query_ids([q["query"]])[0]
        hits = corpus.searcher.search(pooled, settings.verify.candidates)[0]
        ids = [h.doc_id for h in hits]
        rec = np.asarray([h.score for h in hits], np.float32)
        ms, _ = maxsim_rerank(view, toks[0], ids, settings.verify.max_doc_tokens)
        (vs, _, _), = rerank(ver.model, [view], [toks[0]], [pieces], [ids], [rec], settings.verify.max_doc_tokens,
                          settings.verify.verify_top)
        by = {n: dict(zip(ids, v, strict=True)) for n, v in (("pooled_cosine", rec), ("maxsim", ms), ("verifier", vs))}
        for sat in q["constraint_satisfying_doc_ids"]:
            for vio in q["constraint_violating_doc_ids"]:
                pairs += 1
                for name, sc in by.items():
                    # a document recall missed ranks below every candidate
                    wins[name] += sc.get(sat, -1e9) > sc.get(vio, -1e9)
    return {"queries": len(qs), "pairs": pairs, "verifier_version": ver.version,
            **{f"{k}_prefers_satisfying": v / pairs for k, v in wins.items()}}


def in_process(service, domain: str, queries: list[str]) -> dict:
    """The same search, verify on, called in this process (no HTTP, no actor calls): the baseline that
    says how much of the HTTP latency is Ray Serve's, and how fast this machine runs right now (a
    pure-Python loop does not see the slowdowns that hit vector work here)."""
    lat, stages = [], {}
    for q in queries:
        s = time.perf_counter()
        r = service.search(q, 10, domain, True)
        lat.append((time.perf_counter() - s) * 1e3)
        for k, v in r["timings_ms"].items():
            stages.setdefault(k, []).append(v)
    return {"requests": len(lat), "p50_ms": statistics.median(lat),
            "stage_p50_ms": {k: statistics.median(v) for k, v in stages.items()}}


def one_client(c, body: dict, queries: list[str]) -> dict:
    """Every query once, one at a time on one keep-alive connection."""
    lat, errors, applied, stages = [], 0, 0, {}
    for q in queries:
        s = time.perf_counter()
        r = c.post("/search", json={**body, "query": q})
        lat.append((time.perf_counter() - s) * 1e3)
        errors += r.status_code != 200
        if r.status_code == 200:
            j = r.json()
            applied += j["verify"]["applied"]
            for k, v in j["timings_ms"].items():
                stages.setdefault(k, []).append(v)
    lat.sort()
    return {"requests": len(lat), "errors": errors, "verified": applied, "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
            "stage_p50_ms": {k: statistics.median(v) for k, v in stages.items()}}


def wait_verified(c, body: dict, query: str, timeout_s: float) -> None:
    """Until the endpoint answers `query` with verify applied: the verifier deployment loads the verifier
    and the version's token view lazily, on its first request."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = c.post("/search", json={**body, "query": query})
        if r.status_code == 200 and r.json()["verify"]["applied"]:
            return
        time.sleep(1)


def http_bench(root: Path, domain: str, queries: list[str], clients: int = 8, seconds: float = 30) -> dict:
    from sidestep.serving.core import SearchService
    from sidestep.serving.run import ServeHandle

    body = {"domain": domain, "k": 10, "verify": True}
    out = {}
    service = SearchService(load_settings(None), DataRoot(root), fast_encoder=True)  # as the replica encodes
    for q in queries[:10]:  # warm: compiled reductions, the encoder's ONNX session, the token view
        service.search(q, 10, domain, True)
    with ServeHandle(DataRoot(root), port=8766, preset="local") as h, httpx.Client(base_url=h.url, timeout=60) as c:
        wait_verified(c, body, queries[0], 120)
        for q in queries[:10]:
            c.post("/search", json={**body, "query": q})
        before = in_process(service, domain, queries[:100])
        out["one_client"] = one_client(c, body, queries)
        out["recall_only"] = one_client(c, {**body, "verify": False}, queries)
        out["in_process"] = [before, in_process(service, domain, queries[:100])]
        counts = {"ok": 0, "errors": 0, "verified": 0}
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=h.url, timeout=60) as cc:
                n = i
                while time.monotonic() < stop:
                    r = cc.post("/search", json={**body, "query": queries[n % len(queries)]})
                    n += clients
                    with lock:
                        if r.status_code == 200:
                            counts["ok"] += 1
                            counts["verified"] += r.json()["verify"]["applied"]
                        else:
                            counts["errors"] += 1

        t0 = time.perf_counter()
        ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        rss = ray_rss_mb()
        out["concurrent"] = {"clients": clients, "seconds": wall, **counts, "qps": counts["ok"] / wall,
                             "serving_rss_mb": rss}
    return out


def seen_split(root: Path, data: Path, group: str) -> dict:
    """SciFact's training and test claims cite some of the same abstracts. A learned part may gain on those
    queries by knowing which abstracts get cited, not by verifying: so every SciFact ranking of the run is
    scored again (ir_measures, ideal from all of qrels/test.tsv) on the test queries with a relevant abstract
    some training claim cites ("seen") and on the rest ("unseen"), where only generalization can help."""

    cited = {d for rels in load_qrels(data / "scifact", "train").values() for d, g in rels.items() if g > 0}
    test = load_qrels(data / "scifact", "test")
    seen = {q for q, rels in test.items() if any(g > 0 and d in cited for d, g in rels.items())}
    con = duckdb.connect(str(root / "eval.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT run_id, label FROM runs WHERE group_id = ?", [group]).fetchall()
        results = {label: con.execute("SELECT query_id, doc_id, score FROM run_results WHERE run_id = ?",
                                      [rid]).fetchall() for rid, label in runs}
    finally:
        con.close()
    out = {"seen_queries": len(seen), "unseen_queries": len(set(test) - seen), "ndcg@10": {}}
    for label, rows in results.items():
        per = {}
        for group_name, keep in (("seen", seen), ("unseen", set(test) - seen)):
            qrels = [ir_measures.Qrel(q, d, g) for q in keep for d, g in test[q].items()]
            run = [ir_measures.ScoredDoc(q, d, s) for q, d, s in rows if q in keep]
            per[group_name] = float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])
        out["ndcg@10"][label] = per
    return out


def _curve(root: Path, version: str) -> list[tuple]:
    con = duckdb.connect(str(root / "eval.duckdb"), read_only=True)
    try:
        return con.execute("SELECT epoch, max(value) FILTER (WHERE metric = 'loss'), "
                           "max(value) FILTER (WHERE metric = 'val_ndcg10') FROM verifier_curves "
                           "WHERE verifier_version = ? GROUP BY epoch ORDER BY epoch", [version]).fetchall()
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    ap.add_argument("--resume", help="data root of an interrupted run: finished phases are not rerun")
    ap.add_argument("--render-only", help="data root of a finished run: only rewrite BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions")
    args = ap.parse_args()
    data = Path(args.data)
    root = Path(args.resume or args.render_only or tempfile.mkdtemp(prefix="ssb-verify-", dir="/tmp"))
    partial = root / "bench_verify_partial.json"
    done: dict = json.loads(partial.read_text()) if partial.is_file() else {}
    env = bench_env(root, prefect_home=root / "prefect", quiet=True)
    env.pop("SIDESTEP_CONFIG", None)
    os.environ.update({k: v for k, v in env.items() if k != "SIDESTEP_CONFIG"})
    os.environ.pop("SIDESTEP_CONFIG", None)

    def phase(name: str, fn):
        if name not in done and not args.render_only:
            print(f"[{datetime.now(UTC):%H:%M:%S}] {name} ...", flush=True)
            done[name] = fn()
            partial.write_text(json.dumps(done, indent=2, default=str))
        return done.get(name)

    def eval_cmd(extra: list[str], e: dict | None = None) -> dict:
        res, wall, rss, cpu = sh(["eval", *extra, "--json"], e or env)
        return {"result": res, "wall_s": wall, "peak_rss_mb": rss, "cpu_s": cpu}

    f16 = root / "float16.toml"
    f16.write_text('[verify]\ntoken_store = "float16"\n')
    f16_env = {**env, "SIDESTEP_CONFIG": str(f16)}
    # quality headline on the uncompressed token vectors; the PQ store (the default) is compared below
    phase("scifact", lambda: eval_cmd([str(data / "scifact"), "--domain", "scifact"], f16_env))

    def verifier_phase() -> dict:
        store = verifier_store(DataRoot(root))
        m = store.manifest("scifact", store.current("scifact"))
        curve = [{"epoch": e, "loss": lo, "val": va} for e, lo, va in _curve(root, m["version"])]
        # the run that trained it (a resumed run may have re-evaluated SciFact after training)
        first = done.get("scifact_trained") or done["scifact"]
        train_s = (first["result"].get("verifier_training") or {}).get("seconds")
        return {"version": m["version"], "parameters": m["parameters"], "train_queries": m["train_queries"],
                "val_queries": m["val_queries"], "best_epoch": m["best_epoch"], "val_ndcg10": m["val_ndcg10"],
                "epochs_run": m["epochs_run"], "near_misses": m["near_misses"], "seconds": train_s, "curve": curve,
                "token_store": m.get("token_store"), "verify_top": m.get("verify_top"), "train_top": m.get("train_top"),
                "val_ndcg10_by_verify_top": m.get("val_ndcg10_by_verify_top"), "adapter": m.get("adapter")}

    phase("verifier", verifier_phase)
    phase("msmarco", lambda: eval_cmd([str(data / "msmarco-5k"), "--domain", "msmarco", "--verifier-from",
                                       "scifact", "--min-rel", "2"], f16_env))
    phase("antonym", lambda: antonym_probe(root, data, env))
    phase("seen", lambda: seen_split(root, data, done["scifact"]["result"]["run_group"]))

    # the default configuration: PQ token store (republishes the index with PQ codes), same verifier
    phase("pq", lambda: eval_cmd([str(data / "scifact"), "--domain", "scifact", "--no-train-verifier"]))

    def http_phase() -> dict:
        return http_bench(root, "scifact", list(load_queries(data / "scifact", split="test").values()))

    phase("http", http_phase)
    done["meta"] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "root": str(root), "note": args.note,
                    "cpus": os.cpu_count(), "pq_bytes": load_settings(None).verify.pq_bytes}
    write_last_run("verify", done, default=str)
    section = render(done)
    splice(Path(args.out), section, START, END)
    print(section)


def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} |"


def render(r: dict) -> str:
    sf, ms, pq, ant, http = (r.get(k) for k in ("scifact", "msmarco", "pq", "antonym", "http"))
    out = [START, "## Recall, then verify", ""]
    meta = r.get("meta", {})
    out.append(f"Measured {meta.get('date')} on this {meta.get('cpus')}-core machine by `benchmarks/verify.py`; "
               "every baseline comes from the same run. " + meta.get("note", ""))
    for title, blob in (("SciFact test (300 queries), float16 token store", sf),
                        ("SciFact test, PQ token store (the default; same verifier)", pq),
                        ("msmarco-5k (43 judged queries, grade >= 2 counts "
                         "for MRR and Recall; SciFact's verifier)", ms)):
        if not blob:
            continue
        res = blob["result"]
        out += ["", f"### {title}", "", "| configuration | nDCG@10 | MRR@10 | Recall@100 |", "|---|---|---|---|",
                _row("**recall -> verify**" if res["verify"]["applied"] else "recall only", res["metrics"])]
        out += [_row(n, m) for n, m in res["baselines"].items()]
        c = res.get("cost") or {}
        if c.get("verify_over_maxsim"):
            out += ["", f"- Verify stage (token maps + verifier) "
                        f"{c['per_query_token_maps_ms'] + c['per_query_verifier_ms']:.1f} "
                        f"ms/query (mean) vs MaxSim reranking of the same candidates "
                        f"{c['per_query_maxsim_ms']:.1f} ms: "
                        f"**{c['verify_over_maxsim']:.2f}x**" + (
                            f" (medians {c['p50_verify_stage_ms']:.1f} vs {c['p50_maxsim_ms']:.1f} ms: "
                            f"{c['p50_verify_over_maxsim']:.2f}x)" if c.get("p50_verify_over_maxsim") else "") +
                        (f". The model read the top {res['verify']['verify_top']} of {res['verify'].get('candidates')} "
                           "candidates by pre-score" if res["verify"].get("verify_top") else
                           ". The model read every candidate") + f". Token store {c['token_store']}, "
                        f"{c['bytes_per_doc'] / 1024:.1f} KB per document."]
        tr = r.get("verifier") if blob is sf else None
        if tr:
            secs = f", trained in {tr['seconds']:.0f} s" if tr.get("seconds") else ""
            lists = (f"; each list the pre-score top {tr['train_top']} of recall's candidates with the near-misses "
                     "of their positives") if tr.get("train_top") else ""
            out.append(f"- Verifier {tr['version']}: {tr['parameters']:,} parameters, {tr['train_queries']} training "
                       f"queries ({tr['val_queries']} held out for early stopping{lists}), trained on "
                       f"{tr.get('token_store') or 'float16'} maps, best validation nDCG@10 "  # trained under f16_env
                       f"{tr['val_ndcg10']:.4f} at epoch {tr['best_epoch']} of {tr['epochs_run']}{secs}; "
                       f"near-misses {tr['near_misses']}. Curve in DuckDB `verifier_curves`.")
            ad = tr.get("adapter")
            if ad and ad.get("curve"):
                out.append(f"- Query adapter, trained first on the same lists' recall top {ad.get('top', 30)} "
                           f"(MaxSim of "
                           f"the adapted query, listwise): held-out nDCG@10 {ad['identity_val_ndcg10']:.4f} with the "
                           f"identity, **{ad['val_ndcg10']:.4f}** at epoch {ad['best_epoch']} of {ad['epochs_run']} "
                           f"(|A - I| {ad['distance_from_identity']:.2f}).")
            if tr.get("val_ndcg10_by_verify_top"):
                by = ", ".join(f"{'all' if k == '0' else k} {v:.4f}" for k, v in tr["val_ndcg10_by_verify_top"].items())
                out.append(f"- Candidates the model reads, chosen after training on those held-out queries (the "
                           f"smallest top by pre-score within 0.001 of the whole list's validation nDCG@10): "
                           f"**{tr['verify_top'] or 'all'}**. Validation nDCG@10 by choice: {by}.")
        out.append(f"- Whole command: {blob['wall_s']:.0f} s wall, peak RSS {blob['peak_rss_mb']:.0f} MB.")
    seen = r.get("seen")
    if seen:
        out += ["", "### SciFact test split by abstracts the training claims cite", "",
                f"{seen['seen_queries']} test queries have a relevant abstract that some training claim cites "
                f"(\"seen\"); {seen['unseen_queries']} do not (\"unseen\": no learned part has seen a positive of "
                "theirs). Same rankings as the float16 table, nDCG@10:", "", "| configuration | seen | unseen |",
                "|---|---|---|"]
        names = {"main": "**recall -> verify**"}
        out += [f"| {names.get(n, n)} | {v['seen']:.4f} | {v['unseen']:.4f} |" for n, v in seen["ndcg@10"].items()]
    if ant:
        out += ["", "### scifact-antonym near-miss probe", "",
                f"{ant['queries']} queries, {ant['pairs']} (satisfying, violating) pairs, ranked among recall's "
                "candidates from the probe corpus:", "", "| scorer | prefers the satisfying document |", "|---|---|"]
        out += [f"| {n} | {ant[f'{n}_prefers_satisfying']:.1%} |" for n in ("pooled_cosine", "maxsim", "verifier")]
    if pq and sf:
        a, b = sf["result"], pq["result"]
        out += ["", "### Compressed token store", "",
                f"- float16: {a['cost']['bytes_per_doc'] / 1024:.1f} KB per document, "
                f"nDCG@10 {a['metrics']['ndcg@10']:.4f}.",
                f"- PQ (the default store, {meta.get('pq_bytes')} bytes per token): "
                f"{b['cost']['bytes_per_doc'] / 1024:.1f} KB per "
                f"document, nDCG@10 {b['metrics']['ndcg@10']:.4f} (same verifier): cost "
                f"**{a['metrics']['ndcg@10'] - b['metrics']['ndcg@10']:+.4f}**; MaxSim on PQ "
                f"{b['baselines']['maxsim']['ndcg@10']:.4f} vs {a['baselines']['maxsim']['ndcg@10']:.4f}."]
    if http:
        o, cc, ro = http["one_client"], http["concurrent"], http.get("recall_only")
        st = ", ".join(f"{k} {v:.1f}" for k, v in o["stage_p50_ms"].items())
        out += ["", "### HTTP (Ray Serve, verify on, 100 candidates, k = 10)", "",
                f"- One client, keep-alive, {o['requests']} SciFact test queries: p50 **{o['p50_ms']:.1f} ms**, "
                f"p99 **{o['p99_ms']:.1f} ms**, {o['errors']} errors, {o['verified']} verified. "
                f"Stage medians (ms): {st}."]
        if ro:
            out.append(f"- The same queries with `verify: false` (recall only): p50 {ro['p50_ms']:.1f} ms, p99 "
                       f"{ro['p99_ms']:.1f} ms, {ro['errors']} errors.")
        if http.get("in_process"):
            a, b = http["in_process"]
            sa, sb = a["stage_p50_ms"], b["stage_p50_ms"]
            out.append(f"- Baseline, the same search called in the benchmark's process (no HTTP, no actor calls), "
                       f"first {a['requests']} queries, before and after these two passes: p50 {a['p50_ms']:.1f} "
                       f"and {b['p50_ms']:.1f} ms (encode {sa['encode']:.1f} and {sb['encode']:.1f}, token_maps "
                       f"{sa['token_maps']:.1f} and {sb['token_maps']:.1f}). HTTP p50 / in-process p50: "
                       f"**{o['p50_ms'] / ((a['p50_ms'] + b['p50_ms']) / 2):.2f}x**.")
        out.append(f"- {cc['clients']} concurrent clients for {cc['seconds']:.0f} s: **{cc['qps']:.1f} queries/s**, "
                   f"{cc['ok']} answered ({cc['verified']} verified), {cc['errors']} errors; serving processes "
                   f"{cc['serving_rss_mb']:.0f} MB RSS.")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    main()
