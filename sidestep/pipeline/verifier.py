"""train_verifier: mine training lists from the published index, add structural near-misses, train,
publish a verifier version, log its curves into DuckDB."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sidestep.config import Settings
from sidestep.eval.beir import load_qrels, load_queries
from sidestep.fingerprint import digest
from sidestep.retrieval.search import IndexedCorpus, TokenView
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import publish_verifier
from sidestep.storage.warehouse import Warehouse
from sidestep.text.encoder import Encoder, doc_text
from sidestep.verify.adapter import TokenPool, fit_adapter
from sidestep.verify.candidates import VERIFY_TOP_CHOICES, Candidates, prepare, query_piece_ids, query_tokens
from sidestep.verify.features import adapt
from sidestep.verify.model import Example, VerifierConfig, choose_verify_top, fit, n_parameters, served_rows
from sidestep.verify.nearmiss import near_misses
from sidestep.verify.pseudo import pseudo_lists, title_docs

from .common import encoder_for


def _encode_texts(enc: Encoder, items: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(title, text) -> (token vectors, word pieces aligned with them, pooled chunk vectors)."""
    if not items:
        return []
    encoded = enc.encode_documents([(str(i), t, x) for i, (t, x) in enumerate(items)])
    ids = enc.tokenize_documents([doc_text(t, x) for t, x in items])["input_ids"]
    out = []
    for e, pieces in zip(encoded, ids, strict=True):
        toks = np.concatenate([t[1:-1] for t in e.tokens])
        p = np.asarray([x for c in e.chunks for x in pieces[c.tok_start:c.tok_end]], np.int32)
        out.append((toks, p, e.pooled))
    return out


def _pseudo_examples(enc: Encoder, docs, idf: np.ndarray, settings: Settings, seed: int, log,
                     adapter: torch.Tensor | None = None) -> list[Example]:
    """Training lists from title pseudo-queries (sidestep.verify.pseudo): up to `pseudo_docs` titled documents
    re-encoded without their titles, `pseudo_queries` of their titles as queries."""
    v = settings.verify
    if not v.pseudo_docs or not v.pseudo_queries:
        return []
    titles, texts = docs["title"].to_pylist(), docs["text"].to_pylist()
    pool = title_docs(titles, texts, v.pseudo_docs, seed)
    if not pool:
        log("pseudo-queries: no document has both a title and a text; none built")
        return []
    t0 = time.perf_counter()
    log(f"pseudo-queries: encoding {len(pool)} documents without their titles")
    encoded = _encode_texts(enc, [("", texts[i]) for i in pool])
    rng = np.random.default_rng(seed + 1)
    positives = sorted(rng.choice(len(pool), min(v.pseudo_queries, len(pool)), replace=False).tolist())
    qtexts = [titles[pool[k]] for k in positives]
    pooled, qtoks = enc.encode_queries_with_tokens(qtexts)
    out = pseudo_lists(pooled, qtoks, enc.query_ids(qtexts), positives, encoded, idf, candidates=v.candidates,
                       max_doc_tokens=v.max_doc_tokens, train_top=v.train_top,
                       max_query_tokens=VerifierConfig().max_query_tokens, adapter=adapter)
    log(f"pseudo-queries: {len(out)} lists from {len(qtexts)} titles over {len(pool)} documents "
        f"({len(qtexts) - len(out)} left out: their positive was not among the candidates trained on), "
        f"{time.perf_counter() - t0:.0f} s")
    return out


def check_training_split(split: str) -> None:
    if split == "test":
        raise ValueError("the verifier never trains on test queries; use the train split")


@dataclass
class TrainingLists:
    """What the verifier trains on: served-rows lists of the SPLIT queries (with near-misses), pseudo-query
    lists, and whole recall lists of the held-out queries (`val_qids`) that early stopping and
    `verify_top` are chosen on."""

    examples: list[Example]
    pseudo: list[Example]
    val: list[tuple[Candidates, np.ndarray]]
    fit_qids: list[str]  # the SPLIT queries not held out (some give no list: no positive among the candidates)
    val_qids: list[str]
    near_misses: dict[str, int]
    adapter: torch.Tensor  # the query adapter every list's maps were built with
    adapter_curve: list[dict]
    corpus: IndexedCorpus
    view: TokenView
    encoder: Encoder


def fit_query_adapter(qids: list[str], qtoks, hits, qrels: dict, val_set: set[int], view: TokenView,
                      settings: Settings, dim: int, *, seed: int = 0, log=print) -> tuple[torch.Tensor, list[dict]]:
    """The query adapter (sidestep.verify.adapter) from recall's top `adapter_top` of each query plus its positives,
    chosen on the held-out queries; the identity when `adapter_epochs` is 0."""
    v = settings.verify
    if not v.adapter_epochs:
        return torch.eye(dim), []
    cap = VerifierConfig().max_query_tokens
    t0 = time.perf_counter()
    wanted = []
    for j, q in enumerate(qids):
        rels = qrels.get(q, {})
        ids = [h.doc_id for h in hits[j]][:v.adapter_top]
        ids += [d for d, r in rels.items() if r > 0 and d not in ids and d in view.pieces]
        gains = np.asarray([rels.get(d, 0) for d in ids], np.float32)
        if (gains > 0).any():
            wanted.append((j, ids, gains))
    # each candidate document's tokens read once, shared by every list it is in
    pool = TokenPool(list(dict.fromkeys(d for _, ids, _ in wanted for d in ids)),
                     lambda ids: view.source.flat(ids, v.max_doc_tokens))
    train, val = [], []
    for j, ids, gains in wanted:
        (val if j in val_set else train).append(pool.token_list(query_tokens(qtoks[j], cap), ids, gains))
    log(f"query adapter: {len(train)} training and {len(val)} validation lists over {len(pool.spans)} documents, "
        f"{pool.vecs.numel() * 2 / 2**20:.0f} MB of tokens ({time.perf_counter() - t0:.0f} s)")
    return fit_adapter(train, val, dim, epochs=v.adapter_epochs, seed=seed, log=log)


def training_lists(root: DataRoot, settings: Settings, dataset_dir: str, domain: str, *, split: str = "train",
                   seed: int = 0, log=print, allow_test: bool = False, near_miss_cap: int | None = None
                   ) -> TrainingLists:
    """Mine DATASET_DIR's SPLIT qrels (never the test split, unless allow_test: the general verifier reads a
    corpus's only judgments, and is then never evaluated on that corpus in-domain) against DOMAIN's index."""
    if not allow_test:
        check_training_split(split)
    t0 = time.perf_counter()
    v = settings.verify
    ix = settings.index
    corpus = load_current(IndexStore(root), domain, overfetch=ix.chunk_overfetch, doc_score=ix.doc_score)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    # the exact float16 maps by default, whatever store serves: trained on PQ maps the verifier learns
    # their quantization noise (SciFact: test nDCG@10 0.711 vs 0.730, both scored on PQ maps)
    view = load_token_view(root, settings, domain, corpus.version, kind=v.train_token_store)
    queries = load_queries(dataset_dir, split=split)
    qrels = load_qrels(dataset_dir, split)
    if not queries:
        raise ValueError(f"{dataset_dir} has no {split} queries with judgments")
    enc = encoder_for(settings)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    pooled, qtoks = enc.encode_queries_with_tokens(texts)
    qpieces = enc.query_ids(texts)
    hits = corpus.searcher.search(pooled, v.candidates)
    rows = corpus.searcher.rows_by_doc
    docs = DocumentStore(root).read(domain, include_deleted=False)
    text_of = {d: (t or "", x) for d, t, x in zip(*(docs[c].to_pylist() for c in ("doc_id", "title", "text")),
                                                   strict=True)}
    # near-misses of every positive, encoded in one pass
    nm_items, nm_owner, kinds = [], [], Counter()
    for j, q in enumerate(qids):
        pos = [d for d, rel in qrels.get(q, {}).items() if rel > 0]
        if near_miss_cap is not None:  # only positives in the recall list can be paired: the best-recalled few
            ranked = [h.doc_id for h in hits[j]]
            pos = [d for d in ranked if d in set(pos)][:near_miss_cap]
        for d in pos:
            if d in text_of and d in view.pieces:
                for nm in near_misses(texts[j], text_of[d][1], n=v.near_misses, seed=seed):
                    nm_items.append((text_of[d][0], nm.text))
                    nm_owner.append((j, d))
                    kinds[nm.kind] += 1
    log(f"near-misses: {len(nm_items)} ({dict(kinds)}); encoding")
    nm_enc = _encode_texts(enc, nm_items)
    nm_of: dict[int, list[tuple[str, tuple]]] = {}
    for (j, d), e in zip(nm_owner, nm_enc, strict=True):
        nm_of.setdefault(j, []).append((d, e))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(qids))
    n_val = max(1, int(round(len(qids) * v.val_fraction))) if len(qids) > 4 else 0
    val_set = set(order[:n_val].tolist())
    cap = VerifierConfig().max_query_tokens
    adapter, adapter_curve = fit_query_adapter(qids, qtoks, hits, qrels, val_set, view, settings, enc.dim, seed=seed,
                                               log=log)
    examples, val = [], []
    for j, q in enumerate(qids):
        cands = [h.doc_id for h in hits[j]]
        rec = [h.score for h in hits[j]]
        qt, qp = adapt(adapter, query_tokens(qtoks[j], cap)), query_piece_ids(qpieces[j], cap)
        rels = qrels.get(q, {})
        if j in val_set:
            c = prepare(qt, qp, view.source.docs(cands), [view.pieces[d] for d in cands], view.idf,
                        np.asarray(rec, np.float32), v.max_doc_tokens)
            val.append((c, np.asarray([rels.get(d, 0) for d in cands], np.float32)))
            continue
        # positives recall missed join whole-list training only; served lists (train_top) never hold them
        extra = [] if v.train_top else [d for d, r in rels.items()
                                        if r > 0 and d not in cands and d in view.pieces and d in rows]
        ds = cands + extra
        rec += corpus.searcher.best_chunk_scores(pooled[j], extra)
        toks = view.source.docs(ds)
        pieces = [view.pieces[d] for d in ds]
        pairs = []
        at = {d: i for i, d in enumerate(ds)}
        for d, (nt, npc, npool) in nm_of.get(j, []):
            if d not in at:  # its positive is not in the list (recall missed it)
                continue
            pairs.append((at[d], len(toks)))
            toks.append(nt)
            pieces.append(npc)
            rec.append(float((npool @ pooled[j]).max()))
        labels = torch.tensor([rels.get(d, 0) > 0 for d in ds] + [False] * len(pairs))
        if not labels.any():
            continue
        c = prepare(qt, qp, toks, pieces, view.idf, np.asarray(rec, np.float32), v.max_doc_tokens,
                    n_list=len(cands))
        ex = Example(c, labels, torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))
        ex = served_rows(ex, v.train_top, len(cands)) if v.train_top else ex
        if ex is not None:
            examples.append(ex)
    pseudo = _pseudo_examples(enc, docs, view.idf, settings, seed, log, adapter)
    t_data = time.perf_counter() - t0
    log(f"training lists: {len(examples)} train, {len(pseudo)} pseudo-query, {len(val)} validation queries "
        f"({t_data:.0f} s to build)")
    return TrainingLists(examples, pseudo, val, [q for j, q in enumerate(qids) if j not in val_set],
                         [q for j, q in enumerate(qids) if j in val_set], dict(kinds), adapter, adapter_curve, corpus,
                         view, enc)


def _adapter_summary(adapter: torch.Tensor, curve: list[dict], top: int) -> dict:
    best = max(curve, key=lambda c: c["val_ndcg10"]) if curve else {}
    return {"top": top, "best_epoch": best.get("epoch"), "val_ndcg10": best.get("val_ndcg10"),
            "identity_val_ndcg10": curve[0]["val_ndcg10"] if curve else None,
            "epochs_run": len(curve) - 1 if curve else 0,
            "distance_from_identity": float((adapter - torch.eye(len(adapter))).norm()), "curve": curve}


def train_verifier_domain(root: DataRoot, settings: Settings, dataset_dir: str, domain: str, *,
                          split: str = "train", seed: int = 0, log=print) -> dict:
    """Train on DATASET_DIR's SPLIT qrels (never the test split) against DOMAIN's current index."""
    t0 = time.perf_counter()
    v = settings.verify
    lists = training_lists(root, settings, dataset_dir, domain, split=split, seed=seed, log=log)
    examples, pseudo, val, kinds = lists.examples, lists.pseudo, lists.val, lists.near_misses
    corpus, view, enc = lists.corpus, lists.view, lists.encoder
    cfg = VerifierConfig()
    model, curve = fit(examples + pseudo, val, cfg, enc.dim, epochs=v.epochs, near_miss_weight=v.near_miss_weight,
                       seed=seed, patience=v.patience, log=log)
    with torch.no_grad():
        model.adapter.copy_(lists.adapter)
    best = max(curve, key=lambda c: c["val_ndcg10"]) if curve else {}
    # the model is never served more of the list than it trained on
    top, top_ndcg = choose_verify_top(model, val, choices=[k for k in VERIFY_TOP_CHOICES
                                                           if not v.train_top or k <= v.train_top])
    model.cfg = replace(model.cfg, verify_top=top)
    cfg = model.cfg
    log(f"verify_top {top or 'all'}: validation nDCG@10 by candidates the model reads "
        + ", ".join(f"{k or 'all'} {nd:.4f}" for k, nd in top_ndcg.items()))
    fp = digest({"index": corpus.version, "dataset": str(Path(dataset_dir).resolve()), "split": split, "seed": seed,
                 "cfg": cfg.as_dict(), "train_top": v.train_top, "pseudo_docs": v.pseudo_docs,
                 "pseudo_queries": v.pseudo_queries, "adapter_epochs": v.adapter_epochs,
                 "adapter_top": v.adapter_top})
    version = new_version_name(fp)
    manifest = {"index_version": corpus.version, "dataset": str(Path(dataset_dir).resolve()), "split": split,
                "config": cfg.as_dict(), "parameters": n_parameters(model), "seed": seed,
                "train_queries": len(examples), "pseudo_lists": len(pseudo), "train_top": v.train_top,
                "val_queries": len(val), "held_out_queries": lists.val_qids, "token_store": view.source.kind,
                "near_misses": dict(kinds),
                "best_epoch": best.get("epoch"), "val_ndcg10": best.get("val_ndcg10"),
                "verify_top": top, "val_ndcg10_by_verify_top": {str(k): nd for k, nd in top_ndcg.items()},
                "epochs_run": len(curve), "encoder": corpus.manifest.get("encoder"),
                "adapter": _adapter_summary(lists.adapter, lists.adapter_curve, v.adapter_top)}
    publish_verifier(root, domain, version, model, manifest, settings.index.keep_versions)
    with Warehouse(root.eval_db()) as wh:
        # the adapter's epochs beside the model's, as adapter_loss / adapter_val_ndcg10 (epoch 0: the identity)
        wh.record_verifier_curve(domain, version, curve + [
            {"epoch": c["epoch"], **{f"adapter_{k}": c[k] for k in ("loss", "val_ndcg10") if c[k] is not None}}
            for c in lists.adapter_curve])
    seconds = time.perf_counter() - t0
    return {"domain": domain, "version": version, "seconds": round(seconds, 1), **manifest}
