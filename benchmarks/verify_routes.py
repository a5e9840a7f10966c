"""Routes to a larger SciFact verify gain, each measured beside the control that would share its gain.

The verifier's SciFact test nDCG@10 sits about 0.01 above MaxSim reranking the same candidates. This run
asks whether three cheap additions widen that margin or only lift every reranker alike:
- seeds: the verifier trained with two seeds, each alone and their z-scored mean;
- document tables: SciFact's lookup-table document vectors (sidestep.rec.doctables), fine-tuned on the training
  queries the verifier trains on (its held-out queries excluded), z-scored and added to a reranker's
  z-scored scores with a weight tuned on the held-out training queries; the same table added to pooled
  cosine and to MaxSim is the control, and a table fine-tuned on codes shuffled across documents the
  second one (it can only learn document identity, not code semantics);
- hybrid recall: BM25's top K added to dense recall's top 100 (pooled cosine of their best chunk as their
  recall score), reranked by MaxSim and by the verifiers trained on dense lists.
Every figure is SciFact test (300 queries, full ideal from qrels/test.tsv, ir_measures); no choice reads it.
The verifiers here have no query adapter (sidestep.verify.adapter; `adapter_epochs` 0): this section measured
the verifier over the raw maps, before the adapter existed, and a rerun keeps it so.

Usage: .venv/bin/python benchmarks/verify_routes.py [--data ../shared/data] [--root ROOT] [--seeds 0 1]
       [--render-only JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import BENCHMARKS_MD, DATA, bench_env, machine, sh, splice, write_last_run

from sidestep.config import load_settings
from sidestep.eval.beir import load_qrels, load_queries
from sidestep.eval.metrics import mean_ndcg
from sidestep.rec.doctables import DocTableConfig, DocTables, table_scores, train_doc_tables
from sidestep.rec.quantize import CodebookSpec, fit_codebook, shuffled_codes
from sidestep.storage.documents import DocumentStore
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import doc_text
from sidestep.text.lexical import BM25
from sidestep.verify.candidates import (
    VERIFY_TOP_CHOICES,
    cascade,
    prepare,
    prescore,
    query_piece_ids,
    query_tokens,
)
from sidestep.verify.model import VerifierConfig, choose_verify_top, fit, score

START, END = "<!-- verify-routes:start -->", "<!-- verify-routes:end -->"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
HYBRID_K = 20


def _z(x):
    x = np.asarray(x, np.float64)
    s = x.std()
    return (x - x.mean()) / (s if s > 0 else 1.0)


def ndcg10(lists: dict[str, list[str]], scores: dict[str, object], qrels: dict[str, dict[str, int]]) -> float:
    """Mean nDCG@10 of each query's candidates ranked by its scores (trec_eval's, as ir_measures computes it;
    ideal from all of qrels), over every query with a list, to 4 decimals."""
    run = {q: {d: float(s) for d, s in zip(lists[q], scores[q], strict=True)} for q in lists}
    judged = {q: {d: int(g) for d, g in qrels.get(q, {}).items()} for q in lists}
    return round(mean_ndcg(run, judged, 10), 4)


def query_lists(lists, settings, qids: list[str], texts: dict[str, str], bm25, extra_k: int) -> dict:
    """Dense recall's top `candidates` (plus BM25's top extra_k it missed) with their token-map Candidates."""

    corpus, view, enc = lists.corpus, lists.view, lists.encoder
    cap = VerifierConfig().max_query_tokens
    pooled, qtoks = enc.encode_queries_with_tokens([texts[q] for q in qids])
    qpieces = enc.query_ids([texts[q] for q in qids])
    hits = corpus.searcher.search(pooled, settings.verify.candidates)
    lex = bm25.search([texts[q] for q in qids], extra_k) if extra_k else [[] for _ in qids]
    out = {}
    for j, q in enumerate(qids):
        ids = [h.doc_id for h in hits[j]]
        rec = [h.score for h in hits[j]]
        extra = [d for d, _ in lex[j] if d not in set(ids) and d in corpus.searcher.rows_by_doc and d in view.pieces]
        rec += corpus.searcher.best_chunk_scores(pooled[j], extra)
        ids += extra
        c = prepare(query_tokens(qtoks[j], cap), query_piece_ids(qpieces[j], cap), view.source.docs(ids),
                    [view.pieces[d] for d in ids], view.idf, np.asarray(rec, np.float32),
                    settings.verify.max_doc_tokens)
        out[q] = (ids, c)
    return out


def measure(root: Path, data: Path, seeds: list[int], log=print) -> dict:
    from sidestep.pipeline.rec import load_items
    from sidestep.pipeline.verifier import training_lists

    scifact = str(data / "scifact")
    settings = load_settings(None)
    # the routes were measured on the verifier without its query adapter: every list here is built from the
    # raw query tokens, so the verifiers read the maps MaxSim reads
    settings = settings.model_copy(update={"verify": settings.verify.model_copy(update={"adapter_epochs": 0})})
    v = settings.verify
    dr = DataRoot(root)
    lists = training_lists(dr, settings, scifact, "scifact", seed=0, log=log)
    models, fits = {}, {}
    for s in seeds:
        t0 = time.perf_counter()
        model, curve = fit(lists.examples + lists.pseudo, lists.val, VerifierConfig(), lists.encoder.dim,
                           epochs=v.epochs, near_miss_weight=v.near_miss_weight, seed=s, patience=v.patience, log=log)
        # as the train_verifier flow chooses it: never more of the list than the model trained on
        top, _ = choose_verify_top(model, lists.val, choices=[k for k in VERIFY_TOP_CHOICES
                                                              if not v.train_top or k <= v.train_top])
        models[s] = (model, top)
        fits[str(s)] = {"seconds": round(time.perf_counter() - t0), "verify_top": top,
                        "val_ndcg10": round(max(c["val_ndcg10"] for c in curve), 4)}
        log(f"seed {s}: {fits[str(s)]}")
    queries = {**load_queries(scifact, split="train"), **load_queries(scifact, split="test")}
    qrels = {"val": load_qrels(scifact, "train"), "test": load_qrels(scifact, "test")}
    split_q = {"val": lists.val_qids, "test": list(load_queries(scifact, split="test"))}
    docs = DocumentStore(dr).read("scifact", include_deleted=False)
    bm25 = BM25(docs["doc_id"].to_pylist(), [doc_text(t or "", x) for t, x in zip(
        docs["title"].to_pylist(), docs["text"].to_pylist(), strict=True)])
    # document tables: fine-tuned on the non-held-out training queries only, as the verifier is
    items = load_items(dr, settings, "scifact")
    at = {d: i for i, d in enumerate(items.ids)}
    book = fit_codebook(items.vectors, CodebookSpec(positions=32, bits=8, seed=0))
    codes = book.encode(items.vectors).astype(np.int64)
    fit_q = [q for q in lists.fit_qids if any(g > 0 and d in at for d, g in qrels["val"].get(q, {}).items())]
    pairs = [(i, at[d]) for i, q in enumerate(fit_q) for d, g in qrels["val"][q].items() if g > 0 and d in at]
    qv = lists.encoder.encode_queries([queries[q] for q in fit_q])
    tables = {}
    for name, c in (("table", codes), ("shuffled_table", shuffled_codes(codes, 0))):
        t0 = time.perf_counter()
        tab = DocTables(book.table_init())
        train_doc_tables(tab, torch.from_numpy(c), qv, pairs, DocTableConfig(seed=0))
        tables[name] = (tab, torch.from_numpy(c))
        log(f"{name}: {len(pairs)} pairs from {len(fit_q)} queries, {time.perf_counter() - t0:.0f} s")
    out: dict = {"fits": fits, "table_pairs": len(pairs), "table_queries": len(fit_q), "hybrid_k": HYBRID_K,
                 "val_queries": len(split_q["val"]), "test_queries": len(split_q["test"])}
    for kind, extra_k in (("dense", 0), ("hybrid", HYBRID_K)):
        base: dict[str, dict[str, dict]] = {}  # split -> reranker -> qid -> scores
        ql = {}
        for split in ("val", "test"):
            ql[split] = query_lists(lists, settings, split_q[split], queries, bm25, extra_k)
            per: dict[str, dict] = {"pooled_cosine": {}, "maxsim": {}, "prescore": {}}
            for q, (_, c) in ql[split].items():
                per["pooled_cosine"][q] = c.glob[:, 0].numpy()
                per["maxsim"][q] = c.maxsim.numpy()
                per["prescore"][q] = prescore(c.glob).numpy()
            for s, (model, top) in models.items():
                with torch.inference_mode():
                    sc = score(model, [c for _, c in ql[split].values()])
                per[f"verifier_seed{s}"] = {q: cascade(prescore(c.glob), x, top)
                                            for (q, (_, c)), x in zip(ql[split].items(), sc, strict=True)}
            if len(models) > 1:
                per["verifier_seed_mean"] = {q: np.mean([_z(per[f"verifier_seed{s}"][q]) for s in models], 0)
                                             for q in ql[split]}
            base[split] = per
        ids = {split: {q: i for q, (i, _) in ql[split].items()} for split in ql}
        rows = {name: {"test": ndcg10(ids["test"], per_q, qrels["test"])} for name, per_q in base["test"].items()}
        hits = sum(sum(qrels["test"][q].get(d, 0) > 0 for d in i) for q, i in ids["test"].items())
        rows["_candidate_recall"] = round(hits / sum(sum(g > 0 for g in qrels["test"][q].values())
                                                     for q in ids["test"]), 4)
        if kind == "dense":
            for tname, (tab, ct) in tables.items():
                tsc = {}
                for split in ("val", "test"):
                    qs = list(ids[split])
                    full = table_scores(tab, ct, lists.encoder.encode_queries([queries[q] for q in qs]))
                    tsc[split] = {q: full[k, [at[d] for d in ids[split][q]]] for k, q in enumerate(qs)}
                for name in base["test"]:
                    curve = {split: [ndcg10(ids[split], {q: _z(base[split][name][q]) + w * _z(tsc[split][q])
                                                         for q in ids[split]}, qrels[split]) for w in WEIGHTS]
                             for split in ("val", "test")}
                    best = max(range(len(WEIGHTS)), key=lambda k: (curve["val"][k], -k))
                    rows[f"{name} + {tname}"] = {"weight": WEIGHTS[best], "test": curve["test"][best],
                                                 "val": curve["val"][best], "test_by_weight": curve["test"]}
        out[kind] = rows
        log(f"{kind}: " + json.dumps({k: (r["test"] if isinstance(r, dict) else r) for k, r in rows.items()}))
    return out


def render(r: dict, note: str) -> str:
    dense, hybrid = r["dense"], r["hybrid"]
    seeds = sorted(r["fits"])
    lines = [START, "### Routes to a wider SciFact margin, each beside its control (`benchmarks/verify_routes.py`)", "",
             f"Run {r['date']} on {r['machine']}{'; ' + note if note else ''}. One data root, the SciFact index of "
             f"`sidestep eval` with the defaults; verifiers trained as `sidestep eval` trained them before the query "
             f"adapter existed (no adapter: the raw maps MaxSim reads; float16 maps, "
             f"{r['val_queries']} held-out training queries), seeds {', '.join(seeds)} "
             f"(validation nDCG@10 {', '.join(str(r['fits'][s]['val_ndcg10']) for s in seeds)}; verify_top "
             f"{', '.join(str(r['fits'][s]['verify_top']) for s in seeds)}; "
             f"{', '.join(str(r['fits'][s]['seconds']) for s in seeds)} s). SciFact test, "
             f"{r['test_queries']} queries, nDCG@10; every weight chosen on the held-out training queries.", "",
             "| reranker | dense top-100 | + document table (weight) | + shuffled-codes table (weight) "
             f"| hybrid: + BM25 top-{r['hybrid_k']} |", "|---|---|---|---|---|"]
    for name in dense:
        if name.startswith("_") or " + " in name:
            continue
        t, s = dense[f"{name} + table"], dense[f"{name} + shuffled_table"]
        lines.append(f"| {name} | {dense[name]['test']:.4f} | {t['test']:.4f} ({t['weight']:g}) "
                     f"| {s['test']:.4f} ({s['weight']:g}) | {hybrid[name]['test']:.4f} |")
    lines.append(f"| relevant documents among the candidates | {dense['_candidate_recall']:.4f} | | "
                 f"| {hybrid['_candidate_recall']:.4f} |")
    best = "verifier_seed_mean" if "verifier_seed_mean" in dense else f"verifier_seed{seeds[0]}"
    cols = [(dense[best]["test"], dense["maxsim"]["test"]),
            (dense[f"{best} + table"]["test"], dense["maxsim + table"]["test"]),
            (dense[f"{best} + shuffled_table"]["test"], dense["maxsim + shuffled_table"]["test"]),
            (hybrid[best]["test"], hybrid["maxsim"]["test"])]
    lines.append(f"| **{best} minus maxsim** | " + " | ".join(f"**{a - b:+.4f}**" for a, b in cols) + " |")
    lines += ["", "prescore is the unweighted sum of four z-scores (dense cosine, MaxSim, idf-weighted MaxSim, BM25 "
              "over the word pieces) that the verify stage ranks by before the model reads its top; verifier rows are "
              "scored as served (the model reads the pre-score top verify_top, the rest follow). verifier_seed_mean "
              "is the mean of the seeds' z-scored scores.",
              "", f"The tables are fine-tuned on {r['table_pairs']} pairs of {r['table_queries']} training queries; "
              "the test curve over weights " + ", ".join(f"{w:g}" for w in WEIGHTS) + " is in "
              "`benchmarks/verify_routes_last_run.json`.", END, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--root", help="a data root whose SciFact index `sidestep eval` has published (else built)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    ap.add_argument("--render-only", help="a finished run's JSON: only rewrite the BENCHMARKS.md section")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions")
    args = ap.parse_args()
    if args.render_only:
        r = json.loads(Path(args.render_only).read_text())
    else:
        data = Path(args.data).resolve()
        root = Path(args.root or tempfile.mkdtemp(prefix="ssb-routes-", dir="/tmp")).resolve()
        env = bench_env(root, prefect_home=root / "prefect")
        env.pop("SIDESTEP_CONFIG", None)
        os.environ.update(env)
        os.environ.pop("SIDESTEP_CONFIG", None)
        if not (root / "indexes" / "scifact").is_dir():
            sh(["eval", str(data / "scifact"), "--domain", "scifact", "--no-verify", "--json"], env)
        t0 = time.perf_counter()
        r = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "root": str(root),
             **measure(root, data, args.seeds, log=lambda m: print(f"[{datetime.now(UTC):%H:%M:%S}] {m}", flush=True))}
        r["seconds"] = round(time.perf_counter() - t0)
        write_last_run("verify_routes", r)
    splice(Path(args.out), render(r, args.note), START, END)


if __name__ == "__main__":
    main()
