"""Evaluate: run a BEIR split's queries through the serving search path, store the run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from sidestep.config import Settings
from sidestep.eval.beir import load_qrels, load_queries
from sidestep.retrieval.search import maxsim_rerank, rerank, search_texts, verify_top_of
from sidestep.storage import schemas
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.atomic import write_parquet
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import GENERAL_DOMAIN, load_choice
from sidestep.storage.verifiers import LoadedVerifier, load_verifier
from sidestep.storage.warehouse import Warehouse
from sidestep.text.encoder import doc_text
from sidestep.text.lexical import BM25, rrf
from sidestep.verify.features import warm_up

from .common import encoder_for

QUERY_BATCH = 64


def _run_table(rankings: dict[str, list[tuple[str, float]]]) -> pa.Table:
    cols: dict[str, list] = {"query_id": [], "doc_id": [], "rank": [], "score": []}
    for q, ranked in rankings.items():
        for r, (d, sc) in enumerate(ranked, 1):
            cols["query_id"].append(q)
            cols["doc_id"].append(d)
            cols["rank"].append(r)
            cols["score"].append(float(sc))
    return pa.table(cols, schema=schemas.RUN)


def _recall_only(enc, corpus, qids: list[str], queries: dict[str, str], k: int) -> dict[str, list]:
    """The served recall path (search_texts), batch by batch."""
    out = {}
    for s in range(0, len(qids), QUERY_BATCH):
        batch = qids[s:s + QUERY_BATCH]
        hits, _ = search_texts(enc, corpus, [queries[q] for q in batch], k)
        for q, hs in zip(batch, hits, strict=True):
            out[q] = [(h.doc_id, h.score) for h in hs]
    return out


def _verified(enc, corpus, view, verifier, qids: list[str], queries: dict[str, str], k: int, depth: int,
              max_doc_tokens: int, verify_top: int | None = None, others: dict | None = None
              ) -> tuple[dict[str, dict[str, list]], dict[str, list[float]]]:
    """Recall to `depth`, then rerank the same candidates two ways: MaxSim (untrained late interaction)
    and the verifier, one query at a time as serving does; times each stage. `others` (run name -> verifier)
    rerank the same candidates too, untimed: rows beside the served ranker."""
    others = others or {}
    runs: dict[str, dict[str, list]] = {"pooled_cosine": {}, "maxsim": {}, "verifier": {}, **{n: {} for n in others}}
    spent: dict[str, list[float]] = {"maxsim_ms": [], "token_maps_ms": [], "verify_ms": [], "others_ms": []}
    warm_up()  # compile the map reductions before the clock runs, as a serving replica does at start
    for s in range(0, len(qids), QUERY_BATCH):
        batch = qids[s:s + QUERY_BATCH]
        texts = [queries[q] for q in batch]
        pooled, toks = enc.encode_queries_with_tokens(texts)
        pieces = enc.query_ids(texts)
        hits = corpus.searcher.search(pooled, depth)
        for j, q in enumerate(batch):
            ids = [h.doc_id for h in hits[j]]
            rec = np.asarray([h.score for h in hits[j]], np.float32)
            runs["pooled_cosine"][q] = list(zip(ids, rec.tolist(), strict=True))[:k]
            # the two rerankers take turns going first, so that neither is timed on the other's warm caches
            for which in (("verifier", "maxsim") if (s + j) % 2 else ("maxsim", "verifier")):
                if which == "maxsim":
                    ms, ms_time = maxsim_rerank(view, toks[j], ids, max_doc_tokens)
                    spent["maxsim_ms"].append(ms_time)
                    runs["maxsim"][q] = _top(ids, ms, k)
                elif verifier is not None:
                    (sc, t, _), = rerank(verifier.model, [view], [toks[j]], [pieces[j]], [ids], [rec], max_doc_tokens,
                                      verify_top)
                    spent["token_maps_ms"].append(t["token_maps"])
                    spent["verify_ms"].append(t["verify"])
                    runs["verifier"][q] = _top(ids, sc, k)
            t_other = time.perf_counter()
            for name, other in others.items():
                (sc, _, _), = rerank(other.model, [view], [toks[j]], [pieces[j]], [ids], [rec], max_doc_tokens,
                                     verify_top)
                runs[name][q] = _top(ids, sc, k)
            spent["others_ms"].append((time.perf_counter() - t_other) * 1000)
    if verifier is None:
        del runs["verifier"]
    return runs, spent


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def _top(ids: list[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


def _lexical(root: DataRoot, domain: str, qids: list[str], queries: dict[str, str], k: int,
             dense: dict[str, list] | None) -> dict[str, dict[str, list]]:
    """BM25 over the domain's live documents, and its reciprocal-rank fusion with dense recall."""
    docs = DocumentStore(root).read(domain, include_deleted=False)
    bm = BM25(docs["doc_id"].to_pylist(), [doc_text(t or "", x) for t, x in zip(
        docs["title"].to_pylist(), docs["text"].to_pylist(), strict=True)])
    lex = dict(zip(qids, bm.search([queries[q] for q in qids], max(k, 100)), strict=True))
    out = {"bm25": {q: r[:k] for q, r in lex.items()}}
    if dense is not None:
        out["rrf_bm25_dense"] = {q: rrf([[d for d, _ in lex[q][:100]], [d for d, _ in dense[q][:100]]], k)
                                 for q in qids}
    return out


def choice_summary(choice: dict) -> dict:
    """What eval reports of a domain's ranker choice: which ranker, why, and the held-out figures."""
    return {k: choice.get(k) for k in ("ranker", "reason", "ndcg10", "queries", "kinds", "best_untrained", "margin",
                                       "over_dense", "over_dense_ci95", "learned_ci95", "verifier", "version",
                                       "index_version")}


def verifier_kind(loaded, domain: str) -> str:
    """own (trained on the domain's judgments), self-supervised, adapted (fine-tuned from the general verifier on
    the domain's own self-supervised lists), general, or another domain's."""
    m = loaded.manifest or {}
    if loaded.domain == GENERAL_DOMAIN:
        return "general"
    if loaded.domain != domain:
        return f"from domain {loaded.domain!r}"
    if m.get("adapted_from"):
        return "adapted"
    return "self-supervised" if m.get("self_supervised") else "own"


GENERAL_ROW = "general_verifier"  # the general verifier's run beside a ranker that is not it


def _general_beside(root: DataRoot, domain: str, dataset_dir: str, split: str, served, choice: dict | None
                    ) -> tuple[LoadedVerifier | None, dict | None]:
    """The general verifier eval applies beside the served ranker when that is not the general verifier itself,
    and what eval says of it: which version, which of this corpus's judgments it read (none: its row is the
    leave-one-corpus-out figure; the evaluated split: its row is scored on its own training judgments), and why
    it does not serve.

    Beside a ranker choice it is the version that choice weighed (its figure is the one the choice turned
    down); beside a domain's own verifier, the current one. A version pruned or damaged since costs only its
    row. A manifest that does not list what was read leaves the question open (None), never claims "none"."""
    if served is not None and served.domain == GENERAL_DOMAIN:
        return None, None
    if served is None:
        version = (choice or {}).get("learned_offered", {}).get(f"verifier:{GENERAL_DOMAIN}")
        if version is None:
            return None, None
        why = f"the ranker choice picked {choice['ranker']}: {choice['reason']}"
    else:
        version, why = None, f"the domain's {verifier_kind(served, domain)} verifier {served.version} serves"
    try:
        general = load_verifier(root, GENERAL_DOMAIN, version)
    except Exception as e:  # noqa: BLE001 - a bad artifact costs only its row, as it does for serving
        return None, {"verifier_kind": "general", "verifier_version": version, "served": False,
                      "error": f"{type(e).__name__}: {e}"}
    if general is None:
        return None, None
    sources = (general.manifest or {}).get("sources")
    here = str(Path(dataset_dir).resolve())
    read = None if sources is None else [
        {"domain": lab.get("domain"), "split": lab.get("split")} for lab in sources.get("labelled", [])
        if lab.get("domain") == domain or lab.get("dataset") == here]
    return general, {"verifier_kind": "general", "verifier_version": general.version, "served": False,
                     "judgments_read": read, "read_judgments_of_this_corpus": None if read is None else bool(read),
                     "trained_on_evaluated_split": None if read is None else any(r["split"] == split for r in read),
                     "leave_one_corpus_out": None if read is None else not read,
                     "leave_out": (general.manifest or {}).get("leave_out"), "why": why}


def evaluate_domain(root: DataRoot, settings: Settings, dataset_dir: str, domain: str, *, k: int = 100,
                    split: str = "test", min_rel: int = 1, out: str | None = None, label: str = "main",
                    group_id: str | None = None, verify: bool = False, verifier_from: str | None = None,
                    baselines: bool = True, general_beside: bool = True) -> dict:
    """Run SPLIT's queries through the serving path and store every configuration as a run in DuckDB.

    With verify (and a published verifier: the domain's own, or VERIFIER_FROM's), `metrics` is recall ->
    verify and the baselines beside it come from the same run: pooled cosine (recall only), MaxSim
    reranking the same candidates, BM25 and its reciprocal-rank fusion with dense recall. With verify and
    general_beside, a published general verifier that does not serve is applied too, as the run
    `general_verifier` (see _general_beside)."""
    queries = load_queries(dataset_dir, split=split)
    qrels = load_qrels(dataset_dir, split)
    store = IndexStore(root)
    ix = settings.index
    corpus = load_current(store, domain, overfetch=ix.chunk_overfetch, doc_score=ix.doc_score,
                          ef_search=ix.hnsw_ef_search, nprobe=ix.ivf_nprobe,
                          refine_k=ix.ivf_refine_k)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    enc = encoder_for(settings)
    qids = list(queries)
    loaded = load_verifier(root, verifier_from or domain) if verify else None
    verify_info: dict = {"requested": verify, "applied": False}
    choice = load_choice(root, domain) if verify and loaded is None and verifier_from is None else None
    if verify and loaded is None:
        verify_info["reason"] = f"no verifier is published for domain {verifier_from or domain!r}"
    if choice is not None:  # no verifier of its own: the ranker chosen on its held-out self-supervised queries
        verify_info.update(ranker_choice=choice_summary(choice), reason=(
            f"no verifier of its own for domain {domain!r}: {choice['ranker']} serves, chosen on its held-out "
            f"self-supervised queries ({choice['reason']})"))
        if choice.get("verifier"):
            loaded = load_verifier(root, choice["verifier"]["domain"])
    general, general_info = (_general_beside(root, domain, dataset_dir, split, loaded, choice)
                             if verify and general_beside else (None, None))
    if general_info is not None:
        verify_info["general"] = general_info
    if loaded is not None:
        verify_info["verifier_kind"] = verifier_kind(loaded, domain)
    t0 = time.perf_counter()
    runs: dict[str, dict[str, list]] = {}
    cost: dict[str, float] = {}
    if verify or baselines:
        view = load_token_view(root, settings, domain, corpus.version)
        runs, spent = _verified(enc, corpus, view, loaded, qids, queries, k,
                                max(k, settings.verify.candidates), settings.verify.max_doc_tokens,
                                settings.verify.verify_top, {GENERAL_ROW: general} if general else None)
        cost = {"per_query_maxsim_ms": _mean(spent["maxsim_ms"]),
                "per_query_token_maps_ms": _mean(spent["token_maps_ms"]),
                "per_query_verifier_ms": _mean(spent["verify_ms"]), "bytes_per_doc": view.source.bytes_per_doc(),
                "token_store": view.source.kind}
        if loaded is not None:
            stage = np.add(spent["token_maps_ms"], spent["verify_ms"])
            cost["verify_over_maxsim"] = (float(stage.mean()) / cost["per_query_maxsim_ms"]
                                          if cost["per_query_maxsim_ms"] else None)
            # medians too: one pause of the machine moves a mean over a few dozen queries (not a median)
            cost["p50_verify_stage_ms"] = float(np.median(stage)) if len(stage) else None
            cost["p50_maxsim_ms"] = float(np.median(spent["maxsim_ms"])) if spent["maxsim_ms"] else None
            cost["p50_verify_over_maxsim"] = (cost["p50_verify_stage_ms"] / cost["p50_maxsim_ms"]
                                              if cost["p50_maxsim_ms"] else None)
            verify_info.update(applied=True, verifier_version=loaded.version, verifier_domain=loaded.domain,
                               candidates=max(k, settings.verify.candidates),
                               verify_top=verify_top_of(loaded.model, settings.verify.verify_top))
    else:
        runs["pooled_cosine"] = _recall_only(enc, corpus, qids, queries, k)
    if baselines:
        runs.update(_lexical(root, domain, qids, queries, k, runs.get("pooled_cosine")))
    seconds = time.perf_counter() - t0
    if verify or baselines:
        seconds -= sum(spent["others_ms"]) / 1000  # the general verifier's row beside is not the served path
    main_name = "verifier" if verify_info["applied"] else "pooled_cosine"
    if choice is not None and not verify_info["applied"] and choice["ranker"] in ("maxsim", "fusion") and baselines:
        main_name = {"maxsim": "maxsim", "fusion": "rrf_bm25_dense"}[choice["ranker"]]
    verify_info["ranker"] = main_name
    group_id = group_id or f"{domain}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    base_cfg = {"k": k, "split": split, "index": corpus.manifest.get("index"),
                "encoder": corpus.manifest.get("encoder"), "chunking": corpus.manifest.get("chunking")}
    results: dict[str, dict] = {}
    main_run_id, run_path = None, None
    with Warehouse(root.eval_db()) as wh:
        for name, ranking in runs.items():
            run = _run_table(ranking)
            run_id = f"{group_id}-{name}"
            verified = name in ("verifier", GENERAL_ROW)
            version = (general_info or {}).get("verifier_version") if name == GENERAL_ROW \
                else verify_info.get("verifier_version")
            config = {**base_cfg, "variant": name, "verify": verified,
                      "stage": "recall+verify" if verified else {"pooled_cosine": "recall"}.get(name, name),
                      **({"verifier_version": version} if verified else {})}
            wh.record_run(run_id=run_id, dataset=str(Path(dataset_dir).resolve()), domain=domain,
                          index_version=corpus.version, config=config, results=run, qrels=qrels, queries=qids,
                          min_rel=min_rel, label=label if name == main_name else name, group_id=group_id)
            results[name] = wh.metrics(run_id)
            if name == main_name:
                main_run_id = run_id
                run_path = root.runs() / f"{run_id}.parquet"
                write_parquet(run_path, run)
                if out:
                    write_parquet(Path(out).resolve(), run)
    metrics = results.pop(main_name)
    return {"run_id": main_run_id, "run_group": group_id, "domain": domain, "index_version": corpus.version,
            "split": split, "queries": len(qids), "k": k, "min_rel": min_rel, "metrics": metrics,
            "baselines": results, "verify": verify_info, "cost": cost, "run_parquet": str(run_path), "out": out,
            "query_seconds": round(seconds, 3), "queries_per_s": round(len(qids) / seconds, 1) if seconds else None,
            "run_ids": {name: f"{group_id}-{name}" for name in runs}}  # every configuration's stored run
