"""The query path at scale: `/search` with verify over HTTP on an index of about 2 M chunk vectors.

The scaled version is built from a published SciFact version (a data root holding SciFact's index and
verifier, `--source`, only read):
- the corpus is repeated: copy k of document X is a distinct document `X~k` whose chunk vectors are X's plus
  noise shaped by the real vectors' covariance (benchmarks/scale.py's Generator: a copy has about the cosine
  with its source that real chunks have with their nearest real neighbour); the real chunks stay as they are,
  so the SciFact test queries are answered against all copies with their judged documents among them;
- the index is the product's own: `build_index` with scale_kind "ivfpq" and the [index] ivf_* defaults
  (IVF-PQ, exact re-ranking from memory-mapped vectors), published through the product's publisher
  (checksums, golden queries, CURRENT swapped last), and loaded by the serving replicas as any version is;
- a copy shares its source's token codes and word pieces (the version's PQ table points every copy at its
  source's rows), so the verify stage scores real token codes. Those codes (about 80 MB) stay in the page
  cache, where a real corpus of this size would have about 208 times as many, memory-mapped: the figures
  below do not include reading a candidate's codes from disk.

Then, in one run: the Ray Serve app on loopback (preset local) serves the original 9,631-chunk version and
then the scaled one, each with SciFact's verifier; one client on a keep-alive connection sends every
SciFact test query with verify on (p50, p99, the response's stage timings) and again with verify off; the
same search called in this process is the baseline without HTTP. "Found" is the share of queries whose top
10 holds a judged relevant document or a copy of one.

    nice -n 5 .venv/bin/python benchmarks/scale_http.py --vectors 2000000 --json --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import BENCHMARKS_MD, DATA, bench_env, machine, ray_rss_mb, read_last_run, splice, write_last_run
from numpy.lib.format import open_memmap
from scale import Generator

from sidestep.config import load_settings
from sidestep.eval.beir import load_qrels, load_queries
from sidestep.fingerprint import digest
from sidestep.retrieval.index import IVFBuild, build_index
from sidestep.retrieval.ivfpq import IVFPQSpec, auto_nlist
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.atomic import write_parquet
from sidestep.storage.indexes import CHUNKS_FILE, INDEX_FILE, validate_folder, write_version_files
from sidestep.storage.paths import DataRoot

START, END = "<!-- scale-http:start -->", "<!-- scale-http:end -->"
SOURCE = "/tmp/bench/root"
DOMAIN = "scifact"
PORT = 8767


def log(*a) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}]", *a, file=sys.stderr, flush=True)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _renamed(table: pa.Table, column: str, ids: list[str], k: int) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, pa.array([f"{d}~{k}" for d in ids]))


def build_scaled(root: DataRoot, src: Path, src_manifest: dict, vectors: int, work: Path, seed: int = 5) -> dict:
    """Publish the scaled version of `src` (a version folder) as DOMAIN's version in `root`."""
    settings = load_settings(None)
    t0 = time.perf_counter()
    chunks = pq.read_table(src / CHUNKS_FILE)
    n0 = chunks.num_rows
    real = faiss.read_index(str(src / INDEX_FILE)).reconstruct_n(0, n0)
    copies = max(1, math.ceil(vectors / n0) - 1)
    n = n0 * (copies + 1)
    gen = Generator(real)
    x = open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, real.shape[1]))
    x[:n0] = real
    rng = np.random.default_rng(seed)
    for k in range(1, copies + 1):
        x[k * n0:(k + 1) * n0] = gen.around(real, rng)
    x.flush()
    t_vec = time.perf_counter() - t0
    log(f"{n:,} vectors ({copies} copies of {n0:,} chunks) in {t_vec:.0f}s")

    ids = chunks["doc_id"].to_pylist()
    table = pa.concat_tables([chunks] + [_renamed(chunks, "doc_id", ids, k) for k in range(1, copies + 1)])
    ix = settings.index
    spec = IVFPQSpec(nlist=ix.ivf_nlist or auto_nlist(n), m=ix.ivf_pq_m, nprobe=ix.ivf_nprobe, refine_k=ix.ivf_refine_k)
    t1 = time.perf_counter()
    index, params = build_index(np.load(work / "vectors.npy", mmap_mode="r"), exact_max_vectors=0,
                                scale_kind="ivfpq", ivf=IVFBuild(spec, ix.ivf_train_vectors, ix.ivf_shard_vectors,
                                                                 ix.ivf_build_workers))
    t_index = time.perf_counter() - t1
    log(f"IVF-PQ {params.as_dict()} in {t_index:.0f}s")

    store = IndexStore(root)
    fp = digest({"scaled_from": src_manifest["version"], "copies": copies, "seed": seed})
    version = new_version_name(fp)
    t2 = time.perf_counter()
    with store.lock(DOMAIN), store.staging(DOMAIN) as staged:
        vec = np.load(work / "vectors.npy", mmap_mode="r")
        write_version_files(staged, index, table, None, golden_vector=lambda r: np.asarray(vec[r]))
        del index
        for f in ("idf.npy", "tokens_pq.faiss", "tokens_pq.npy"):
            _link(src / f, staged / f)
        pieces = pq.read_table(src / "pieces.parquet")
        pids = pieces["doc_id"].to_pylist()
        write_parquet(staged / "pieces.parquet",
                      pa.concat_tables([pieces] + [_renamed(pieces, "doc_id", pids, k) for k in range(1, copies + 1)]))
        spans = pq.read_table(src / "tokens_pq.parquet")
        sids = spans["doc_id"].to_pylist()
        write_parquet(staged / "tokens_pq.parquet", pa.concat_tables(
            [spans] + [_renamed(spans, "doc_id", sids, k) for k in range(1, copies + 1)]).replace_schema_metadata(
                spans.schema.metadata))
        manifest = {"fingerprint": fp, "documents_generation": 0,
                    "counts": {"documents": src_manifest["counts"]["documents"] * (copies + 1), "chunks": n},
                    "index": params.as_dict() | {"vectors_encoded_since_fit": n},
                    **{k: src_manifest[k] for k in ("encoder", "chunking", "embeddings", "tokens")},
                    "scaled_from": {"version": src_manifest["version"], "copies": copies, "seed": seed}}
        store.publish(DOMAIN, staged, version, manifest, validate=validate_folder)
    t_publish = time.perf_counter() - t2
    folder = store.path(DOMAIN, version)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    log(f"published {version} in {t_publish:.0f}s ({sum(sizes.values()) / 1e9:.2f} GB)")
    return {"version": version, "vectors": n, "copies": copies, "real_chunks": n0, "index": params.as_dict(),
            "noise_scale": gen.scale, "seconds": {"vectors": round(t_vec, 1), "index": round(t_index, 1),
                                                  "publish": round(t_publish, 1)},
            "bytes": sizes}


def serve_and_measure(root: DataRoot, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict:
    import httpx
    from verify import in_process, one_client, wait_verified

    from sidestep.serving.core import SearchService
    from sidestep.serving.run import ServeHandle

    texts = list(queries.values())
    body = {"domain": DOMAIN, "k": 10, "verify": True}
    out: dict = {}
    t0 = time.perf_counter()
    service = SearchService(load_settings(None), root, fast_encoder=True)  # the baseline, as the replica encodes
    for q in texts[:10]:
        service.search(q, 10, DOMAIN, True)
    out["in_process_load_s"] = round(time.perf_counter() - t0, 1)
    with ServeHandle(root, port=PORT, preset="local") as h, httpx.Client(base_url=h.url, timeout=120) as c:
        t1 = time.perf_counter()
        wait_verified(c, body, texts[0], 600)  # a 2 M-vector version takes longer to load and check
        out["first_verified_answer_s"] = round(time.perf_counter() - t1, 1)
        for q in texts[:10]:
            c.post("/search", json={**body, "query": q})
        out["in_process"] = [in_process(service, DOMAIN, texts[:100])]
        out["one_client"] = one_client(c, body, texts)
        out["recall_only"] = one_client(c, {**body, "verify": False}, texts)
        out["in_process"].append(in_process(service, DOMAIN, texts[:100]))
        found = {"verify": 0, "recall": 0}
        for qid, q in queries.items():
            rel = {d for d, g in qrels.get(qid, {}).items() if g > 0}
            for mode, v in (("verify", True), ("recall", False)):
                hits = c.post("/search", json={**body, "query": q, "verify": v}).json()["results"]
                found[mode] += any(hit["doc_id"].split("~")[0] in rel for hit in hits[:10])
        out["found_at_10"] = {k: v / len(queries) for k, v in found.items()}
        out["serving_rss_mb"] = ray_rss_mb()
    return out


def run(a) -> dict:
    src_root = DataRoot(Path(a.source))
    src_store = IndexStore(src_root)
    src_version = src_store.current(DOMAIN)
    if src_version is None:
        raise SystemExit(f"{a.source} has no published {DOMAIN} version: index SciFact there first")
    src = src_store.path(DOMAIN, src_version)
    src_manifest = src_store.verify(DOMAIN, src_version)
    if not (Path(a.source) / "verifiers" / DOMAIN).is_dir():
        raise SystemExit(f"{a.source} has no {DOMAIN} verifier: `sidestep train-verifier` there first")
    work = Path(tempfile.mkdtemp(prefix="ss-scale-http-", dir=a.dir))
    try:
        home = work / "root"
        (home / "indexes").mkdir(parents=True)
        shutil.copytree(Path(a.source) / "verifiers", home / "verifiers")
        shutil.copytree(src_store.base(DOMAIN), home / "indexes" / DOMAIN,
                        ignore=shutil.ignore_patterns(".staging-*"))
        os.environ.update(bench_env(home, prefect_home=home / "prefect", quiet=True))
        os.environ.pop("SIDESTEP_CONFIG", None)
        root = DataRoot(home)
        queries = load_queries(Path(a.data) / "scifact", split="test")
        if a.queries:
            queries = dict(list(queries.items())[: a.queries])
        qrels = load_qrels(Path(a.data) / "scifact", split="test")
        res = {"run_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
               "load_avg_start": os.getloadavg(), "source": {"root": a.source, "version": src_version,
                                                              "chunks": src_manifest["counts"]["chunks"]},
               "queries": len(queries)}
        log(f"serving the original ({src_manifest['counts']['chunks']:,} chunks)")
        res["original"] = serve_and_measure(root, queries, qrels)
        res["build"] = build_scaled(root, src, src_manifest, a.vectors, work)
        log("serving the scaled version")
        res["scaled"] = serve_and_measure(root, queries, qrels)
        res["load_avg_end"] = os.getloadavg()
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict) -> str:
    b, o, s = r["build"], r["original"], r["scaled"]
    ix = b["index"]
    gb = sum(b["bytes"].values()) / 1e9

    def row(name: str, verify: str, m: dict) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in m["stage_p50_ms"].items())
        return (f"| {name} | {verify} | **{m['p50_ms']:.1f}** | **{m['p99_ms']:.1f}** | {m['errors']} | "
                f"{m.get('verified', 0)} | {stages} |")

    def inproc(m: dict) -> str:
        return " and ".join(f"{x['p50_ms']:.1f}" for x in m["in_process"])

    def load(v: list) -> str:
        return ", ".join(f"{x:.2f}" for x in v)

    found = {k: (v["found_at_10"]["verify"], v["found_at_10"]["recall"]) for k, v in (("o", o), ("s", s))}
    return "\n".join([
        START,
        "### `/search` with verify over HTTP at 2 M vectors (`benchmarks/scale_http.py`)",
        "",
        f"Run {r['run_at']} on {r['machine']}; load average {load(r['load_avg_start'])} at the start, "
        f"{load(r['load_avg_end'])} at the end. SciFact's published version ({b['real_chunks']:,} chunks) "
        f"repeated {b['copies']} times, each copy a document of its own with covariance-shaped noise on its "
        f"chunk vectors (scale {b['noise_scale']:.4f}): **{b['vectors']:,} chunk vectors**, published as an "
        f"IVF-PQ version with the product's defaults (nlist {ix.get('nlist')}, m {ix.get('pq_m')}, nprobe "
        f"{ix.get('nprobe')}, refine {ix.get('refine_k')}): vectors {b['seconds']['vectors']:.0f} s, index "
        f"{b['seconds']['index']:.0f} s, publish (checksums, golden queries) {b['seconds']['publish']:.0f} s, "
        f"{gb:.2f} GB. Served by the Ray Serve app on loopback (preset local) with SciFact's verifier; one "
        f"client, keep-alive, the {r['queries']} SciFact test queries, k = 10, verify over 100 candidates. "
        "The original version, served the same way in the same run, is the baseline.",
        "",
        "| index | verify | p50 ms | p99 ms | errors | verified | stage p50 ms (from the responses) |",
        "|---|---|---|---|---|---|---|",
        row(f"original, exact, {r['source']['chunks']:,} vectors", "on", o["one_client"]),
        row("original", "off", o["recall_only"]),
        row(f"scaled, IVF-PQ, {b['vectors']:,} vectors", "on", s["one_client"]),
        row("scaled", "off", s["recall_only"]),
        "",
        f"- The same search called in the benchmark's process (no HTTP, no actor calls; first 100 queries, "
        f"verify on, before and after the HTTP passes): p50 {inproc(o)} ms original, {inproc(s)} ms scaled.",
        f"- Top 10 holds a judged relevant document (scaled: or a copy of one): original {found['o'][0]:.3f} "
        f"with verify, {found['o'][1]:.3f} without; scaled {found['s'][0]:.3f} and {found['s'][1]:.3f}. The "
        "copies are synthetic neighbours, not relevant text, so this checks that the path still finds the "
        "judged documents among 2 M vectors; it is not a quality figure.",
        f"- First verified answer once the app was up: {o['first_verified_answer_s']:.1f} s original, "
        f"{s['first_verified_answer_s']:.1f} s scaled (the replicas load and check the version: checksums, golden "
        f"queries, the token view). Serving processes' RSS: {o['serving_rss_mb']:,.0f} MB original, "
        f"{s['serving_rss_mb']:,.0f} MB scaled (the touched pages of the memory-mapped re-rank vectors count).",
        f"- Not measured: reading token codes from disk. Copies share their source's codes "
        f"({b['bytes']['tokens_pq.npy'] / 1e6:.0f} MB, in the page cache throughout); a real corpus of this size "
        f"has about {b['copies'] + 1} times as many ({b['bytes']['tokens_pq.npy'] * (b['copies'] + 1) / 1e9:.1f} GB, "
        "memory-mapped), and a query's 100 candidates may then be read from disk.",
        END,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=2_000_000, help="at least this many chunk vectors")
    ap.add_argument("--source", default=SOURCE, help="a data root with SciFact's published index and verifier")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--queries", type=int, default=0, help="first N test queries (0: all)")
    ap.add_argument("--dir", default="/tmp", help="where the scaled root goes (removed at the end)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="splice the figures into BENCHMARKS.md")
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args()
    if a.render_only:
        splice(BENCHMARKS_MD, render(read_last_run("scale_http")), START, END)
        return
    res = run(a)
    write_last_run("scale_http", res, default=str)
    if a.markdown:
        splice(BENCHMARKS_MD, render(res), START, END)
    print(json.dumps(res, default=str) if a.json else render(res))


if __name__ == "__main__":
    main()
