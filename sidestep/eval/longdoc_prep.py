"""Long-document benchmark, the data side: an L-Eval file (documents, questions, answers), each
question's evidence chunk (the chunk that contains its answer string, case-insensitive,
whitespace-normalized, on word boundaries; questions without one are counted by reason), and the
preparation done once per file (chunk, encode and map every document, encode the questions).
Scoring and tuning are in sidestep.eval.longdoc_scoring, the protocol in sidestep.eval.longdoc.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidestep.docmaps.docmap import DocMap, MapError, MapParams
from sidestep.docmaps.maps import (
    MapVectors,
    chunk_section_weights,
    embed_maps,
    encode_in_context,
    map_encoded,
)
from sidestep.docmaps.sentences import split_sentences
from sidestep.docmaps.summarizers import Summarizer
from sidestep.text.encoder import EncodedDoc, Encoder

POOLS = ("all", "query")
MAX_CHUNKS = 100_000  # the benchmark indexes whole documents: no answer lies beyond the indexed chunks
CHUNKINGS = ("sentences", "tokens")  # how e(global ⊕ query) is pooled, see maps.encode_in_context
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


Evidence = tuple[int, ...]  # chunks that together hold one occurrence of the answer


def evidence_chunks(spans: Sequence[tuple[int, int]], chunks: Sequence[Any]) -> tuple[list[Evidence], str | None]:
    """Each occurrence's evidence: every chunk that wholly contains it (one alternative each), or,
    where no chunk does, the fewest consecutive chunks that together cover it (found only if all
    of them rank in the top k). Nothing is left out for crossing a boundary; the reason is
    "answer_not_in_document" when there is no occurrence, and an occurrence past the last
    indexed chunk has no evidence (the question counts, as a miss)."""
    if not spans:
        return [], "answer_not_in_document"
    alts: set[Evidence] = set()
    for a, b in spans:
        inside = [(c.chunk_idx,) for c in chunks if c.char_start <= a and b <= c.char_end]
        alts.update(inside or filter(None, [_cover(a, b, chunks)]))
    return sorted(alts, key=lambda e: (len(e), e)), None


def _cover(a: int, b: int, chunks: Sequence[Any]) -> Evidence | None:
    """Greedy fewest chunks covering [a, b): from the chunk that reaches furthest among those
    holding a, hop to the one reaching furthest among those starting before the covered end."""
    out: list[int] = []
    pos = a
    while pos < b:
        reach = [c for c in chunks if c.char_start <= pos < c.char_end]
        if not reach:
            return None
        best = max(reach, key=lambda c: c.char_end)
        out.append(best.chunk_idx)
        pos = best.char_end
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """Everything computed once per file: chunks, maps, vectors, evidence, timings."""

    ds: LongDocSet
    encoded: list[EncodedDoc]
    maps: list[DocMap | None]
    map_vecs: list[MapVectors | None]
    chunk_w: list[np.ndarray]  # per document (n_chunks, n_sections) overlap weights
    evidence: list[list[Evidence]]  # per question, alternatives (any one found = found)
    used: np.ndarray  # question indices whose answer is in the document (every one is counted)
    left_out: dict[str, int]
    q_vecs: np.ndarray
    timing: dict[str, float]
    map_errors: dict[str, str] = field(default_factory=dict)
    evidence_kinds: dict[str, int] = field(default_factory=dict)  # inside one chunk / across chunks / beyond
    _ctx: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)  # (pool, question, doc)
    _chunks: dict[tuple[int, float, float], np.ndarray] = field(default_factory=dict)  # (doc, gamma, tau)
    _ranks: dict[Any, dict[int, int]] = field(default_factory=dict)  # setting -> question -> rank


def encode_and_map(encoder: Encoder, ds: LongDocSet, *, encoded: Sequence[EncodedDoc] | None = None,
                   summarizer: Summarizer | None = None, params: MapParams | None = None,
                   window_tokens: int = 256, overlap_tokens: int = 32, max_chunks: int = MAX_CHUNKS, block: int = 4,
                   repeats: int = 1, chunking: str = "sentences"
                   ) -> tuple[list[EncodedDoc], list[DocMap | None], list[MapVectors | None], dict[str, str],
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
                overlap_tokens=overlap_tokens, max_chunks=max_chunks, sentences=_splitter(chunking))
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


def _splitter(chunking: str):
    """Sentence-aligned windows with overlap (an answer inside two adjacent sentences never falls
    across a chunk boundary), or plain token windows."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"unknown chunking {chunking!r}; choose one of {CHUNKINGS}")
    return split_sentences if chunking == "sentences" else None


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
            max_chunks: int = MAX_CHUNKS, timing_repeats: int = 1, chunking: str = "sentences",
            pools: Sequence[str] = POOLS) -> Prepared:
    """Encode (unless given), map, find evidence, encode the questions."""
    encoded, maps, map_vecs, errors, timing = encode_and_map(
        encoder, ds, encoded=encoded, summarizer=summarizer, params=params, max_chunks=max_chunks, chunking=chunking,
        repeats=timing_repeats)
    chunk_w = [chunk_section_weights(m, e.chunks) if m else np.ones((len(e.chunks), 1), np.float32)
               for m, e in zip(maps, encoded, strict=True)]
    evidence, used, left, kinds = _evidence(ds, encoded)
    timing["encoded_chunk_tokens"] = sum(c.tok_end - c.tok_start for e in encoded for c in e.chunks)
    prep = Prepared(ds, encoded, maps, map_vecs, chunk_w, evidence, used, left,
                    encoder.encode_queries(ds.questions), timing, errors, kinds)
    for pool in pools:
        fill_context(prep, encoder, pool, {(i, d) for i, d in enumerate(ds.q_doc)})
    return prep


def _evidence(ds: LongDocSet, encoded: Sequence[EncodedDoc]
              ) -> tuple[list[list[Evidence]], np.ndarray, dict[str, int], dict[str, int]]:
    norms = [normalize(t) for t in ds.texts]
    evidence, used = [], []
    left: dict[str, int] = {}
    kinds: dict[str, int] = {"inside_one_chunk": 0, "across_chunks": 0, "beyond_indexed_chunks": 0}
    for i, (a, d) in enumerate(zip(ds.answers, ds.q_doc, strict=True)):
        if a.strip().lower().rstrip(".") in _YES_NO:
            ev, why = [], "yes_no_answer"
        else:
            ev, why = evidence_chunks(answer_spans(*norms[d], a), encoded[d].chunks)
        evidence.append(ev)
        if why:
            left[why] = left.get(why, 0) + 1
            continue
        used.append(i)
        kind = ("beyond_indexed_chunks" if not ev else "inside_one_chunk" if len(ev[0]) == 1 else "across_chunks")
        kinds[kind] += 1
    return evidence, np.asarray(used, dtype=np.int64), left, kinds


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


# ----------------------------------------------------------------------------- encoding cache
def encoded_cache_key(path: str | Path, chunking: str, encoder_key: str, max_chunks: int) -> str:
    """Content address of one file's chunk encodings: the file's bytes, the chunking, the encoder."""
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"{Path(path).stem}-{h}-{chunking}-{max_chunks}-{encoder_key}"


def save_encoded(file: Path, encoded: Sequence[EncodedDoc]) -> None:
    """Plain arrays (no pickle): per chunk its document, index, token and character span; pooled
    vectors; token vectors concatenated with their lengths. Written to a temporary name, then renamed."""
    rows = [(d, c.chunk_idx, c.tok_start, c.tok_end, c.char_start, c.char_end)
            for d, e in enumerate(encoded) for c in e.chunks]
    toks = [t for e in encoded for t in e.tokens]
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, chunks=np.asarray(rows, np.int64).reshape(-1, 6),
             pooled=np.concatenate([e.pooled for e in encoded]) if encoded else np.zeros((0, 0), np.float32),
             tokens=np.concatenate(toks) if toks else np.zeros((0, 0), np.float16),
             lengths=np.asarray([len(t) for t in toks], np.int64), hashes=np.asarray([e.content_hash for e in encoded]))
    tmp.replace(file)


def load_encoded(file: Path) -> list[EncodedDoc]:
    from sidestep.text.chunking import Chunk

    z = np.load(file, allow_pickle=False)
    chunks, pooled, tokens, lengths = z["chunks"], z["pooled"], z["tokens"], z["lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    out: list[EncodedDoc] = []
    for d, h in enumerate(z["hashes"].tolist()):
        rows = np.flatnonzero(chunks[:, 0] == d)
        out.append(EncodedDoc(h, [Chunk(*map(int, chunks[r, 1:])) for r in rows], pooled[rows],
                              [tokens[starts[r]:starts[r + 1]] for r in rows]))
    return out
