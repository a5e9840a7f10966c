"""The search path shared by the HTTP endpoint and offline evaluation.

Both call `search_texts`, so an evaluation measures exactly what users get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sidestep.docmaps.maps import condition_queries, encode_in_context, section_aware_chunks
from sidestep.results import Hit
from sidestep.retrieval.index import DocSearcher
from sidestep.text.encoder import Encoder
from sidestep.verify.candidates import prepare, query_piece_ids, query_tokens
from sidestep.verify.features import FlatTokens, flat_maxsim
from sidestep.verify.model import Verifier, score

MODES = ("chunks", "map")


@dataclass
class MapParamsSearch:
    """Map search parameters (tuned on dev questions, see benchmarks/)."""

    top_r: int = 2
    map_weight: float = 0.0
    alpha: float = 1.0
    gamma: float = 0.4
    tau: float = 0.7


@dataclass
class MapIndex:
    """Document maps of one index version, aligned with its chunk rows."""

    doc_ids: list[str]
    global_vecs: np.ndarray  # (n_docs, dim); zero rows for documents without a map
    has_map: np.ndarray  # (n_docs,) bool
    global_summaries: list[str | None]
    section_vecs: list[np.ndarray]  # per document (n_sections, dim)
    chunk_doc: np.ndarray  # (n_chunks,) document position of each chunk row
    chunk_section: np.ndarray  # (n_chunks,) section of each chunk row, -1 without a map
    chunk_vecs: np.ndarray  # (n_chunks, dim) the pooled chunk vectors of the index
    title_vecs: list[np.ndarray] = field(default_factory=list)  # per document (n_sections, dim) heading paths


@dataclass
class IndexedCorpus:
    """One published index version, loaded: what a replica needs to answer queries."""

    domain: str
    version: str
    searcher: DocSearcher
    titles: Sequence[str]
    snippets: Sequence[str]
    chunk_idx: Sequence[int]
    manifest: dict = field(default_factory=dict)
    maps: MapIndex | None = None

    @property
    def n_docs(self) -> int:
        return self.searcher.n_docs


class TokenSource(Protocol):
    kind: str

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]: ...

    def flat(self, doc_ids: list[str], max_tokens: int) -> FlatTokens: ...


@dataclass
class TokenView:
    """What the verify stage reads of one index version: token vectors, word pieces, idf."""

    source: TokenSource
    pieces: dict[str, np.ndarray]
    idf: np.ndarray


@dataclass
class VerifyRequest:
    """What the verify stage needs of one query: plain data (it crosses the actor call from a search
    replica to the verifier deployment, so it pickles)."""

    domain: str
    index_version: str
    qtok: np.ndarray  # (nq, d) float32 query token vectors, [CLS]/[SEP] included
    qpieces: list[int]  # the query's word-piece ids, specials included
    doc_ids: list[str]  # recall's candidates, best first
    recall: np.ndarray  # (n,) float32 recall scores of doc_ids
    # which reranker: "verifier" (the domain's own, or verifier_domain's: the general verifier a domain without
    # one of its own was chosen for) or "maxsim" (untrained late interaction, the domain's chosen ranker)
    ranker: str = "verifier"
    verifier_domain: str | None = None


@dataclass
class RecallStage:
    """A search after recall, before verify: recall's hits and timings, and either what the verify stage
    needs (`request`, recall went to the verify depth) or why it does not apply (`reason`)."""

    t0: float  # perf_counter at the request's arrival: the total time counts from here
    corpus: IndexedCorpus
    domain: str
    mode: str
    k: int
    requested: bool  # the caller asked for verification
    hits: list[Hit] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    request: VerifyRequest | None = None
    reason: str | None = None
    choice: dict | None = None  # the domain's ranker choice (storage/rankers.py) when it has no verifier of its own


def verify_top_of(model: Verifier, override: int | None) -> int:
    """How many candidates the model reads: the setting where one is given, else the verifier's own choice."""
    return model.cfg.verify_top if override is None else override


def rerank(model: Verifier, views: Sequence[TokenView], qtoks: Sequence[np.ndarray], qpieces: Sequence[Sequence[int]],
           doc_ids: Sequence[Sequence[str]], recalls: Sequence[np.ndarray], max_doc_tokens: int,
           verify_top: int | None = None) -> list[tuple[np.ndarray, dict[str, float], int]]:
    """Verifier scores for several queries' candidates: maps built per query, one model forward for all.
    qtoks and qpieces include [CLS]/[SEP] as the encoder returns them. verify_top: see `verify_top_of`.
    Per query: scores of every candidate, stage timings, and how many candidates the model scored."""
    items, spent = [], []
    cap = model.cfg.max_query_tokens
    top = verify_top_of(model, verify_top)
    with torch.inference_mode():
        for view, qt, qp, ids, rec in zip(views, qtoks, qpieces, doc_ids, recalls, strict=True):
            t0 = time.perf_counter()
            items.append(prepare(model.adapt(query_tokens(qt, cap)), query_piece_ids(qp, cap),
                                 view.source.flat(list(ids), max_doc_tokens), [view.pieces[d] for d in ids],
                                 view.idf, rec, max_doc_tokens, verify_top=top))
            spent.append((time.perf_counter() - t0) * 1e3)
        t1 = time.perf_counter()
        scores = score(model, items)
    verify_ms = (time.perf_counter() - t1) * 1e3
    return [(sc, {"token_maps": ms, "verify": verify_ms}, len(it.rows) if it.rows is not None else len(sc))
            for sc, ms, it in zip(scores, spent, items, strict=True)]


def maxsim_rerank(view: TokenView, qtok: np.ndarray, doc_ids: Sequence[str], max_doc_tokens: int
                  ) -> tuple[np.ndarray, float]:
    """ColBERT-style late interaction over the same token vectors (no training): the verifier's baseline."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        s = flat_maxsim(query_tokens(qtok, 10_000), view.source.flat(list(doc_ids), max_doc_tokens)).numpy()
    return s, (time.perf_counter() - t0) * 1e3


def search_vectors(corpus: IndexedCorpus, qvecs: np.ndarray, k: int) -> list[list[Hit]]:
    out = []
    for hits in corpus.searcher.search(qvecs, k):
        out.append([Hit(h.doc_id, h.score, h.score, corpus.titles[h.row], corpus.snippets[h.row],
                              int(corpus.chunk_idx[h.row])) for h in hits])
    return out


def search_texts(encoder: Encoder, corpus: IndexedCorpus, texts: Sequence[str], k: int, *, mode: str = "chunks",
                 doc_id: str | None = None, params: MapParamsSearch | None = None
                 ) -> tuple[list[list[Hit]], dict[str, float]]:
    """Encode queries, recall from the index; returns hits and per-stage timings in ms.

    mode "chunks": bag of chunks (a document scores as its best chunk).
    mode "map": route by document maps first (map score fused with the best chunk), then pick
    each routed document's chunk with the query conditioned on that document's global summary.
    With doc_id, mode "map" ranks the chunks of that one document (map-conditioned query).
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {MODES}")
    if mode == "map" and corpus.maps is None:
        raise ValueError(f"domain {corpus.domain!r} has no document maps in version {corpus.version}")
    t0 = time.perf_counter()
    qvecs = encoder.encode_queries(texts)
    t1 = time.perf_counter()
    if mode == "chunks":
        if doc_id is not None:
            raise ValueError("doc_id needs mode 'map'")
        hits = search_vectors(corpus, qvecs, k)
    else:
        p = params or MapParamsSearch()
        hits = [_map_search(encoder, corpus, t, q, k, p, doc_id) for t, q in zip(texts, qvecs, strict=True)]
    t2 = time.perf_counter()
    return hits, {"encode": (t1 - t0) * 1e3, ("recall" if mode == "chunks" else "map_search"): (t2 - t1) * 1e3}


def _hit(corpus: IndexedCorpus, doc: str, score: float, recall: float, row: int) -> Hit:
    return Hit(doc, float(score), float(recall), corpus.titles[row], corpus.snippets[row],
                     int(corpus.chunk_idx[row]))


def _best_rows(corpus: IndexedCorpus, encoder: Encoder, text: str, qvec: np.ndarray, docs: Sequence[int],
               p: MapParamsSearch) -> dict[int, tuple[int, np.ndarray]]:
    """For each document: its chunk rows scored with the query conditioned on the document's map."""
    m = corpus.maps
    assert m is not None
    mapped = [d for d in docs if m.has_map[d]]
    ctx = encode_in_context(encoder, [m.global_summaries[d] or "" for d in mapped], [text] * len(mapped),
                            pool="query") if mapped and p.alpha < 1 else None
    out = {}
    for d in docs:
        rows = np.flatnonzero(m.chunk_doc == d)
        vecs = m.chunk_vecs[rows]
        q = qvec
        if m.has_map[d]:
            if ctx is not None:
                q = condition_queries(qvec[None], ctx[mapped.index(d)][None], p.alpha)[0]
            secs = m.chunk_section[rows]
            if (p.gamma or p.tau) and len(m.section_vecs[d]) and (secs >= 0).all():
                heads = m.title_vecs[d] if d < len(m.title_vecs) else None
                vecs = section_aware_chunks(vecs, m.section_vecs[d], secs, p.gamma, heads, p.tau)
        out[d] = (rows, vecs @ q)
    return out


def _map_search(encoder: Encoder, corpus: IndexedCorpus, text: str, qvec: np.ndarray, k: int,
                p: MapParamsSearch, doc_id: str | None) -> list[Hit]:
    m = corpus.maps
    assert m is not None
    plain = m.chunk_vecs @ qvec
    if doc_id is not None:  # within one document: rank its chunks
        if doc_id not in m.doc_ids:
            raise LookupError(f"unknown doc_id {doc_id!r} in domain {corpus.domain!r}")
        d = m.doc_ids.index(doc_id)
        rows, scores = _best_rows(corpus, encoder, text, qvec, [d], p)[d]
        order = np.argsort(-scores, kind="stable")[:k]
        return [_hit(corpus, doc_id, scores[i], plain[rows[i]], rows[i]) for i in order]
    n_docs = len(m.doc_ids)
    chunk_max = np.full(n_docs, -np.inf, np.float32)
    np.maximum.at(chunk_max, m.chunk_doc, plain)
    gv = np.where(m.has_map[:, None], m.global_vecs, 0)
    map_score = gv @ qvec
    map_score = np.where(m.has_map, map_score, chunk_max)  # no map: the document is judged by its chunks
    routed, route_scores = _route(map_score, chunk_max, p)
    best = _best_rows(corpus, encoder, text, qvec, list(routed), p)
    hits = []
    for d, sc in zip(routed, route_scores, strict=True):
        rows, scores = best[d]
        i = int(np.argmax(scores))
        hits.append(_hit(corpus, m.doc_ids[d], sc, chunk_max[d], rows[i]))
    if len(hits) < k:  # the rest by their best chunk, as bag-of-chunks would rank them
        seen = set(routed)
        fused = p.map_weight * map_score + (1 - p.map_weight) * chunk_max
        for d in np.argsort(-fused, kind="stable"):
            if len(hits) >= k:
                break
            if d in seen:
                continue
            rows = np.flatnonzero(m.chunk_doc == d)
            r = rows[int(np.argmax(plain[rows]))]
            hits.append(_hit(corpus, m.doc_ids[d], fused[d], chunk_max[d], r))
    return hits[:k]


def _route(map_score: np.ndarray, chunk_max: np.ndarray, p: MapParamsSearch) -> tuple[np.ndarray, np.ndarray]:
    fused = p.map_weight * map_score + (1 - p.map_weight) * chunk_max
    order = np.argsort(-fused, kind="stable")[:p.top_r]
    return order, fused[order]
