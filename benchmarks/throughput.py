"""Indexing throughput: the whole `sidestep reindex` of SciFact (or a subset) per encoder backend, against
the bare `SentenceTransformer.encode` on the same chunk texts, measured in this run; and the dense
recall quality of each backend's vectors.

Phases, all in one run:
1. the corpus: SciFact whole (`--docs 0`) or a subset of `--docs N` documents (every document judged
   relevant to a test query, then others drawn with a fixed seed), written as a BEIR folder;
2. for each `--backends` entry (torch, onnx, onnx-int8), `sidestep --config C reindex --json` in a
   fresh data root (process start, Prefect, ingest, chunk, embed, index, publish): wall and CPU seconds,
   documents/s, and the embed stage's own docs/s and tokens/s as `reindex --json` reports them;
3. the bare encoder (`SentenceTransformer.encode`, batch 32, model loaded and warmed first) on the
   exact chunk texts the pipeline encoded (from the first root's published chunk table);
4. quality, in process: SciFact test queries (those with a judged document in the corpus) encoded
   once with the torch encoder, exact inner-product search (faiss IndexFlatIP) over each backend's
   stored chunk vectors, a document scoring as its best chunk, nDCG@10 by sidestep/eval/metrics.py;
   the torch vectors come from the torch root, or from `--torch-root` (a data root whose store holds
   SciFact's torch vectors; only read). Also the cosine of each backend's chunk vectors and token
   vectors with the torch ones.

Writes benchmarks/throughput_last_run.json. Usage:
  nice -n 5 .venv/bin/python benchmarks/throughput.py --docs 700 --backends onnx-int8,onnx --torch-root R
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import BENCH_DIR, DATA, bench_env, sh

BACKENDS = {"torch": 'backend = "torch"', "onnx": 'backend = "onnx"',
            "onnx-int8": 'backend = "onnx"\nquantize = "int8"'}


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def subset(src: Path, dst: Path, n: int, seed: int = 0) -> int:
    """A BEIR folder at dst with n documents of src (0: all): the test-judged ones first."""
    dst.mkdir(parents=True)
    lines = (src / "corpus.jsonl").read_text().splitlines()
    (dst / "qrels").mkdir()
    shutil.copy(src / "queries.jsonl", dst / "queries.jsonl")
    qrels = (src / "qrels" / "test.tsv").read_text().splitlines()
    if n <= 0 or n >= len(lines):
        chosen = lines
    else:
        judged = {r.split("\t")[1] for r in qrels[1:]}
        ids = [json.loads(x)["_id"] for x in lines]
        keep = [i for i, d in enumerate(ids) if d in judged]
        rest = [i for i in range(len(ids)) if ids[i] not in judged]
        random.Random(seed).shuffle(rest)
        keep = sorted(keep + rest[:max(0, n - len(keep))])
        chosen = [lines[i] for i in keep]
    (dst / "corpus.jsonl").write_text("\n".join(chosen) + "\n")
    (dst / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return len(chosen)


def reindex(work: Path, corpus: Path, backend: str) -> dict:
    root = work / f"root-{backend}"
    root.mkdir()
    cfg = root / "bench.toml"
    cfg.write_text(f'[[sources]]\ndomain = "scifact"\npath = "{corpus}"\nformat = "beir"\n\n'
                   f'[encoder]\n{BACKENDS[backend]}\n')
    env = bench_env(root, prefect_home=root / "prefect", quiet=True, SIDESTEP_NO_PROGRESS="1",
                    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600")
    before = load()
    out, wall, peak, cpu = sh(["--config", str(cfg), "reindex", "--json"], env)
    emb = out["domains"]["scifact"]["embed"]
    dom = out["domains"]["scifact"]
    # wall seconds of each stage as the run reports them; the rest of wall_s is process start, Prefect and ingest
    stages = {"embed": emb.get("seconds"), "summarize": (dom.get("summarize") or {}).get("seconds"),
              "publish": (dom.get("index") or {}).get("seconds"),
              "ranker_choice": (dom.get("ranker") or {}).get("seconds")}
    return {"root": str(root), "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "documents": emb["documents"],
            "docs_per_s": emb["documents"] / wall, "embed": emb, "stage_s": stages, "load_before": before,
            "load_after": load()}


def chunk_texts(root: Path) -> list[str]:
    import pyarrow.parquet as pq

    from sidestep.storage.artifacts import IndexStore
    from sidestep.storage.documents import DocumentStore
    from sidestep.storage.paths import DataRoot
    from sidestep.text.encoder import doc_text

    dr = DataRoot(root)
    store = IndexStore(dr)
    chunks = pq.read_table(store.path("scifact", store.current("scifact")) / "chunks.parquet",
                           columns=["doc_id", "char_start", "char_end"]).to_pylist()
    docs = {d["doc_id"]: doc_text(d["title"], d["text"])
            for d in DocumentStore(dr).read("scifact", include_deleted=False).to_pylist()}
    return [docs[c["doc_id"]][c["char_start"]:c["char_end"]] for c in chunks]


def bare(texts: list[str]) -> dict:
    from sidestep.text.encoder import Encoder

    st = Encoder().st
    st.encode(texts[:64], batch_size=32)  # warm-up
    before = load()
    t0, c0 = time.perf_counter(), time.process_time()
    st.encode(texts, batch_size=32)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "chunks": len(texts),
            "load_before": before, "load_after": load()}


def vectors(root: Path, key: str, hashes: dict[str, str]) -> tuple[list[str], np.ndarray, dict]:
    """doc id per chunk, chunk vectors, and (content_hash, chunk_idx) -> (shard, token offset, n_tokens)."""
    from sidestep.storage.embeddings import EmbeddingStore
    from sidestep.storage.paths import DataRoot

    store = EmbeddingStore(DataRoot(root), key, 384)
    rows, pooled = store.gather(hashes.values())
    by_hash = {h: d for d, h in hashes.items()}
    t = rows.to_pydict()
    where = {(h, c): (s, o, n) for h, c, s, o, n in zip(t["content_hash"], t["chunk_idx"], t["shard"],
                                                        t["token_offset"], t["n_tokens"], strict=True)}
    order = np.lexsort((np.array(t["chunk_idx"]), np.array(t["content_hash"])))
    return [by_hash[t["content_hash"][i]] for i in order], pooled[order], {"store": store, "where": where,
                                                                           "keys": [(t["content_hash"][i],
                                                                                     t["chunk_idx"][i])
                                                                                    for i in order]}


def dense_ndcg(doc_of_chunk: list[str], vecs: np.ndarray, q: np.ndarray, qids: list[str], qrels: dict) -> float:
    import faiss

    from sidestep.eval.metrics import mean_ndcg

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    scores, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), min(400, len(vecs)))
    run = {}
    for qi, qid in enumerate(qids):
        best: dict[str, float] = {}
        for s, i in zip(scores[qi], idx[qi], strict=True):
            if i >= 0:
                d = doc_of_chunk[i]
                best[d] = max(best.get(d, -1e9), float(s))
        run[qid] = best
    return mean_ndcg(run, qrels, 10)


def quality(corpus: Path, roots: dict[str, Path], torch_root: Path | None) -> dict:
    from sidestep.eval.beir import load_qrels, load_queries
    from sidestep.storage.documents import DocumentStore
    from sidestep.storage.paths import DataRoot
    from sidestep.text.encoder import Encoder, encoder_key

    first = next(iter(roots.values()))
    docs = DocumentStore(DataRoot(first)).read("scifact", include_deleted=False).to_pydict()
    hashes = dict(zip(docs["doc_id"], docs["content_hash"], strict=True))
    qrels = {q: {d: g for d, g in r.items() if d in hashes} for q, r in load_qrels(corpus, "test").items()}
    qrels = {q: r for q, r in qrels.items() if any(g > 0 for g in r.values())}
    queries = load_queries(corpus, split="test")
    qids = [q for q in queries if q in qrels]
    qv = Encoder().encode_queries([queries[q] for q in qids])
    sources = dict(roots)
    if "torch" not in sources and torch_root is not None:
        sources["torch"] = torch_root
    out: dict = {"queries": len(qids)}
    loaded = {}
    for name, root in sources.items():
        key = encoder_key(None, "int8" if name == "onnx-int8" else "none")
        doc_of, vecs, meta = vectors(root, key, hashes)
        loaded[name] = (vecs, meta)
        out[name] = {"dense_ndcg@10": round(dense_ndcg(doc_of, vecs, qv, qids, qrels), 4), "chunks": len(vecs)}
    if "torch" in loaded:
        ref, rmeta = loaded["torch"]
        for name, (vecs, meta) in loaded.items():
            if name == "torch" or vecs.shape != ref.shape:
                continue
            cos = (vecs * ref).sum(1)
            out[name]["chunk_cos_min"], out[name]["chunk_cos_mean"] = float(cos.min()), float(cos.mean())
            out[name]["chunk_max_abs_diff"] = float(np.abs(vecs - ref).max())
            out[name]["token_cos_mean"] = token_cos(meta, rmeta)
    return out


def token_cos(a: dict, b: dict, n: int = 300) -> float:
    """Mean cosine of the token vectors of the first n chunks, stored by two backends."""
    sims = []
    for k in a["keys"][:n]:
        (sa, oa, na), (sb, ob, nb) = a["where"][k], b["where"][k]
        ta = np.asarray(a["store"].tokens(sa)[oa:oa + na], np.float32)
        tb = np.asarray(b["store"].tokens(sb)[ob:ob + nb], np.float32)
        sims.append(((ta * tb).sum(1) / (np.linalg.norm(ta, axis=1) * np.linalg.norm(tb, axis=1))).mean())
    return float(np.mean(sims))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--docs", type=int, default=700, help="SciFact documents (0: all 5,183)")
    ap.add_argument("--backends", default="onnx-int8,onnx", help=f"comma-separated, of {sorted(BACKENDS)}")
    ap.add_argument("--torch-root", help="a data root holding SciFact's torch vectors (read only)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if unknown := set(backends) - set(BACKENDS):
        raise SystemExit(f"unknown backends {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="ssthr-", dir="/tmp"))
    os.environ.update({"SIDESTEP_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    res: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
                 "docs_requested": args.docs}
    corpus = work / "scifact"
    res["documents"] = subset(Path(args.data) / "scifact", corpus, args.docs)
    res["reindex"] = {}
    for b in backends:
        print(f"reindex ({b}) of {res['documents']} documents ...", flush=True)
        res["reindex"][b] = reindex(work, corpus, b)
        print(json.dumps({k: v for k, v in res["reindex"][b].items() if k != "embed"}), flush=True)
    print("bare SentenceTransformer.encode on the same chunk texts ...", flush=True)
    res["bare"] = bare(chunk_texts(Path(res["reindex"][backends[0]]["root"])))
    res["bare"]["docs_per_s"] = res["documents"] / res["bare"]["wall_s"]
    for r in res["reindex"].values():
        r["vs_bare_wall"] = r["docs_per_s"] / res["bare"]["docs_per_s"]
        r["vs_bare_cpu"] = res["bare"]["cpu_s"] / r["cpu_s"]
    print(json.dumps(res["bare"]), flush=True)
    print("quality ...", flush=True)
    roots = {b: Path(r["root"]) for b, r in res["reindex"].items()}
    res["quality"] = quality(corpus, roots, Path(args.torch_root) if args.torch_root else None)
    res["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    (BENCH_DIR / "throughput_last_run.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({"reindex": {b: {k: r[k] for k in ("docs_per_s", "vs_bare_wall", "vs_bare_cpu")}
                                  for b, r in res["reindex"].items()}, "quality": res["quality"]}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
