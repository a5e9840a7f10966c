"""choose_ranker: which ranker serves a domain that has no verifier of its own, decided at index time on the
domain's held-out self-supervised queries (sidestep.verify.crops: titles, heading questions, sentence crops; no
label read), and published as a versioned per-domain artifact (storage/rankers.py).

Every ranker reads one corpus: the published index, except that each query's own document is replaced by
its text with the query's piece removed (re-encoded, tokens and chunk vectors as the index stores them), so
no query finds itself verbatim. The rankers are the ones search can serve: pooled cosine (recall's order),
MaxSim over the recall list's tokens, reciprocal-rank fusion of BM25 and dense recall, and each learned
verifier offered (the general verifier; a domain's adapted one), which reranks the recall list as served.
The best untrained ranker serves unless a learned one beats it beyond its paired 95% interval
(sidestep.verify.gate.choose_ranker).
"""

from __future__ import annotations

import time
from collections import ChainMap
from dataclasses import dataclass

import numpy as np

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.retrieval.search import IndexedCorpus, TokenView, maxsim_rerank, rerank
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import GENERAL_DOMAIN, load_choice, publish_choice
from sidestep.storage.verifiers import LoadedVerifier, load_verifier
from sidestep.text.encoder import doc_text
from sidestep.text.lexical import BM25, rrf
from sidestep.verify.crops import PseudoQuery, ndcg10_single, paired_ci, pseudo_queries
from sidestep.verify.features import FlatTokens, flatten_tokens
from sidestep.verify.gate import choose_ranker as decide

from .common import encoder_for
from .verifier import _encode_texts

FUSION_DEPTH = 100  # each ranking's top fused, as evaluation fuses them


class OverlayTokens:
    """A token source that reads `overrides` (doc id -> token vectors) first, the published store otherwise."""

    def __init__(self, base, overrides: dict[str, np.ndarray]):
        self.base, self.overrides, self.kind = base, overrides, getattr(base, "kind", "float16")

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]:
        miss = [d for d in doc_ids if d not in self.overrides]
        got = dict(zip(miss, self.base.docs(miss), strict=True)) if miss else {}
        return [self.overrides[d] if d in self.overrides else got[d] for d in doc_ids]

    def flat(self, doc_ids: list[str], max_tokens: int) -> FlatTokens:
        return flatten_tokens(self.docs(doc_ids), max_tokens)


@dataclass
class PseudoSet:
    """Self-supervised queries of one domain and the corpus every ranker reads for them: the published index with
    each query's own document replaced by its text without the query's piece (`view`: its tokens and pieces
    overlaid; `dense[j]`: query j's dense recall list over that corpus, best first, as (doc id, cosine))."""

    queries: list[PseudoQuery]
    positives: list[str]  # doc id of each query's own document
    view: TokenView
    qpooled: np.ndarray
    qtoks: list[np.ndarray]
    qpieces: list[list[int]]
    dense: list[list[tuple[str, float]]]
    doc_ids: list[str]
    titles: list[str | None]
    texts: list[str | None]


def pseudo_set(settings: Settings, corpus: IndexedCorpus, view: TokenView, docs, enc, *, n: int, seed: int,
               exclude_ids: set[str] | None = None, depth: int | None = None) -> PseudoSet:
    """Up to n self-supervised queries of the domain (none from a document in `exclude_ids`) and their recall lists."""
    doc_ids, titles, texts = (docs[c].to_pylist() for c in ("doc_id", "title", "text"))
    exclude = {i for i, d in enumerate(doc_ids) if d in exclude_ids} if exclude_ids else None
    pqs = [p for p in pseudo_queries(titles, texts, n, seed, exclude=exclude) if doc_ids[p.pos] in view.pieces]
    held = [doc_ids[p.pos] for p in pqs]
    if not pqs:
        return PseudoSet([], [], view, np.zeros((0, enc.dim), np.float32), [], [], [], doc_ids, titles, texts)
    held_set = set(held)
    encoded = _encode_texts(enc, [("", p.doc_text) for p in pqs])
    over = TokenView(OverlayTokens(view.source, {d: e[0] for d, e in zip(held, encoded, strict=True)}),
                     ChainMap({d: e[1] for d, e in zip(held, encoded, strict=True)}, view.pieces), view.idf)
    qtexts = [p.query for p in pqs]
    qpooled, qtoks = enc.encode_queries_with_tokens(qtexts)
    depth = depth or max(settings.verify.candidates, FUSION_DEPTH)
    hits = corpus.searcher.search(qpooled, depth + len(held))
    # each held-out document's score is its title- (heading-, sentence-) free chunks' best cosine
    mod = np.stack([(np.asarray(e[2], np.float32) @ qpooled.T).max(0) for e in encoded], 1)  # (queries, held)
    dense = []
    for j in range(len(pqs)):
        lst = [(h.doc_id, h.score) for h in hits[j] if h.doc_id not in held_set]
        lst += list(zip(held, mod[j].tolist(), strict=True))
        lst.sort(key=lambda x: -x[1])
        dense.append(lst[:depth])
    return PseudoSet(pqs, held, over, qpooled, list(qtoks), enc.query_ids(qtexts), dense, doc_ids, titles, texts)


def held_out_scores(settings: Settings, corpus: IndexedCorpus, view: TokenView, docs, enc, *, n: int, seed: int,
                    verifiers: dict[str, LoadedVerifier] | None = None, exclude_ids: set[str] | None = None,
                    log=print) -> tuple[dict[str, list[float]], dict]:
    """Per-query nDCG@10 of every ranker on up to n self-supervised queries of the domain (see the module
    docstring; none from a document in `exclude_ids`), and what the queries were (kinds, count, seconds)."""
    t0 = time.perf_counter()
    v = settings.verify
    ps = pseudo_set(settings, corpus, view, docs, enc, n=n, seed=seed, exclude_ids=exclude_ids)
    info = {"queries": len(ps.queries),
            "kinds": {k: sum(p.kind == k for p in ps.queries) for k in ("title", "heading", "crop")}}
    per: dict[str, list[float]] = {k: [] for k in ("pooled_cosine", "maxsim", "fusion", "bm25")}
    for name in verifiers or {}:
        per[name] = []
    if not ps.queries:
        return per, {**info, "seconds": round(time.perf_counter() - t0, 1)}
    text_of = {p.pos: p.doc_text for p in ps.queries}
    bm = BM25(ps.doc_ids, [doc_text("", text_of[i]) if i in text_of else doc_text(t or "", x or "")
                           for i, (t, x) in enumerate(zip(ps.titles, ps.texts, strict=True))])
    lex = bm.search([p.query for p in ps.queries], FUSION_DEPTH)
    for j, pos in enumerate(ps.positives):
        dense = ps.dense[j]
        ids = [d for d, _ in dense[:v.candidates]]
        rec = np.asarray([s for _, s in dense[:v.candidates]], np.float32)
        per["pooled_cosine"].append(ndcg10_single(ids, pos))
        ms, _ = maxsim_rerank(ps.view, ps.qtoks[j], ids, v.max_doc_tokens)
        per["maxsim"].append(ndcg10_single([ids[i] for i in np.argsort(-ms, kind="stable")], pos))
        lex_ids = [d for d, _ in lex[j]]
        per["bm25"].append(ndcg10_single(lex_ids, pos))
        fused = rrf([lex_ids[:FUSION_DEPTH], [d for d, _ in dense[:FUSION_DEPTH]]], FUSION_DEPTH)
        per["fusion"].append(ndcg10_single([d for d, _ in fused], pos))
        for name, ver in (verifiers or {}).items():
            (sc, _, _), = rerank(ver.model, [ps.view], [ps.qtoks[j]], [ps.qpieces[j]], [ids], [rec],
                                 v.max_doc_tokens, v.verify_top)
            per[name].append(ndcg10_single([ids[i] for i in np.argsort(-sc, kind="stable")], pos))
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"ranker choice: {len(ps.queries)} held-out self-supervised queries ({info['kinds']}) in "
        f"{info['seconds']:.0f} s")
    return per, info


def trained_on(learned: dict[str, LoadedVerifier], domain: str) -> set[str]:
    """Documents of DOMAIN whose pseudo-queries trained a learned candidate: never a held-out query."""
    out: set[str] = set()
    for ver in learned.values():
        out |= set((ver.manifest.get("self_supervised_positives") or {}).get(domain, []))
    return out


def learned_candidates(root: DataRoot, domain: str) -> dict[str, LoadedVerifier]:
    """The learned rankers a domain without its own verifier may be served by: the general verifier, when one
    is published."""
    out = {}
    general = load_verifier(root, GENERAL_DOMAIN) if domain != GENERAL_DOMAIN else None
    if general is not None:
        out[f"verifier:{GENERAL_DOMAIN}"] = general
    return out


def choose_ranker(root: DataRoot, settings: Settings, domain: str, *, seed: int = 0, force: bool = False,
                  log=print) -> dict:
    """Choose and publish DOMAIN's ranker (see the module docstring). Unchanged inputs (index version, learned
    candidates' versions, settings) keep the current choice."""
    v = settings.verify
    corpus = load_current(IndexStore(root), domain, overfetch=settings.index.chunk_overfetch,
                          doc_score=settings.index.doc_score)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    learned = learned_candidates(root, domain)
    fp = digest({"index": corpus.version, "learned": {k: x.version for k, x in sorted(learned.items())},
                 "n": v.ranker_queries, "seed": seed, "candidates": v.candidates, "max_doc_tokens": v.max_doc_tokens,
                 "verify_top": v.verify_top, "rule": "learned-beyond-ci95", "queries": "kind-drawn-at-random"})
    current = load_choice(root, domain)
    if current is not None and current.get("fingerprint") == fp and not force:
        return {**current, "published": False, "unchanged": True}
    view = load_token_view(root, settings, domain, corpus.version)
    docs = DocumentStore(root).read(domain, include_deleted=False)
    per, info = held_out_scores(settings, corpus, view, docs, encoder_for(settings), n=v.ranker_queries, seed=seed,
                                verifiers=learned, exclude_ids=trained_on(learned, domain), log=log)
    bm25 = per.pop("bm25")
    res = decide(per, ci=paired_ci)
    choice = {**res.as_dict(), "domain": domain, "index_version": corpus.version, "fingerprint": fp, "seed": seed,
              "kinds": info["kinds"], "seconds": info.get("seconds"),
              "bm25_ndcg10": float(np.mean(bm25)) if bm25 else 0.0,
              "verifier": ({"domain": learned[res.ranker].domain, "version": learned[res.ranker].version}
                           if res.ranker in learned else None),
              "learned_offered": {k: x.version for k, x in learned.items()}}
    version = new_version_name(fp)
    publish_choice(root, domain, version, choice, settings.index.keep_versions)
    log(f"ranker for {domain!r}: {res.ranker} ({res.reason})")
    return {**choice, "version": version, "published": True}
