"""Indexes at scale: IVF-PQ + exact re-rank against HNSW on N vectors of 384 dimensions.

The corpus is real all-MiniLM-L6-v2 chunk vectors (the pooled vectors of the SciFact and msmarco-5k
chunks in an existing data root's embedding store) repeated with noise: each synthetic vector is a real
vector plus Gaussian noise drawn with the real vectors' own covariance, at a per-vector scale drawn
uniformly in [0.5, 1.5]·s, s set so that a vector and another noisy copy of the same real vector have the
cosine that real chunks have with their nearest real neighbour (median 0.774 on that store), then
normalized. Without a data root it falls back to a Gaussian mixture (say which: the JSON's corpus.kind).
Queries are fresh draws of the same process, not in the index. Ground truth is exact inner-product search
(faiss.knn over the same array, no copy).

Both indexes are searched with faiss limited to --threads OpenMP threads (2 = this machine's cores);
p50 is the median wall time of one query at a time. The vectors live once, in the IVF-PQ version's
`vectors.npy` (memory-mapped), which HNSW copies into its own storage while it is built.

    nice -n 5 .venv/bin/python benchmarks/scale.py --vectors 2000000 --json --markdown
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from common import BENCHMARKS_MD, read_last_run, splice, write_last_run
from numpy.lib.format import open_memmap

from sidestep.retrieval.ivfpq import auto_nlist, encode_shards, train_ivfpq
from sidestep.storage.ivf import IVF_DATA, IVF_INDEX, IVF_TRAINED, VECTORS, read_ivfpq, write_ivfpq

START, END = "<!-- scale:start -->", "<!-- scale:end -->"
DIM = 384
REAL = "/tmp/bench/root/embeddings/*/*.parquet"
RANK = 96  # principal directions the noise follows


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def real_vectors(pattern: str) -> np.ndarray | None:
    import pyarrow.parquet as pq
    parts = [pq.read_table(f, columns=["pooled"])["pooled"].combine_chunks().flatten().to_numpy()
             .reshape(-1, DIM) for f in sorted(glob.glob(pattern))]
    return np.concatenate(parts).astype(np.float32) if parts else None


class Generator:
    """Real vectors + noise shaped by their covariance (or a Gaussian mixture without real vectors)."""

    def __init__(self, real: np.ndarray | None, seed: int = 0):
        rng = np.random.default_rng(seed)
        if real is None:
            self.kind = "gaussian mixture (20,000 isotropic components on the unit sphere)"
            c = rng.standard_normal((20_000, DIM)).astype(np.float32)
            self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
            self.chol = np.eye(DIM, RANK, dtype=np.float32) / np.sqrt(RANK)
            self.nn_cos = 0.774
        else:
            self.kind = f"real MiniLM chunk vectors ({len(real):,}) repeated with covariance-shaped noise"
            self.centers = real
            # noise along the real vectors' top principal directions (most of their variance), at their scale
            vals, vecs = np.linalg.eigh(np.cov(real.T).astype(np.float64))
            top = np.argsort(vals)[::-1][:RANK]
            self.chol = (vecs[:, top] * np.sqrt(np.maximum(vals[top], 0))).astype(np.float32)
            ix = faiss.IndexFlatIP(DIM)
            ix.add(real)
            d, _ = ix.search(real[rng.choice(len(real), min(2000, len(real)), replace=False)], 2)
            self.nn_cos = float(np.median(d[:, 1]))
        trace = float((self.chol ** 2).sum())  # E|z|^2 of one noise draw
        # a copy pair's cosine is about 1 / (1 + s^2 trace): pick s for the real nearest-neighbour cosine
        self.scale = float(np.sqrt((1 / self.nn_cos - 1) / trace))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.around(self.centers[rng.integers(0, len(self.centers), n)], rng)

    def around(self, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy unit-norm copy of each row of `c`."""
        n = len(c)
        z = rng.standard_normal((n, self.chol.shape[1]), dtype=np.float32) @ self.chol.T
        s = self.scale * rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
        x = c + s * z
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def fill(path: Path, gen: Generator, n: int, seed: int, block: int = 100_000) -> np.ndarray:
    x = open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for s in range(0, n, block):
        x[s:s + block] = gen.draw(min(block, n - s), rng)
    x.flush()
    return np.load(path, mmap_mode="r")


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def p50_ms(search, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q.reshape(1, -1), k)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def bench_ivfpq(folder: Path, x: np.ndarray, q: np.ndarray, truth: np.ndarray, lat: np.ndarray, a) -> dict:
    n = len(x)
    nlist = a.nlist or auto_nlist(n)
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    sample = np.asarray(x[np.sort(rng.choice(n, min(n, max(a.train, 39 * nlist)), replace=False))])
    trained = train_ivfpq(sample, nlist, a.pq_m)
    del sample
    t_train = time.perf_counter() - t0
    shards = encode_shards(trained, x, a.shard, workers=a.workers)
    t_enc = time.perf_counter() - t0 - t_train
    sizes = write_ivfpq(folder, trained, shards, None)
    del shards
    build = time.perf_counter() - t0
    log(f"ivfpq nlist={nlist} m={a.pq_m}: train {t_train:.1f}s encode {t_enc:.1f}s "
        f"merge {build - t_train - t_enc:.1f}s")
    idx = read_ivfpq(folder)
    sweep = []
    for nprobe in a.nprobe:
        for rk in a.refine:
            idx.set_nprobe(nprobe)
            idx.refine_k = rk
            _, found = idx.search(q, 10)
            p50, p99 = p50_ms(idx.search, lat)
            sweep.append({"nprobe": nprobe, "refine_k": rk, "recall@10": round(recall(found, truth), 4),
                          "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)})
            log("ivfpq", sweep[-1])
    best = pick(sweep)
    total = sum(sizes.values())
    return {**best, "bytes_per_vector": round(total / n, 1), "build_s": round(build, 1),
            "train_s": round(t_train, 1), "encode_s": round(t_enc, 1), "nlist": int(trained.nlist),
            "pq_m": a.pq_m, "train_vectors": int(min(n, max(a.train, 39 * nlist))), "shards": -(-n // a.shard),
            "workers": a.workers, "files": sizes,
            "codes_bytes_per_vector": round(sizes[IVF_DATA] / n, 1),
            "rerank_bytes_per_vector": round(sizes[VECTORS] / n, 1),
            "note": "build_s: train + encode shards + on-disk merge; the re-rank vectors were generated in "
                    "place (the pipeline writes them once, from the embedding store)", "sweep": sweep}


def bench_hnsw(folder: Path, x: np.ndarray, q: np.ndarray, truth: np.ndarray, lat: np.ndarray, a) -> dict:
    n = len(x)
    index = faiss.IndexHNSWFlat(DIM, a.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = a.ef_construction
    t0 = time.perf_counter()
    for s in range(0, n, 100_000):
        if time.perf_counter() - t0 > a.hnsw_budget_s:
            log(f"hnsw: build budget spent after {s:,} vectors")
            return {"unfinished": True, "added": s, "build_s_so_far": round(time.perf_counter() - t0, 1),
                    "hnsw_m": a.hnsw_m, "ef_construction": a.ef_construction}
        index.add(np.ascontiguousarray(x[s:s + 100_000]))
        log(f"hnsw added {min(n, s + 100_000):,} at {time.perf_counter() - t0:.0f}s")
    build = time.perf_counter() - t0
    sweep = []
    for ef in a.ef_search:
        index.hnsw.efSearch = ef
        _, found = index.search(q, 10)
        p50, p99 = p50_ms(index.search, lat)
        sweep.append({"ef_search": ef, "recall@10": round(recall(found, truth), 4), "p50_ms": round(p50, 3),
                      "p99_ms": round(p99, 3)})
        log("hnsw", sweep[-1])
    path = folder / "hnsw.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return {**pick(sweep), "bytes_per_vector": round(size / n, 1), "build_s": round(build, 1), "hnsw_m": a.hnsw_m,
            "ef_construction": a.ef_construction, "sweep": sweep}


def pick(sweep: list[dict]) -> dict:
    """The fastest setting that reaches recall@10 ≥ 0.95 (else the most accurate one)."""
    ok = [s for s in sweep if s["recall@10"] >= 0.95]
    best = min(ok, key=lambda s: s["p50_ms"]) if ok else max(sweep, key=lambda s: s["recall@10"])
    return {k: v for k, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=2_000_000)
    ap.add_argument("--queries", type=int, default=1000, help="recall queries")
    ap.add_argument("--latency-queries", type=int, default=300, help="one-at-a-time queries for p50/p99")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="ivfpq,hnsw")
    ap.add_argument("--nlist", type=int, default=None, help="default: about sqrt(N), a power of two")
    ap.add_argument("--pq-m", type=int, default=48)
    ap.add_argument("--train", type=int, default=40_000, help="vectors the quantizer trains on (≥ 39·nlist)")
    ap.add_argument("--shard", type=int, default=250_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16, 32, 64])
    ap.add_argument("--refine", type=lambda s: [int(v) for v in s.split(",")], default=[50, 100, 200])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64, 128, 256])
    ap.add_argument("--hnsw-budget-s", type=float, default=float("inf"),
                    help="stop the HNSW build (reported unfinished) once it has run this long")
    ap.add_argument("--real", default=REAL, help="parquet files whose pooled vectors seed the corpus")
    ap.add_argument("--dir", default="/tmp", help="where the index files go (removed at the end)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="splice the figures into BENCHMARKS.md")
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args()
    if a.render_only:
        splice(BENCHMARKS_MD, render(read_last_run("scale"), *_kept()), START, END)
        return
    faiss.omp_set_num_threads(a.threads)
    folder = Path(tempfile.mkdtemp(prefix="ss-scale-", dir=a.dir))
    try:
        res = run(a, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_last_run("scale", res)
    if a.markdown:
        splice(BENCHMARKS_MD, render(res, *_kept()), START, END)
    if a.json:
        print(json.dumps(res))
    else:
        print(render(res))


def run(a, folder: Path) -> dict:
    load0 = os.getloadavg()
    gen = Generator(real_vectors(a.real))
    t0 = time.perf_counter()
    x = fill(folder / VECTORS, gen, a.vectors, seed=2)
    rng = np.random.default_rng(3)
    q = gen.draw(a.queries, rng)
    lat = q[: a.latency_queries]
    log(f"corpus {a.vectors:,} x {DIM} in {time.perf_counter() - t0:.0f}s ({gen.kind})")
    t0 = time.perf_counter()
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_batch = time.perf_counter() - t0
    exact_p50, _ = p50_ms(lambda v, k: faiss.knn(v, x, k, metric=faiss.METRIC_INNER_PRODUCT), lat[:20])
    sib = x[: 2000] @ x[2000: 4000].T  # unrelated pairs, for scale
    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "command": "nice -n 5 .venv/bin/python benchmarks/"
           + " ".join(["scale.py", *sys.argv[1:]]), "vectors": a.vectors, "dim": DIM,
           "threads": a.threads, "cpus": os.cpu_count(), "queries": a.queries, "latency_queries": len(lat),
           "corpus": {"kind": gen.kind, "noise_scale": round(gen.scale, 4), "target_nn_cos": round(gen.nn_cos, 3),
                      "nn_cos_median": round(float(np.median(_top1(q[:200], x))), 3),
                      "random_pair_cos_median": round(float(np.median(sib)), 3)},
           "exact": {"p50_ms": round(exact_p50, 1), "batch_s": round(exact_batch, 1),
                     "bytes_per_vector": DIM * 4}}
    log("exact", res["exact"], res["corpus"])
    kinds = a.kinds.split(",")
    if "ivfpq" in kinds:
        res["ivfpq"] = bench_ivfpq(folder, x, q, truth, lat, a)
        write_last_run("scale", res)  # kept if the HNSW build does not finish
        for f in (IVF_INDEX, IVF_DATA, IVF_TRAINED):
            (folder / f).unlink(missing_ok=True)
    if "hnsw" in kinds:
        res["hnsw"] = bench_hnsw(folder, x, q, truth, lat, a)
    res["loadavg"] = {"start": [round(v, 2) for v in load0], "end": [round(v, 2) for v in os.getloadavg()]}
    return res


def _kept() -> list[dict]:
    """Smaller runs kept beside the main one (benchmarks/scale_200k_last_run.json: the development run)."""
    p = Path(__file__).with_name("scale_200k_last_run.json")
    return [json.loads(p.read_text())] if p.is_file() else []


def _top1(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    d, _ = faiss.knn(q, x, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return d[:, 0]


def render(r: dict, *others: dict) -> str:
    """The section: this run, then any other runs kept beside it (e.g. the 200 k development run)."""
    body = _block(r)
    for o in others:
        body += ["", *_block(o)]
    return "\n".join([START, "## Indexes at scale", "", *body, END])


def _block(r: dict) -> list[str]:
    rows = []
    for kind, label in (("ivfpq", "IVF-PQ + exact re-rank"), ("hnsw", "HNSW (flat storage)")):
        if kind not in r:
            continue
        v = r[kind]
        if v.get("unfinished"):
            rows.append(f"| {label} | M {v['hnsw_m']}, efConstruction {v['ef_construction']} | not finished: "
                        f"{v['added']:,} vectors added in {v['build_s_so_far']} s | | | | |")
            continue
        params = (f"nlist {v['nlist']}, m {v['pq_m']}, nprobe {v['nprobe']}, refine {v['refine_k']}"
                  if kind == "ivfpq" else f"M {v['hnsw_m']}, efConstruction {v['ef_construction']}, "
                                          f"efSearch {v['ef_search']}")
        rows.append(f"| {label} | {params} | {v['build_s']} | {v['bytes_per_vector']} | {v['recall@10']:.4f} | "
                    f"{v['p50_ms']:.2f} | {v['p99_ms']:.2f} |")
    sweeps = []
    for kind in ("ivfpq", "hnsw"):
        for s in r.get(kind, {}).get("sweep", []):
            knob = (f"nprobe {s['nprobe']}, refine {s['refine_k']}" if kind == "ivfpq"
                    else f"efSearch {s['ef_search']}")
            sweeps.append(f"| {kind} | {knob} | {s['recall@10']:.4f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |")
    c = r["corpus"]
    cmd = r.get("command") or f"nice -n 5 .venv/bin/python benchmarks/scale.py --vectors {r['vectors']}"
    return [
        f"### {r['vectors']:,} vectors × {r['dim']} ({r['date']})", "",
        f"`{cmd}`; faiss on "
        f"{r['threads']} OpenMP threads ({r['cpus']} cores, shared); load average {r['loadavg']['start']} at the "
        f"start, {r['loadavg']['end']} at the end. Corpus: {c['kind']} (noise scale {c['noise_scale']}: a "
        f"query's nearest vector has median cosine {c['nn_cos_median']}, unrelated pairs {c['random_pair_cos_median']}"
        f"; real chunks' nearest-neighbour median {c['target_nn_cos']}). {r['queries']} held-out queries for "
        f"recall@10 against exact search; p50/p99 over {r['latency_queries']} queries one at a time. Exact "
        f"search for comparison: one query {r['exact']['p50_ms']} ms p50, {r['exact']['bytes_per_vector']} "
        "bytes per vector.", "",
        "| index | parameters (chosen: fastest with recall@10 ≥ 0.95) | build s | bytes / vector | recall@10 | "
        "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|", *rows, "",
        "Every setting measured:", "", "| index | setting | recall@10 | p50 ms | p99 ms |", "|---|---|---|---|---|",
        *sweeps, *(["", r["notes"]] if r.get("notes") else [])]


if __name__ == "__main__":
    main()
