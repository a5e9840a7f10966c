"""Leave-one-corpus-out: the general verifier trained without a corpus's judgments (its unlabelled text still gives
self-supervised lists, as in production), then evaluated on that corpus beside every untrained ranker of the same
run; the domain's adaptation from it (published only past its gate) evaluated the same way; the ranker the domain
would be served (the choice on its held-out self-supervised queries).

    python benchmarks/loco.py --root /tmp/x/root --corpus msmarco [--per-domain N] [--epochs N] [--near-misses N]
        [--ranker-queries N] [--out FILE]

Every budget left out is the configured default (verify.general_per_domain, epochs, near_misses, ranker_queries).

ROOT must hold SciFact (domain scifact) and msmarco-5k (domain msmarco) indexed (a copy of a benchmark root: nothing
is re-encoded); `--corpus antonym` indexes scifact-antonym into it. Writes benchmarks/loco_last_run.json, or
--out (one key per corpus, merged with earlier runs of the same file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sidestep.config import SourceConfig, default_settings
from sidestep.eval.beir import load_qrels
from sidestep.eval.metrics import ndcg
from sidestep.pipeline.adapt import adapt_domain
from sidestep.pipeline.common import encoder_for
from sidestep.pipeline.evaluate import evaluate_domain
from sidestep.pipeline.general import parse_labelled, train_general_verifier
from sidestep.pipeline.rankers import choose_ranker
from sidestep.retrieval.search import maxsim_rerank, rerank
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import GENERAL_DOMAIN, load_choice
from sidestep.storage.verifiers import load_verifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
OUT = Path(__file__).with_name("loco_last_run.json")
DIRS = {"scifact": DATA / "scifact", "msmarco": DATA / "msmarco-5k"}


RUN_OF = {"pooled_cosine": "pooled_cosine", "maxsim": "maxsim", "fusion": "rrf_bm25_dense"}


def served(res: dict) -> dict:
    """The test figure of what the domain would be served: its adapted verifier where one passed the gate, else
    the ranker chosen on its held-out self-supervised queries (the general verifier, or an untrained one)."""
    ev = res.get("eval_general")
    if ev is None:
        return {}
    if (res.get("adaptation") or {}).get("published") and "eval_adapted" in res:
        name, m, run = "verifier:adapted", res["eval_adapted"]["metrics"], "verifier"
        ev = res["eval_adapted"]
    elif res["choice"]["ranker"] in RUN_OF:
        name = res["choice"]["ranker"]
        run = RUN_OF[name]
        m = ev["baselines"][run]
    else:
        name, m, run = res["choice"]["ranker"], ev["metrics"], "verifier"
    out = {"ranker": name, "ndcg@10": m.get("ndcg@10")}
    if "no_overlap" in ev:
        out["no_overlap_ndcg@10"] = ev["no_overlap"][run]["ndcg@10"]
    return out


def no_overlap_ndcg(root: DataRoot, run_id: str, dataset: Path) -> dict:
    """nDCG@10 on the SciFact test claims none of whose relevant abstracts any training claim cites."""
    import duckdb

    train = load_qrels(str(dataset), "train")
    cited = {d for rels in train.values() for d, r in rels.items() if r > 0}
    test = load_qrels(str(dataset), "test")
    keep = [q for q, rels in test.items() if not ({d for d, r in rels.items() if r > 0} & cited)]
    con = duckdb.connect(str(root.eval_db()), read_only=True)
    rows = con.execute("SELECT query_id, doc_id, rank FROM run_results WHERE run_id = ? ORDER BY query_id, rank",
                       [run_id]).fetchall()
    con.close()
    ranked: dict[str, list[str]] = {}
    for q, d, _ in rows:
        ranked.setdefault(q, []).append(d)
    vals = [ndcg([test[q].get(d, 0) for d in ranked.get(q, [])[:10]], list(test[q].values())) for q in keep]
    return {"queries": len(keep), "ndcg@10": float(np.mean(vals)) if vals else None}


def antonym_probe(root: DataRoot, settings, verifiers: dict) -> dict:
    """Among recall's candidates from the probe corpus, does each scorer rank the constraint-satisfying
    document above the violating one?"""
    folder = DATA / "scifact-antonym"
    corpus = load_current(IndexStore(root), "antonym")
    view = load_token_view(root, settings, "antonym", corpus.version)
    enc = encoder_for(settings)
    qs = [json.loads(x) for x in (folder / "queries_antonym.jsonl").read_text().splitlines() if x.strip()]
    wins = {"pooled_cosine": 0, "maxsim": 0, **{k: 0 for k in verifiers}}
    pairs = 0
    for q in qs:
        pooled, toks = enc.encode_queries_with_tokens([q["query"]])
        pieces = enc.query_ids([q["query"]])[0]
        hits = corpus.searcher.search(pooled, settings.verify.candidates)[0]
        ids = [h.doc_id for h in hits]
        rec = np.asarray([h.score for h in hits], np.float32)
        ms, _ = maxsim_rerank(view, toks[0], ids, settings.verify.max_doc_tokens)
        by = {"pooled_cosine": rec, "maxsim": ms}
        for name, ver in verifiers.items():
            (by[name], _, _), = rerank(ver.model, [view], [toks[0]], [pieces], [ids], [rec],
                                       settings.verify.max_doc_tokens, settings.verify.verify_top)
        by = {n: dict(zip(ids, v, strict=True)) for n, v in by.items()}
        for sat in q["constraint_satisfying_doc_ids"]:
            for vio in q["constraint_violating_doc_ids"]:
                pairs += 1
                for name, sc in by.items():
                    wins[name] += sc.get(sat, -1e9) > sc.get(vio, -1e9)
    return {"queries": len(qs), "pairs": pairs, **{f"{k}_prefers_satisfying": v / pairs for k, v in wins.items()}}


def index_antonym(root: DataRoot, settings) -> None:
    from sidestep.pipeline.embed import embed_domain
    from sidestep.pipeline.index import publish_domain
    from sidestep.pipeline.ingest import ingest_source
    from sidestep.pipeline.summarize import summarize_domain

    src = SourceConfig(domain="antonym", path=str(DATA / "scifact-antonym" / "corpus_antonym.jsonl"), format="jsonl",
                       id_field="doc_id", title_field="title", text_field="text")
    ingest_source(root, src, max_text_bytes=settings.ingest.max_text_bytes)
    embed_domain(root, settings, "antonym", show_progress=False)
    summarize_domain(root, settings, "antonym")
    publish_domain(root, settings, "antonym")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--corpus", choices=["msmarco", "scifact", "antonym"], required=True)
    ap.add_argument("--per-domain", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--near-misses", type=int, default=None)
    ap.add_argument("--ranker-queries", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-adapt", action="store_true")
    ap.add_argument("--reuse-general", action="store_true",
                    help="use the general verifier already published (trained without this corpus's judgments)")
    ap.add_argument("--reuse-choice", action="store_true",
                    help="use the corpus's ranker choice already published (made with this general verifier offered)")
    a = ap.parse_args()
    s = default_settings()
    budgets = {"epochs": a.epochs, "near_misses": a.near_misses, "ranker_queries": a.ranker_queries,
               "general_per_domain": a.per_domain}
    s = s.model_copy(update={"verify": s.verify.model_copy(update={k: x for k, x in budgets.items() if x is not None})})
    root = DataRoot(Path(a.root))
    c = a.corpus
    t0 = time.perf_counter()
    res: dict = {"corpus": c, "args": vars(a), "budgets": {k: getattr(s.verify, k) for k in budgets},
                 "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    domains = ["scifact", "msmarco"]
    if c == "antonym" and IndexStore(root).current("antonym") is None:  # indexed once per root
        index_antonym(root, s)
    if c == "antonym":
        domains.append("antonym")
    labelled = [parse_labelled(f"{DIRS['scifact']}=scifact"), parse_labelled(f"{DIRS['msmarco']}=msmarco")]
    if a.reuse_general:
        m = load_verifier(root, GENERAL_DOMAIN)
        judged = {x["domain"] for x in m.manifest["sources"]["labelled"]}
        if c in judged:
            raise SystemExit(f"the published general verifier read {c}'s judgments")
        g = {"version": m.version, **m.manifest, "reused": True}
    else:
        g = train_general_verifier(root, s, labelled=labelled, domains=domains, leave_out=c)
    g.pop("self_supervised_positives", None)
    res["general"] = {k: g.get(k) for k in ("version", "seconds", "data_seconds", "train_lists", "val_queries",
                                            "val_ndcg10", "best_epoch", "sources", "leave_out", "reused")}
    choice = load_choice(root, c) if a.reuse_choice else None
    if choice is not None and (choice.get("learned_offered") or {}).get(f"verifier:{GENERAL_DOMAIN}") != g["version"]:
        raise SystemExit(f"{c}'s published ranker choice was not made with general verifier {g['version']}")
    if choice is None:
        choice = choose_ranker(root, s, c, force=True)
    res["choice"] = {k: choice.get(k) for k in ("ranker", "reason", "ndcg10", "queries", "over_dense_ci95",
                                                "learned_ci95", "kinds")}
    general = load_verifier(root, GENERAL_DOMAIN)
    verifiers = {"general": general}
    if not a.no_adapt:
        ad = adapt_domain(root, s, c, **({} if a.per_domain is None else {"per_domain": a.per_domain}))
        res["adaptation"] = ad
        if ad.get("published"):
            verifiers["adapted"] = load_verifier(root, c)
    if c == "antonym":
        res["probe"] = antonym_probe(root, s, verifiers)
    else:
        min_rel = 1
        for name in verifiers:
            ev = evaluate_domain(root, s, str(DIRS[c]), c, k=100, split="test", min_rel=min_rel, verify=True,
                                 verifier_from=GENERAL_DOMAIN if name == "general" else c, label=f"loco-{name}",
                                 general_beside=False)  # the general verifier has its own evaluation here
            res[f"eval_{name}"] = {"metrics": ev["metrics"], "baselines": ev["baselines"], "verify": ev["verify"],
                                   "run_ids": ev["run_ids"]}
            if c == "scifact":
                res[f"eval_{name}"]["no_overlap"] = {
                    n: no_overlap_ndcg(root, rid, DIRS[c]) for n, rid in ev["run_ids"].items()}
    res["served"] = served(res)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    prev = json.loads(a.out.read_text()) if a.out.is_file() else {}
    prev[c] = res
    a.out.write_text(json.dumps(prev, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
