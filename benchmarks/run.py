"""Benchmarks on the real public datasets in ../shared/data; writes BENCHMARKS.md.

Every figure comes from this one run on this machine, and every ratio is against a
baseline measured in the same run:
- quality: `sidestep eval` (the real command) on SciFact and msmarco-5k;
- encoding throughput: the bare sentence-transformers encoder on the same texts,
  vs the whole reindex (`sidestep reindex`: ingest + chunk + embed + index + publish,
  process start and model load included);
- latency: the Ray Serve HTTP endpoint, one client, keep-alive, p50/p99;
- memory: peak RSS of the reindex/eval processes and of the serving processes.

Usage: .venv/bin/python benchmarks/run.py [--data ../shared/data] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from common import BENCH_DIR, BENCHMARKS_MD, DATA, bench_env, ray_rss_mb, sh

from sidestep.config import default_settings
from sidestep.eval.beir import load_queries
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.documents import DocumentStore
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import doc_text


def bare_encoder(texts: list[str], batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds for SentenceTransformer.encode on texts (model already loaded)."""
    from sidestep.tasks.common import encoder_for

    st = encoder_for(default_settings()).st
    st.encode(texts[:64], batch_size=batch_size)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    st.encode(texts, batch_size=batch_size)
    return time.perf_counter() - t0, time.process_time() - c0


def chunk_texts(root: Path, domain: str) -> list[str]:
    """The exact windows the pipeline encoded, as text (from the published chunk table)."""
    dr = DataRoot(root)
    store = IndexStore(dr)
    chunks = pq.read_table(store.path(domain, store.current(domain)) / "chunks.parquet",
                           columns=["doc_id", "char_start", "char_end"]).to_pylist()
    docs = {d["doc_id"]: f"{d['title']} {d['text']}".strip() if d["title"] else d["text"].strip()
            for d in DocumentStore(dr).read(domain, include_deleted=False).to_pylist()}
    return [docs[c["doc_id"]][c["char_start"]:c["char_end"]] for c in chunks]


def http_latency(root: Path, domain: str, queries: list[str], ks: tuple[int, ...]) -> dict:
    from sidestep.serving.run import ServeHandle

    out = {}
    with ServeHandle(DataRoot(root), port=8765, preset="local") as h, httpx.Client(base_url=h.url, timeout=60) as c:
        for k in ks:
            for q in queries[:10]:
                c.post("/search", json={"query": q, "domain": domain, "k": k, "verify": False})
            lat, errors = [], 0
            t0 = time.perf_counter()
            for q in queries:
                s = time.perf_counter()
                r = c.post("/search", json={"query": q, "domain": domain, "k": k, "verify": False})
                lat.append((time.perf_counter() - s) * 1e3)
                errors += r.status_code != 200
            wall = time.perf_counter() - t0
            rss = ray_rss_mb()
            lat.sort()
            out[f"k{k}"] = {"requests": len(lat), "errors": errors, "p50_ms": statistics.median(lat),
                            "p99_ms": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
                            "qps": len(lat) / wall, "serving_rss_mb": rss,
                            "latency_ms": [round(x, 3) for x in lat]}  # every sample: `sidestep report`'s histogram
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    ap.add_argument("--keep", action="store_true", help="keep the temporary data root")
    ap.add_argument("--resume", help="data root of an interrupted run: finished phases are not rerun")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions, printed under the title")
    args = ap.parse_args()
    data = Path(args.data)
    for name in ("scifact", "msmarco-5k"):
        if not (data / name / "corpus.jsonl").is_file():
            raise SystemExit(f"missing dataset {data / name}; see ../shared/data/README.md")
    root = Path(args.resume) if args.resume else Path(tempfile.mkdtemp(prefix="ssb-", dir="/tmp"))
    partial = root / "bench_partial.json"
    done: dict = json.loads(partial.read_text()) if partial.is_file() else {}

    def phase(name: str, fn):
        if name not in done:
            done[name] = fn()
            partial.write_text(json.dumps(done, indent=2))
        return done[name]

    env = bench_env(root)
    os.environ.update({k: env[k] for k in ("SIDESTEP_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})
    cfg = root / "bench.toml"
    cfg.write_text(f'[[sources]]\ndomain = "scifact"\npath = "{data / "scifact"}"\nformat = "beir"\n')
    res: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "data_root": str(root),
                 "note": args.note}

    print("1/6 whole reindex of SciFact (sidestep reindex) ...", flush=True)
    reindex, wall, peak, cpu = phase("reindex", lambda: sh(["--config", str(cfg), "reindex", "--json"], env))
    n_docs = reindex["domains"]["scifact"]["embed"]["documents"]
    res["reindex"] = {"documents": n_docs, "chunks": reindex["domains"]["scifact"]["index"]["chunks"],
                      "wall_s": wall, "docs_per_s": n_docs / wall, "peak_rss_mb": peak, "cpu_s": cpu,
                      "embed_s": reindex["domains"]["scifact"]["embed"]["seconds"]}
    print("2/6 rerun on the unchanged corpus ...", flush=True)
    again, wall2, _, _ = phase("rerun", lambda: sh(["--config", str(cfg), "reindex", "--json"], env))
    res["rerun"] = {"wall_s": wall2, "encoded": again["encoded"], "published": len(again["published"])}

    print("3/6 bare encoder on the same texts ...", flush=True)
    docs = [json.loads(line) for line in (data / "scifact" / "corpus.jsonl").open()]
    texts = [doc_text(d.get("title", ""), d["text"]) for d in docs]
    t_docs = phase("bare_docs", lambda: bare_encoder(texts, 32))
    t_chunks = phase("bare_chunks", lambda: bare_encoder(chunk_texts(root, "scifact"), 32))
    res["bare"] = {"docs_truncated_s": t_docs[0], "docs_truncated_per_s": len(texts) / t_docs[0],
                   "docs_truncated_cpu_s": t_docs[1],
                   "chunk_texts_s": t_chunks[0], "chunk_texts_docs_per_s": len(texts) / t_chunks[0],
                   "chunk_texts_cpu_s": t_chunks[1]}

    print("4/6 sidestep eval scifact ...", flush=True)
    sf, wall_sf, peak_sf, _ = phase("eval_scifact", lambda: sh(
        ["eval", str(data / "scifact"), "--domain", "scifact", "--json"], env))
    res["scifact"] = {**sf["metrics"], "queries": sf["queries"], "wall_s": wall_sf, "peak_rss_mb": peak_sf,
                      "encoded": sf["embed"]["encoded"], "qps": sf["queries_per_s"]}
    print("5/6 sidestep eval msmarco-5k (grade >= 2 relevant for MRR/Recall) ...", flush=True)
    mm, wall_mm, peak_mm, _ = phase("eval_msmarco", lambda: sh(
        ["eval", str(data / "msmarco-5k"), "--domain", "msmarco", "--min-rel", "2", "--json"], env))
    res["msmarco"] = {**mm["metrics"], "queries": mm["queries"], "wall_s": wall_mm, "peak_rss_mb": peak_mm,
                      "documents": mm["embed"]["documents"], "embed_s": mm["embed"]["seconds"]}

    print("6/6 HTTP latency through Ray Serve ...", flush=True)
    qs = list(load_queries(data / "scifact", split="test").values())
    http = phase("http", lambda: http_latency(root, "scifact", qs, (10, 100)))
    res["http_k10"], res["http_k100"] = http["k10"], http["k100"]
    (BENCH_DIR / "last_run.json").write_text(json.dumps(res, indent=2))
    Path(args.out).write_text(keep_sections(render(res), Path(args.out)))
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def keep_sections(text: str, old: Path) -> str:
    """The other benchmarks' marked sections (`<!-- name:start -->` ... `<!-- name:end -->`) of the
    file being replaced, carried into the new text: in place where it has their markers, appended
    where it has not."""
    prev = old.read_text() if old.is_file() else ""
    for m in re.finditer(r"<!-- ([a-z-]+):start -->.*?<!-- \1:end -->", prev, re.S):
        start, end = f"<!-- {m.group(1)}:start -->", f"<!-- {m.group(1)}:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + m.group(0) + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + m.group(0) + "\n"
    return text


def render(r: dict) -> str:
    rx, b = r["reindex"], r["bare"]
    ratio_chunks = rx["docs_per_s"] / b["chunk_texts_docs_per_s"]
    ratio_trunc = rx["docs_per_s"] / b["docs_truncated_per_s"]
    cpu_chunks = b["chunk_texts_cpu_s"] / rx["cpu_s"]
    cpu_trunc = b["docs_truncated_cpu_s"] / rx["cpu_s"]
    sf, mm, h10, h100 = r["scifact"], r["msmarco"], r["http_k10"], r["http_k100"]
    return f"""# sidestep benchmarks

Produced by `benchmarks/run.py` on {r['started']} ({platform.machine()}, {os.cpu_count()} cores, Python
{platform.python_version()}); encoder all-MiniLM-L6-v2; all figures from one run, ratios against
baselines measured in the same run. Regenerate with `make bench`.
{("" if not r.get("note") else chr(10) + "Conditions: " + r["note"] + chr(10))}
## Retrieval quality (`sidestep eval`, dense recall, verify not yet available)

| dataset | queries | nDCG@10 | MRR@10 | Recall@100 | protocol |
|---|---|---|---|---|---|
| SciFact test | {sf['queries']} | {sf['ndcg@10']:.4f} | \
{sf['mrr@10']:.4f} | {sf['recall@100']:.4f} | BEIR test qrels, grade ≥ 1 |
| msmarco-5k | {mm['queries']} | {mm['ndcg@10']:.4f} | \
{mm['mrr@10']:.4f} | {mm['recall@100']:.4f} | graded nDCG; MRR/Recall count grade ≥ 2 |

Reference (same encoder, ../shared/data/README.md): SciFact dense nDCG@10 ≈ 0.645.
Documents are chunked (256-token windows, 32 overlap) and a document scores as its best chunk.

## Throughput (SciFact, {rx['documents']} documents → {rx['chunks']} chunks)

| what | wall s | CPU s | documents/s (wall) |
|---|---|---|---|
| whole reindex (`sidestep reindex`: process start, Prefect, ingest, chunk, embed, index, publish) | \
{rx['wall_s']:.1f} | {rx['cpu_s']:.1f} | {rx['docs_per_s']:.2f} |
| of which embedding (chunking + encoding + shard writes) | {rx['embed_s']:.1f} | | \
{rx['documents'] / rx['embed_s']:.2f} |
| bare encoder (`SentenceTransformer.encode`) on the same chunk texts | \
{b['chunk_texts_s']:.1f} | {b['chunk_texts_cpu_s']:.1f} | {b['chunk_texts_docs_per_s']:.2f} |
| bare encoder on whole documents, truncated at 256 tokens (no chunking) | \
{b['docs_truncated_s']:.1f} | {b['docs_truncated_cpu_s']:.1f} | {b['docs_truncated_per_s']:.2f} |
| rerun on the unchanged corpus | {r['rerun']['wall_s']:.1f} | | \
encoded {r['rerun']['encoded']}, published {r['rerun']['published']} |

Throughput of the whole reindex relative to the bare encoder, same run (wall clock; CPU seconds in
brackets, which stay comparable if another process shares the machine):
- on the same texts (the pipeline encodes every chunk window): **{ratio_chunks:.2f}×** ({cpu_chunks:.2f}×): \
the pipeline's own overhead;
- on whole documents truncated at 256 tokens: **{ratio_trunc:.2f}×** ({cpu_trunc:.2f}×): this also charges the pipeline
  for encoding the tails of long documents, which truncation throws away.
- msmarco-5k: {mm['documents']} passages embedded in {mm['embed_s']:.1f} s.

## Query latency through the HTTP endpoint (Ray Serve, one client, keep-alive, SciFact test queries)

| k | requests | errors | p50 ms | p99 ms | queries/s |
|---|---|---|---|---|---|
| 10 | {h10['requests']} | {h10['errors']} | {h10['p50_ms']:.1f} | {h10['p99_ms']:.1f} | {h10['qps']:.1f} |
| 100 | {h100['requests']} | {h100['errors']} | {h100['p50_ms']:.1f} | {h100['p99_ms']:.1f} | {h100['qps']:.1f} |

<!-- longdoc:start -->
(`make bench-longdoc`)
<!-- longdoc:end -->

## Memory

| process | peak RSS MB |
|---|---|
| `sidestep reindex` (SciFact) | {rx['peak_rss_mb']:.0f} |
| `sidestep eval` SciFact / msmarco-5k | {sf['peak_rss_mb']:.0f} / {mm['peak_rss_mb']:.0f} |
| Ray Serve processes (all, after the load) | {h10['serving_rss_mb']:.0f} |
"""


if __name__ == "__main__":
    main()
