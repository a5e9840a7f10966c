"""Long-document evidence retrieval benchmark (L-Eval layout) for document maps.

A question's evidence is the chunk that contains its answer string (case-insensitive,
whitespace-normalized, on word boundaries). Questions are left out, and counted by reason,
when the answer is not in the document, is only yes/no (it names no evidence), sits across a
chunk boundary, or lies beyond the indexed chunks.

Every document is chunked and encoded once; maps are built from those token vectors. Within
one document we compare bag-of-chunks (plain dense), the map-conditioned query, section-aware
chunks and both together. Across the corpus (all documents of the file indexed together) we
compare bag-of-chunks with routing by maps first.

Protocol: repeated two-fold cross-fitting. Each file's documents are split in two halves by
a seed; map parameters (alpha, pooling, gamma, tau, routing fusion, R) are tuned on one half's
questions (of all files evaluated together, so one setting serves every kind of document) and
applied to the other half's, then the halves swap, and the whole is repeated with new seeds.
Every question is held out once per repeat; no figure comes from a question its setting was
tuned on. With twenty documents per file, one split decides which documents are held out and
moves Recall@3 by several points either way; the repeats average that luck out.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sidestep.docmaps.docmap import DocMap, MapError, MapParams
from sidestep.docmaps.maps import (
    MapVectors,
    chunk_section_weights,
    condition_queries,
    doc_max_scores,
    embed_maps,
    encode_in_context,
    map_encoded,
    section_aware_chunks,
)
from sidestep.docmaps.summarizers import Summarizer
from sidestep.text.encoder import EncodedDoc, Encoder

KS = (1, 3, 5)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
GAMMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5)
ROUTE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROUTE_R = (1, 2, 3, 5)
ROUTE_LAMBDAS = (0.0, 0.5, 1.0)
POOLS = ("all", "query")  # how e(global ⊕ query) is pooled, see maps.encode_in_context
_YES_NO = {"yes", "no", "unanswerable", "none"}


# ----------------------------------------------------------------------------- data
@dataclass
class LongDocSet:
    """Unique documents and their questions (duplicated documents are merged, and counted)."""

    name: str
    texts: list[str]
    questions: list[str]
    answers: list[str]
    q_doc: list[int]
    n_records: int = 0
    n_duplicate_docs: int = 0
    n_duplicate_questions: int = 0

    @property
    def hashes(self) -> list[str]:
        return [hashlib.sha256(t.encode()).hexdigest()[:16] for t in self.texts]


def load_leval(path: str | Path) -> LongDocSet:
    """Read an L-Eval JSONL file: `input` = document, `instructions` = questions, `outputs` = answers."""
    path = Path(path)
    ds = LongDocSet(path.stem, [], [], [], [])
    index: dict[str, int] = {}
    seen: set[tuple[int, str, str]] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        ds.n_records += 1
        text = rec["input"]
        if text in index:
            ds.n_duplicate_docs += 1
        d = index.setdefault(text, len(ds.texts))
        if d == len(ds.texts):
            ds.texts.append(text)
        for q, a in zip(rec["instructions"], rec["outputs"], strict=True):
            if (d, q, a) in seen:
                ds.n_duplicate_questions += 1
                continue
            seen.add((d, q, a))
            ds.questions.append(q)
            ds.answers.append(a)
            ds.q_doc.append(d)
    return ds


def normalize(text: str) -> tuple[str, np.ndarray]:
    """Lower-cased, whitespace-collapsed text and, per character, its index in the original."""
    parts: list[str] = []
    idx: list[np.ndarray] = []
    for m in re.finditer(r"\S+", text):
        w = m.group().lower()
        if len(w) != m.end() - m.start():
            w = m.group()
        if parts:
            parts.append(" ")
            idx.append(np.asarray([m.start() - 1]))
        parts.append(w)
        idx.append(np.arange(m.start(), m.end()))
    return "".join(parts), (np.concatenate(idx) if idx else np.zeros(0, np.int64))


def answer_spans(norm: str, index: np.ndarray, answer: str) -> list[tuple[int, int]]:
    """Char spans in the original text where the answer occurs on word boundaries."""
    a, _ = normalize(answer)
    if not a:
        return []
    pat = re.compile(r"(?<!\w)" + re.escape(a) + r"(?!\w)")
    return [(int(index[m.start()]), int(index[m.end() - 1]) + 1) for m in pat.finditer(norm)]


def evidence_chunks(spans: Sequence[tuple[int, int]], chunks: Sequence[Any]) -> tuple[list[int], str | None]:
    """Chunks that wholly contain an occurrence; otherwise the reason the question is left out."""
    ev = sorted({c.chunk_idx for a, b in spans for c in chunks if c.char_start <= a and b <= c.char_end})
    if ev:
        return ev, None
    if not spans:
        return [], "answer_not_in_document"
    covered = chunks[-1].char_end if chunks else 0
    if all(a >= covered for a, _ in spans):
        return [], "answer_beyond_indexed_chunks"
    return [], "answer_across_chunk_boundary"


# ----------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """Everything computed once per file: chunks, maps, vectors, evidence, timings."""

    ds: LongDocSet
    encoded: list[EncodedDoc]
    maps: list[DocMap | None]
    map_vecs: list[MapVectors | None]
    chunk_w: list[np.ndarray]  # per document (n_chunks, n_sections) overlap weights
    evidence: list[list[int]]
    used: np.ndarray  # question indices with evidence
    left_out: dict[str, int]
    q_vecs: np.ndarray
    timing: dict[str, float]
    map_errors: dict[str, str] = field(default_factory=dict)
    _ctx: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)  # (pool, question, doc)
    _chunks: dict[tuple[int, float, float], np.ndarray] = field(default_factory=dict)  # (doc, gamma, tau)
    _ranks: dict[Any, dict[int, int]] = field(default_factory=dict)  # setting -> question -> rank


def encode_and_map(encoder: Encoder, ds: LongDocSet, *, encoded: Sequence[EncodedDoc] | None = None,
                   summarizer: Summarizer | None = None, params: MapParams | None = None,
                   window_tokens: int = 256, overlap_tokens: int = 32, max_chunks: int = 256, block: int = 4,
                   repeats: int = 1) -> tuple[list[EncodedDoc], list[DocMap | None], list[MapVectors | None], dict[str, str],
                              dict[str, float]]:
    """Chunk + encode (the reindex cost) and map (the summarize cost), alternating by blocks of
    documents, so that their time ratio is robust to load on a shared machine while each step
    still batches like the pipeline does. With repeats > 1 each block is timed several times
    and the fastest run counts for each step (timeit's rule: slower runs measure interference
    from other processes, not the work). A failed map is recorded; its document stays
    searchable without it.
    """
    out_enc: list[EncodedDoc] = []
    maps: list[DocMap | None] = []
    vecs: list[MapVectors | None] = []
    errors: dict[str, str] = {}
    wall = np.zeros(2)  # chunk+encode, summarize
    cpu = np.zeros(2)
    for lo in range(0, len(ds.texts), block):
        texts, hashes = ds.texts[lo:lo + block], ds.hashes[lo:lo + block]
        b_wall, b_cpu = np.full(2, np.inf), np.full(2, np.inf)
        for _ in range(max(1, repeats)):
            t0, c0 = time.perf_counter(), time.process_time()
            part = list(encoded[lo:lo + block]) if encoded is not None else encoder.encode_documents(
                [(h, "", t) for h, t in zip(hashes, texts, strict=True)], window_tokens=window_tokens,
                overlap_tokens=overlap_tokens, max_chunks=max_chunks)
            t1, c1 = time.perf_counter(), time.process_time()
            m, v = _map_block(encoder, texts, part, summarizer, params, errors)
            b_wall = np.minimum(b_wall, (t1 - t0, time.perf_counter() - t1))
            b_cpu = np.minimum(b_cpu, (c1 - c0, time.process_time() - c1))
        wall += b_wall
        cpu += b_cpu
        out_enc += part
        maps += m
        vecs += v
    n = max(1, len(ds.texts))
    timing = {"summarize_s": float(wall[1]), "summarize_s_per_doc": float(wall[1]) / n,
              "summarize_cpu_s": float(cpu[1]), "timing_repeats": repeats}
    if encoded is None:
        timing |= {"chunk_encode_s": float(wall[0]), "chunk_encode_cpu_s": float(cpu[0]),
                   "summarize_share_of_reindex": float(wall[1] / max(wall[0], 1e-9)),
                   "summarize_cpu_share_of_reindex": float(cpu[1] / max(cpu[0], 1e-9))}
    return out_enc, maps, vecs, errors, timing


def _map_block(encoder: Encoder, texts: Sequence[str], encoded: Sequence[EncodedDoc],
               summarizer: Summarizer | None, params: MapParams | None, errors: dict[str, str]
               ) -> tuple[list[DocMap | None], list[MapVectors | None]]:
    maps: list[DocMap | None] = []
    for text, e in zip(texts, encoded, strict=True):
        try:
            maps.append(map_encoded(encoder, e, text, summarizer=summarizer, params=params))
        except MapError as err:
            maps.append(None)
            errors[e.content_hash] = err.reason
    vecs = iter(embed_maps(encoder, [m for m in maps if m is not None]))
    return maps, [next(vecs) if m is not None else None for m in maps]


def prepare(encoder: Encoder, ds: LongDocSet, *, encoded: Sequence[EncodedDoc] | None = None,
            summarizer: Summarizer | None = None, params: MapParams | None = None,
            max_chunks: int = 256, timing_repeats: int = 1) -> Prepared:
    """Encode (unless given), map, find evidence, encode the questions."""
    encoded, maps, map_vecs, errors, timing = encode_and_map(
        encoder, ds, encoded=encoded, summarizer=summarizer, params=params, max_chunks=max_chunks,
        repeats=timing_repeats)
    chunk_w = [chunk_section_weights(m, e.chunks) if m else np.ones((len(e.chunks), 1), np.float32)
               for m, e in zip(maps, encoded, strict=True)]
    evidence, used, left = _evidence(ds, encoded)
    timing["encoded_chunk_tokens"] = sum(c.tok_end - c.tok_start for e in encoded for c in e.chunks)
    prep = Prepared(ds, encoded, maps, map_vecs, chunk_w, evidence, used, left,
                    encoder.encode_queries(ds.questions), timing, errors)
    for pool in POOLS:
        fill_context(prep, encoder, pool, {(i, d) for i, d in enumerate(ds.q_doc)})
    return prep


def _evidence(ds: LongDocSet, encoded: Sequence[EncodedDoc]) -> tuple[list[list[int]], np.ndarray, dict[str, int]]:
    norms = [normalize(t) for t in ds.texts]
    evidence, used = [], []
    left: dict[str, int] = {}
    for i, (a, d) in enumerate(zip(ds.answers, ds.q_doc, strict=True)):
        if a.strip().lower().rstrip(".") in _YES_NO:
            ev, why = [], "yes_no_answer"
        else:
            ev, why = evidence_chunks(answer_spans(*norms[d], a), encoded[d].chunks)
        evidence.append(ev)
        if why:
            left[why] = left.get(why, 0) + 1
        else:
            used.append(i)
    return evidence, np.asarray(used, dtype=np.int64), left


def fill_context(prep: Prepared, encoder: Encoder, pool: str, pairs: set[tuple[int, int]]) -> None:
    """Encode e(global text of document d ⊕ question i) for pairs not seen yet (the plain
    query where d has no map, so a failed map falls back to bag-of-chunks)."""
    todo = sorted(p for p in pairs if (pool, *p) not in prep._ctx)
    with_map = [(i, d) for i, d in todo if prep.maps[d] is not None]
    if with_map:
        ctx = [prep.maps[d].global_text() for _, d in with_map]
        vecs = encode_in_context(encoder, ctx, [prep.ds.questions[i] for i, _ in with_map], pool=pool)
        prep._ctx.update({(pool, i, d): v for (i, d), v in zip(with_map, vecs, strict=True)})
    prep._ctx.update({(pool, i, d): prep.q_vecs[i] for i, d in todo if prep.maps[d] is None})


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class MapSetting:
    """How a question meets one document's chunks: plain when alpha=1 and gamma=tau=0."""

    alpha: float = 1.0
    gamma: float = 0.0
    pool: str = "all"
    tau: float = 0.0


PLAIN = MapSetting()


def doc_chunks(prep: Prepared, d: int, gamma: float, tau: float = 0.0) -> np.ndarray:
    """Document d's chunk vectors carrying gamma times their sections' map vectors and tau
    times their heading paths' (cached)."""
    key = (d, gamma, tau)
    if key not in prep._chunks:
        mv = prep.map_vecs[d]
        sec = mv.section_vecs if mv is not None else np.zeros((0, prep.q_vecs.shape[1]), np.float32)
        heads = mv.title_vecs if mv is not None else None
        prep._chunks[key] = section_aware_chunks(prep.encoded[d].pooled, sec, prep.chunk_w[d], gamma, heads, tau)
    return prep._chunks[key]


def chunk_scores(prep: Prepared, i: int, d: int, ms: MapSetting) -> np.ndarray:
    """Scores of document d's chunks for question i (context vector must be filled for alpha<1)."""
    q = prep.q_vecs[i]
    if ms.alpha < 1:
        q = condition_queries(q[None], prep._ctx[(ms.pool, i, d)][None], ms.alpha)[0]
    return doc_chunks(prep, d, ms.gamma, ms.tau) @ q


def _rank(scores: np.ndarray, relevant: Sequence[int]) -> int:
    best = scores[list(relevant)].max()
    return int((scores > best).sum())


def within_ranks(prep: Prepared, qs: np.ndarray, ms: MapSetting) -> np.ndarray:
    """0-based rank of the best evidence chunk among its own document's chunks (cached per
    setting and question: the grid search revisits every question once per fold)."""
    cache = prep._ranks.setdefault(ms, {})
    for i in qs:
        if int(i) not in cache:
            cache[int(i)] = _rank(chunk_scores(prep, int(i), prep.ds.q_doc[i], ms), prep.evidence[i])
    return np.asarray([cache[int(i)] for i in qs], dtype=np.int64)


def recalls(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    if len(ranks) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


def paired_delta(ranks: np.ndarray, base: np.ndarray, k: int = 3, n_boot: int = 2000, seed: int = 0
                 ) -> dict[str, float]:
    """Recall@k difference against a baseline on the same questions, with a paired bootstrap
    95% interval over questions: on a few dozen questions one question moves recall by
    several points. With (repeats, questions) arrays a question's hit is averaged over the
    repeats first, so the interval resamples questions, not repeats."""
    if ranks.size == 0:
        return {"delta": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan")}
    diff = (np.atleast_2d(ranks) < k).astype(np.float64).mean(0) - (np.atleast_2d(base) < k).mean(0)
    boot = np.random.default_rng(seed).choice(diff, size=(n_boot, len(diff))).mean(1)
    return {"delta": float(diff.mean()), "ci95_low": float(np.quantile(boot, 0.025)),
            "ci95_high": float(np.quantile(boot, 0.975))}


OBJECTIVE_KS = (1, 2, 3, 4, 5, 7, 10)


def _objective(ranks: np.ndarray) -> float:
    """Mean Recall@1..10 of the evidence chunk. Recall@3 alone, on a few dozen dev questions,
    moves in steps of one question and picks settings by luck; the mean over cut-offs rewards
    a setting that moves evidence up anywhere near the top."""
    return float(np.mean([np.mean(ranks < k) for k in OBJECTIVE_KS])) if len(ranks) else 0.0


def _distance(ms: MapSetting) -> float:
    return abs(1 - ms.alpha) + ms.gamma + ms.tau


def tune_within(preps: Sequence[Prepared], devs: Sequence[np.ndarray], grid: Sequence[MapSetting]) -> MapSetting:
    """Grid search on the dev questions of all files together (one setting serves every kind
    of document); ties go to the setting closest to plain retrieval."""
    best, best_key = PLAIN, None
    for ms in grid:
        ranks = np.concatenate([within_ranks(p, q, ms) for p, q in zip(preps, devs, strict=True)])
        key = (_objective(ranks), -_distance(ms))
        if best_key is None or key > best_key:
            best, best_key = ms, key
    return best


TAUS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def grids() -> dict[str, list[MapSetting]]:
    """The settings each map mode may choose from."""
    return {
        "map_query": [MapSetting(float(a), 0.0, pool) for pool in POOLS for a in ALPHAS],
        "section_aware": [MapSetting(1.0, float(g), "all", float(t)) for g in GAMMAS for t in TAUS],
    }


# ----------------------------------------------------------------------------- across the corpus
@dataclass(frozen=True)
class RouteSetting:
    map_weight: float  # routing score = w * cos(q, e(map)) + (1 - w) * best plain chunk score
    top_r: int  # documents searched after routing
    doc_lambda: float  # chunk score + lambda * routing score when ranking chunks of several documents
    chunks: MapSetting = PLAIN


def _all_chunks(prep: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = [len(e.chunks) for e in prep.encoded]
    return (np.concatenate([e.pooled for e in prep.encoded]), np.repeat(np.arange(len(sizes)), sizes),
            np.concatenate([[0], np.cumsum(sizes)]))


def _doc_rank(doc_scores: np.ndarray, d: int) -> int:
    return int((doc_scores > doc_scores[d]).sum())


def bag_corpus(prep: Prepared, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain dense over all chunks of the file: (evidence chunk rank, document rank by best chunk)."""
    chunks, owner, offsets = _all_chunks(prep)
    scores = prep.q_vecs[qs] @ chunks.T
    dmax = doc_max_scores(scores, owner, len(prep.encoded))
    c_ranks, d_ranks = [], []
    for row, i in enumerate(qs):
        d = prep.ds.q_doc[i]
        c_ranks.append(_rank(scores[row], [offsets[d] + j for j in prep.evidence[i]]))
        d_ranks.append(_doc_rank(dmax[row], d))
    return np.asarray(c_ranks, dtype=np.int64), np.asarray(d_ranks, dtype=np.int64)


def route_scores(prep: Prepared, qs: np.ndarray, map_weight: float) -> np.ndarray:
    """(len(qs), n_docs) routing scores; a document without a map routes by its best chunk."""
    chunks, owner, _ = _all_chunks(prep)
    q = prep.q_vecs[qs]
    dmax = doc_max_scores(q @ chunks.T, owner, len(prep.encoded))
    g = np.stack([m.global_vec if m is not None else np.zeros(q.shape[1], np.float32) for m in prep.map_vecs])
    has_map = np.asarray([m is not None for m in prep.map_vecs])
    mapped = np.where(has_map[None, :], q @ g.T, dmax)
    return map_weight * mapped + (1 - map_weight) * dmax


def routed_corpus(prep: Prepared, encoder: Encoder, qs: np.ndarray, rs: RouteSetting,
                  dscores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Route each question to its top-R documents, then rank their chunks (map-conditioned per
    document); returns (evidence chunk ranks, 10**9 when routing missed; document ranks)."""
    dscores = route_scores(prep, qs, rs.map_weight) if dscores is None else dscores
    routed = np.argsort(-dscores, axis=1, kind="stable")[:, :rs.top_r]
    if rs.chunks.alpha < 1:
        pairs = {(int(i), int(d)) for i, row in zip(qs, routed, strict=True) for d in row}
        fill_context(prep, encoder, rs.chunks.pool, pairs)
    c_ranks, d_ranks = [], []
    for row, i in enumerate(qs):
        d_true = prep.ds.q_doc[i]
        d_ranks.append(_doc_rank(dscores[row], d_true))
        if d_true not in routed[row]:
            c_ranks.append(10**9)
            continue
        parts = {int(d): chunk_scores(prep, int(i), int(d), rs.chunks) + rs.doc_lambda * dscores[row, d]
                 for d in routed[row]}
        best = parts[d_true][prep.evidence[i]].max()
        c_ranks.append(int(sum((p > best).sum() for p in parts.values())))
    return np.asarray(c_ranks, dtype=np.int64), np.asarray(d_ranks, dtype=np.int64)


def tune_routing(preps: Sequence[Prepared], encoder: Encoder, devs: Sequence[np.ndarray], chunks: MapSetting
                 ) -> RouteSetting:
    """Grid over fusion weight, R and the document-score bonus on dev questions; ties go to
    the smaller R (less work per query)."""
    best, best_key = None, None
    for w in ROUTE_WEIGHTS:
        dscores = [route_scores(p, q, w) for p, q in zip(preps, devs, strict=True)]
        for r in ROUTE_R:
            for lam in ROUTE_LAMBDAS:
                rs = RouteSetting(w, r, lam, chunks)
                res = [routed_corpus(p, encoder, q, rs, s) for p, q, s in zip(preps, devs, dscores, strict=True)]
                c = np.concatenate([x[0] for x in res])
                d = np.concatenate([x[1] for x in res])
                key = (_objective(c), float(np.mean(d < r)) if len(d) else 0.0, -r, w)
                if best_key is None or key > best_key:
                    best, best_key = rs, key
    assert best is not None
    return best


# ----------------------------------------------------------------------------- the benchmark
def doc_folds(n_docs: int, seed: int = 0) -> np.ndarray:
    """Half of the documents in fold 0, the rest in fold 1, by a fixed seed."""
    perm = np.random.default_rng(seed).permutation(n_docs)
    fold = np.zeros(n_docs, np.int64)
    fold[perm[n_docs // 2:]] = 1
    return fold


def split_questions(prep: Prepared, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fold 0, fold 1) question indices: a document's questions all fall on one side."""
    fold = doc_folds(len(prep.ds.texts), seed)
    qf = fold[np.asarray(prep.ds.q_doc, dtype=np.int64)[prep.used]] if len(prep.used) else np.zeros(0, np.int64)
    return prep.used[qf == 0], prep.used[qf == 1]


@dataclass
class Tuned:
    query: MapSetting  # map-conditioned query only
    section: MapSetting  # section-aware chunks only
    both: MapSetting
    route: RouteSetting

    def as_dict(self) -> dict[str, Any]:
        return {"map_query": self.query.__dict__, "section_aware": self.section.__dict__,
                "map_conditioned": self.both.__dict__,
                "map_routing": {**{k: v for k, v in self.route.__dict__.items() if k != "chunks"},
                                "chunks": self.route.chunks.__dict__}}


def tune(preps: Sequence[Prepared], encoder: Encoder, devs: Sequence[np.ndarray]) -> Tuned:
    """Every map parameter, chosen on dev questions only."""
    g = grids()  # prepare() encoded every question's context with its own document
    query, section = (tune_within(preps, devs, g[k]) for k in ("map_query", "section_aware"))
    both = tune_within(preps, devs, [replace(q, gamma=section.gamma, tau=section.tau) for q in g["map_query"]])
    return Tuned(query, section, both, tune_routing(preps, encoder, devs, both))


WITHIN = ("bag_of_chunks", "map_query", "section_aware", "map_conditioned")
CORPUS = ("bag_of_chunks", "map_routing")


@dataclass
class HeldOut:
    """Held-out ranks of one file: per mode, a (repeats, n_used) array aligned with prep.used."""

    within: dict[str, np.ndarray]
    corpus: dict[str, np.ndarray]
    doc_ranks: dict[str, np.ndarray]
    map_only_doc_ranks: np.ndarray
    top_r: np.ndarray  # (repeats, n_used) routing depth the question's fold was tuned to
    half: np.ndarray  # (repeats, n_used) which half of that repeat's split held the question out


def cross_fit(preps: Sequence[Prepared], encoder: Encoder, *, seed: int = 0, repeats: int = 5,
              log: Callable[[str], None] | None = None) -> tuple[list[HeldOut], list[dict[str, Any]]]:
    """Repeated two-fold cross-fitting: for each repeat, documents are split in halves; every
    setting is tuned on one half's questions (all files together) and applied to the other
    half's, then the halves swap. Each question is held out exactly once per repeat, so every
    question counts, and averaging over repeats removes most of the luck of one split."""
    shape = [(repeats, len(p.used)) for p in preps]
    out = [HeldOut({m: np.zeros(s, np.int64) for m in WITHIN}, {m: np.zeros(s, np.int64) for m in CORPUS},
                   {m: np.zeros(s, np.int64) for m in CORPUS}, np.zeros(s, np.int64), np.zeros(s, np.int64),
                   np.zeros(s, np.int64)) for s in shape]
    settings: list[dict[str, Any]] = []
    pos = [{int(i): j for j, i in enumerate(p.used)} for p in preps]
    for r in range(repeats):
        halves = [split_questions(p, seed + r) for p in preps]
        for fold in (0, 1):
            devs = [h[fold] for h in halves]
            tests = [h[1 - fold] for h in halves]
            tuned = tune(preps, encoder, devs)
            settings.append({"repeat": r, "split_seed": seed + r, "tuned_on_fold": fold, **tuned.as_dict()})
            if log:
                log(f"repeat {r + 1}/{repeats} fold {fold}: tuned on {sum(len(d) for d in devs)} questions: "
                    f"{tuned.as_dict()}")
            for p, test, ho, where in zip(preps, tests, out, pos, strict=True):
                if not len(test):
                    continue
                cols = np.asarray([where[int(i)] for i in test])
                for mode, ms in zip(WITHIN, (PLAIN, tuned.query, tuned.section, tuned.both), strict=True):
                    ho.within[mode][r, cols] = within_ranks(p, test, ms)
                ho.corpus["bag_of_chunks"][r, cols], ho.doc_ranks["bag_of_chunks"][r, cols] = bag_corpus(p, test)
                ho.corpus["map_routing"][r, cols], ho.doc_ranks["map_routing"][r, cols] = routed_corpus(
                    p, encoder, test, tuned.route)
                ho.map_only_doc_ranks[r, cols] = [_doc_rank(row, p.ds.q_doc[i]) for row, i in
                                                  zip(route_scores(p, test, 1.0), test, strict=True)]
                ho.top_r[r, cols] = tuned.route.top_r
                ho.half[r, cols] = 1 - fold
    return out, settings


def _half_deltas(ranks: np.ndarray, base: np.ndarray, half: np.ndarray, k: int = 3) -> list[float]:
    """Recall@k gain on each held-out half alone (repeat by repeat): what a single split would have
    reported, to show how far one split's luck reaches."""
    return [float(np.mean(ranks[r, half[r] == h] < k) - np.mean(base[r, half[r] == h] < k))
            for r in range(ranks.shape[0]) for h in (0, 1) if (half[r] == h).any()]


def _recalls_2d(ranks: np.ndarray) -> dict[str, float]:
    return recalls(ranks.ravel())


def report(prep: Prepared, ho: HeldOut) -> dict[str, Any]:
    """Every metric on the held-out questions of one file (averaged over the repeats)."""
    ds = prep.ds
    sections = [len(m.sections) for m in prep.maps if m is not None]
    base = ho.within["bag_of_chunks"]
    d_bag, d_map = ho.doc_ranks["bag_of_chunks"], ho.doc_ranks["map_routing"]
    routed = d_map < ho.top_r
    return {
        "subset": ds.name,
        "documents": len(ds.texts), "records": ds.n_records, "duplicate_documents": ds.n_duplicate_docs,
        "questions": len(ds.questions), "duplicate_questions": ds.n_duplicate_questions,
        "questions_with_evidence": int(len(prep.used)), "questions_left_out": prep.left_out,
        "held_out_questions": int(len(prep.used)), "repeats": int(base.shape[0]),
        "chunks": int(sum(len(e.chunks) for e in prep.encoded)),
        "sections_per_doc": float(np.mean(sections)) if sections else 0.0,
        "map_errors": prep.map_errors,
        "within_document": {k: _recalls_2d(v) for k, v in ho.within.items()},
        "within_document_delta_recall@3": {k: paired_delta(v, base) for k, v in ho.within.items()
                                           if k != "bag_of_chunks"},
        "within_document_recall@3_per_repeat": {k: [float(np.mean(row < 3)) for row in v]
                                                for k, v in ho.within.items()},
        "within_document_delta_recall@3_per_half": {k: _half_deltas(v, base, ho.half) for k, v in ho.within.items()
                                                    if k != "bag_of_chunks"},
        "corpus": {
            "bag_of_chunks": {**_recalls_2d(ho.corpus["bag_of_chunks"]),
                              "doc_accuracy@1": float(np.mean(d_bag < 1)),
                              "doc_accuracy@R": float(np.mean(d_bag < ho.top_r))},
            "map_routing": {**_recalls_2d(ho.corpus["map_routing"]), "doc_accuracy@1": float(np.mean(d_map < 1)),
                            "doc_accuracy@R": float(np.mean(routed)), "routing_accuracy": float(np.mean(routed))},
            "global_summary_only_routing": {"doc_accuracy@1": float(np.mean(ho.map_only_doc_ranks < 1)),
                                            "doc_accuracy@R": float(np.mean(ho.map_only_doc_ranks < ho.top_r))},
            "delta_recall@3": paired_delta(ho.corpus["map_routing"], ho.corpus["bag_of_chunks"]),
        },
        "timing": prep.timing,
    }


PROTOCOL = ("repeated two-fold cross-fitting: documents split in halves by seed, seed+1, ...; every parameter "
            "tuned on one half's questions (all files together, objective mean Recall@1..10) and applied to "
            "the other half's, then the halves swap; each question is held out once per repeat and every "
            "figure is the mean over repeats")


def _settings_summary(settings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The setting each mode chose most often over the folds (the full list is in `settings`)."""
    out = {}
    for mode in ("map_query", "section_aware", "map_conditioned", "map_routing"):
        seen = [json.dumps(s[mode], sort_keys=True) for s in settings]
        out[mode] = json.loads(max(set(seen), key=seen.count)) | {"chosen_in_folds": max(map(seen.count, seen))}
    return out


def evaluate(preps: Sequence[Prepared], encoder: Encoder, *, seed: int = 0, repeats: int = 5,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cross-fit over all files together, report each file on its held-out questions."""
    held, settings = cross_fit(preps, encoder, seed=seed, repeats=repeats, log=log)
    files = {p.ds.name: report(p, ho) for p, ho in zip(preps, held, strict=True)}
    return {"files": files, "tuned": _settings_summary(settings), "settings": settings, "protocol": PROTOCOL,
            "seed": seed, "repeats": repeats}


def run_longdoc(encoder: Encoder, paths: str | Path | Sequence[str | Path], *,
                summarizer: Summarizer | None = None, params: MapParams | None = None, max_chunks: int = 256,
                seed: int = 0, repeats: int = 5, timing_repeats: int = 1, log: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """`sidestep eval-longdoc FILE.jsonl [FILE.jsonl ...]`: the contract's keys (for the first
    file) first, then the whole report."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    preps = []
    for p in paths:
        preps.append(prepare(encoder, load_leval(p), summarizer=summarizer, params=params, max_chunks=max_chunks,
                             timing_repeats=timing_repeats))
        if log:
            t = preps[-1].timing
            log(f"{Path(p).name}: {len(preps[-1].ds.texts)} documents encoded and mapped "
                f"(summarize {t['summarize_s']:.1f} s, {t.get('summarize_share_of_reindex', 0):.0%} of chunk+encode)")
    rep = evaluate(preps, encoder, seed=seed, repeats=repeats, log=log)
    first = rep["files"][preps[0].ds.name]["within_document"]
    return {"bag_of_chunks": first["bag_of_chunks"], "map_conditioned": first["map_conditioned"], **rep}
