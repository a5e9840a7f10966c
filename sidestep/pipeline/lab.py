"""The gradient lab's retrieval data: recall candidates and fixed evidence of a judged corpus, computed
once from the domain's published index and cached in the data root (lab/retrieval/<domain>/)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sidestep.config import Settings
from sidestep.eval.beir import available_splits, load_qrels, load_queries
from sidestep.fingerprint import digest
from sidestep.lab.retrieval import RetrievalData
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.atomic import write_with
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.verify.candidates import PRESCORE_COLUMNS, global_features, query_piece_ids, query_tokens
from sidestep.verify.features import best_matches, lexical_features_flat
from sidestep.verify.model import VerifierConfig

from .common import Log, encoder_for

FEATURES = ("recall", "maxsim", "idf_maxsim", "bm25")  # the list z-scores of PRESCORE_COLUMNS, in order
CACHE_VERSION = 1


def split_queries(dataset_dir: str, *, val_fraction: float = 0.2, test_fraction: float = 0.5,
                  seed: int = 0) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, str], str]:
    """Judged queries -> (texts, qrels, split per query, how the split was made).

    With train qrels: train qrels split into train / val (a seeded `val_fraction`), test = the test qrels.
    With test qrels only: a fixed seeded split of the judged queries, `test_fraction` test, of the rest
    `val_fraction` validation."""
    splits = available_splits(dataset_dir)
    texts = load_queries(dataset_dir)
    rng = np.random.default_rng(seed)
    split: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    if "train" in splits and "test" in splits:
        train = [q for q in load_qrels(dataset_dir, "train") if q in texts]
        test_qrels = load_qrels(dataset_dir, "test")
        qrels.update(load_qrels(dataset_dir, "train"))
        order = rng.permutation(len(train))
        n_val = int(round(len(train) * val_fraction))
        for i, j in enumerate(order):
            split[train[j]] = "val" if i < n_val else "train"
        for q in test_qrels:
            if q in texts:
                split[q], qrels[q] = "test", test_qrels[q]
        how = (f"train qrels split {1 - val_fraction:.0%} train / {val_fraction:.0%} validation (seed {seed}); "
               "test = the test qrels")
    else:
        judged = load_qrels(dataset_dir, splits[0] if splits else "test")
        ids = [q for q in judged if q in texts and any(g > 0 for g in judged[q].values())]
        order = rng.permutation(len(ids))
        n_test = int(round(len(ids) * test_fraction))
        n_val = int(round((len(ids) - n_test) * val_fraction))
        for i, j in enumerate(order):
            split[ids[j]] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        qrels.update({q: judged[q] for q in ids})
        how = (f"no train qrels: a fixed seeded split (seed {seed}) of the {len(ids)} judged queries, {n_test} test, "
               f"{n_val} validation, {len(ids) - n_test - n_val} train; small: differences of a few points are noise")
    return {q: texts[q] for q in split}, qrels, split, how


def no_overlap(qrels: dict[str, dict[str, int]], split: dict[str, str], rel: int) -> dict[str, bool]:
    """Test queries none of whose relevant documents is relevant to any training (train or val) query."""
    cited = {d for q, s in split.items() if s != "test" for d, g in qrels.get(q, {}).items() if g >= rel}
    return {q: s == "test" and not any(g >= rel and d in cited for d, g in qrels.get(q, {}).items())
            for q, s in split.items()}


def cache_path(root: DataRoot, domain: str, key: str) -> Path:
    return root.lab("retrieval", domain) / f"{key}.pt"


def retrieval_data(root: DataRoot, settings: Settings, dataset_dir: str, domain: str, *, name: str | None = None,
                   candidates: int = 100, rel_threshold: int = 1, log: Log = print) -> RetrievalData:
    """RetrievalData of DATASET_DIR's judged queries against DOMAIN's current index (cached)."""
    corpus = load_current(IndexStore(root), domain, overfetch=settings.index.chunk_overfetch,
                          doc_score=settings.index.doc_score)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep index DIR --domain {domain}`")
    texts, qrels, split, how = split_queries(dataset_dir)
    v = settings.verify
    key = digest({"v": CACHE_VERSION, "index": corpus.version, "dataset": str(Path(dataset_dir).resolve()),
                  "queries": sorted(split.items()), "candidates": candidates, "rel": rel_threshold,
                  "max_doc_tokens": v.max_doc_tokens, "store": v.train_token_store}, length=16)
    path = cache_path(root, domain, key)
    if path.is_file():
        log(f"{domain}: retrieval lab data from the cache {path}")
        return RetrievalData.load(path)
    t0 = time.perf_counter()
    view = load_token_view(root, settings, domain, corpus.version, kind=v.train_token_store)
    enc = encoder_for(settings)
    qids = list(texts)
    log(f"{domain}: encoding {len(qids)} queries, recall top {candidates}")
    pooled, qtoks = enc.encode_queries_with_tokens([texts[q] for q in qids])
    qpieces = enc.query_ids([texts[q] for q in qids])
    hits = corpus.searcher.search(pooled, candidates)
    hits = [h + [h[-1]] * (candidates - len(h)) if h else h for h in hits]  # a short list repeats its last hit
    docs = list(dict.fromkeys(h.doc_id for hs in hits for h in hs))
    doc_row = {d: i for i, d in enumerate(docs)}
    rows_of = corpus.searcher.rows_by_doc
    width = max(len(rows_of[d]) for d in docs)
    doc_chunks = np.zeros((len(docs), width), np.int64)
    mask = np.zeros((len(docs), width), bool)
    chunk_rows: list[int] = []
    for i, d in enumerate(docs):
        r = rows_of[d]
        doc_chunks[i, :len(r)] = np.arange(len(chunk_rows), len(chunk_rows) + len(r))
        mask[i, :len(r)] = True
        chunk_rows += r.tolist()
    vecs = corpus.searcher.index.reconstruct_batch(np.asarray(chunk_rows, np.int64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
    cap = VerifierConfig().max_query_tokens
    feats = np.zeros((len(qids), candidates, len(FEATURES)), np.float32)
    gains = np.zeros((len(qids), candidates), np.float32)
    for j, q in enumerate(qids):
        ids = [h.doc_id for h in hits[j]]
        flat = view.source.flat(ids, v.max_doc_tokens)
        _, best = best_matches(query_tokens(qtoks[j], cap), flat)
        lex = lexical_features_flat(query_piece_ids(qpieces[j], cap), [view.pieces[d] for d in ids], view.idf)
        glob = global_features(np.asarray([h.score for h in hits[j]], np.float32), best, lex, flat.lengths)
        feats[j] = glob[:, list(PRESCORE_COLUMNS)].numpy()
        gains[j] = [qrels.get(q, {}).get(d, 0) for d in ids]
        if (j + 1) % 200 == 0:
            log(f"{domain}: evidence of {j + 1}/{len(qids)} queries ({time.perf_counter() - t0:.0f} s)")
    idcg, n_rel = [], []
    for q in qids:
        judged = sorted((g for g in qrels.get(q, {}).values() if g > 0), reverse=True)[:10]
        idcg.append(sum(g / np.log2(i + 2) for i, g in enumerate(judged)))
        n_rel.append(sum(1 for g in qrels.get(q, {}).values() if g >= rel_threshold))
    overlap = no_overlap(qrels, split, rel_threshold)
    data = RetrievalData(
        name=name or domain, qids=qids, split=[split[q] for q in qids],
        qvec=torch.from_numpy(pooled.astype(np.float32)),
        cand=torch.tensor([[doc_row[h.doc_id] for h in hs] for hs in hits], dtype=torch.long),
        doc_chunks=torch.from_numpy(doc_chunks), chunk_mask=torch.from_numpy(mask), chunk_vecs=torch.from_numpy(vecs),
        feats=torch.from_numpy(feats), gains=torch.from_numpy(gains), idcg=torch.tensor(idcg, dtype=torch.float32),
        n_relevant=torch.tensor(n_rel, dtype=torch.float32), no_overlap=[overlap[q] for q in qids],
        feature_names=FEATURES, rel_threshold=rel_threshold,
        notes={"split": how, "index_version": corpus.version, "dataset": str(Path(dataset_dir).resolve()),
               "relevant_grade": rel_threshold, "cache": str(path)})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, data.save)
    log(f"{domain}: retrieval lab data for {len(qids)} queries, {len(docs)} candidate documents, cached "
        f"({time.perf_counter() - t0:.0f} s)")
    return data
