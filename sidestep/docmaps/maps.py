"""Document maps (idea 3, MiA-RAG on a CPU): sections -> section summaries -> one global summary.

A map is built from what the pipeline already computed. Sentence embeddings are the mean of
the document's *contextual token vectors* over each sentence's token span (the vectors the
encoder produced for the chunks), so summarizing a document never runs the encoder over its
text a second time; only the short summaries are encoded. That is what keeps summarization a
small share of reindex time.

The parts live beside this module: the data model in sidestep.docmaps.docmap, sentences and
their vectors in sidestep.docmaps.sentences, structural and topic sections in
sidestep.docmaps.sections, summarizers in sidestep.docmaps.summarizers. This module builds a
map from them, encodes maps, and holds the retrieval helpers: pure functions over vectors so
storage and serving can call them (query conditioning on the global summary, section-aware
chunk vectors, and routing documents by their maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sidestep.docmaps.docmap import DocMap, MapError, MapParams, Section
from sidestep.docmaps.sections import Heading, SectionSpan, find_headings, find_sections
from sidestep.docmaps.sentences import (
    TokenView,
    _unit,
    clean_text,
    sentence_vectors,
    split_sentences,
    token_view,
)
from sidestep.docmaps.summarizers import ExtractiveSummarizer, Passage, Summarizer, Summary

if TYPE_CHECKING:
    from sidestep.text.chunking import Chunk
    from sidestep.text.encoder import EncodedDoc, Encoder


# ----------------------------------------------------------------------------- building a map
def doc_title(text: str, heads: list[Heading] | None = None) -> str:
    """The document's own title when its markup names one (a level-1 <H1> or '#' near the top);
    a layout-inferred line such as "Introduction" is a section, not the document's title."""
    heads = find_headings(text) if heads is None else heads
    return next((h.title for h in heads if h.level == 1 and h.markup and h.start < 1000), "")


def build_map(text: str, tokens: TokenView | None = None, *, content_hash: str = "", title: str = "",
              summarizer: Summarizer | None = None, params: MapParams | None = None) -> DocMap:
    """Sections, a summary per section, and a global summary over the section summaries.

    `text` is the string the encoder read; `tokens` its contextual token vectors (see
    `token_view`); without them sections are cut evenly and summaries take leading
    sentences. Any summarizer failure, or a summary over budget, raises MapError.
    """
    p = params or MapParams()
    summ = summarizer or ExtractiveSummarizer()
    if not text.strip():
        raise MapError("empty document", content_hash)
    spans = split_sentences(text, p.max_sentence_chars)
    dim = tokens.vectors.shape[1] if tokens is not None else 0
    vecs = sentence_vectors(spans, tokens, dim) if tokens is not None else None
    sections = find_sections(text, spans, vecs, p)
    head_spans = [(h.start, h.end) for h in find_headings(text)]
    clean = [clean_text(text[a:b]) for a, b in spans]
    try:
        built, picks = _summarize_sections(summ, text, sections, spans, clean, vecs, head_spans, p)
        global_summary = _summarize_global(summ, built, picks, clean, vecs, p)
    except MapError as e:
        raise MapError(e.reason, content_hash) from e
    except Exception as e:  # a plug-in summarizer may fail in any way: never crash the batch
        raise MapError(f"{summ.name} summarizer failed: {type(e).__name__}: {e}", content_hash) from e
    return DocMap(content_hash, title or doc_title(text), built, global_summary, summ.name,
                  {"summarizer": summ.params(), "map": asdict(p)})


def _sentences_in(spans: Sequence[tuple[int, int]], a: int, b: int, heads: list[tuple[int, int]]) -> list[int]:
    """Sentences starting in [a, b) that are not heading lines."""
    return [i for i, (s, e) in enumerate(spans) if a <= s < b
            and not any(hs <= s and e <= he for hs, he in heads)]


def _summarize_sections(summ: Summarizer, text: str, sections: list[SectionSpan], spans, clean, vecs,
                        heads, p: MapParams) -> tuple[list[Section], list[tuple[list[int], Summary]]]:
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    built, picks = [], []
    for k, sp in enumerate(sections):
        lo, hi = np.searchsorted(starts, [sp.char_start, sp.char_end])
        idx = _sentences_in(spans[lo:hi], sp.char_start, sp.char_end, heads)
        idx = [lo + i for i in idx]
        passage = Passage([clean[i] for i in idx], vecs[idx] if vecs is not None else None, title=sp.title)
        s = _checked(summ.summarize(passage, p.section_budget_chars), p.section_budget_chars)
        built.append(Section(k, sp.title, sp.char_start, sp.char_end, s.text))
        picks.append((idx, s))
    return built, picks


def _summarize_global(summ: Summarizer, sections: list[Section], picks, clean, vecs, p: MapParams) -> str:
    """Hierarchical: summarize the section summaries, each weighted by its section's length."""
    sents, rows, weights = [], [], []
    for sec, (idx, s) in zip(sections, picks, strict=True):
        if s.picked is not None and vecs is not None:
            chosen = [idx[j] for j in s.picked if j < len(idx)]
            sents += [clean[i] for i in chosen]
            rows += chosen
            weights += [(sec.char_end - sec.char_start) / max(1, len(chosen))] * len(chosen)
        elif s.text:
            parts = [clean_text(s.text[a:b]) for a, b in split_sentences(s.text)]
            sents += parts
            rows += [-1] * len(parts)
            weights += [(sec.char_end - sec.char_start) / max(1, len(parts))] * len(parts)
    if not sents:
        raise MapError("no sentence to summarize")
    v = None
    if vecs is not None:
        v = np.zeros((len(rows), vecs.shape[1]), np.float32)
        known = [j for j, r in enumerate(rows) if r >= 0]
        v[known] = vecs[[rows[j] for j in known]]
    passage = Passage(sents, v, np.asarray(weights), title="")
    out = _checked(summ.summarize(passage, p.global_budget_chars), p.global_budget_chars).text
    if not out:
        raise MapError("empty global summary")
    return out


def _checked(s: Any, budget: int) -> Summary:
    if not isinstance(s, Summary) or not isinstance(s.text, str):
        raise MapError(f"summarizer returned {type(s).__name__}, not a Summary")
    if len(s.text) > budget:
        raise MapError(f"summary of {len(s.text)} chars exceeds the budget of {budget}")
    return s


def map_encoded(encoder: Encoder, encoded: EncodedDoc, text: str, *, title: str = "",
                summarizer: Summarizer | None = None, params: MapParams | None = None) -> DocMap:
    """build_map from an EncodedDoc; `text` is doc_text(title, body), the string the encoder read."""
    view = token_view(encoder.tokenizer, text, encoded)
    return build_map(text, view, content_hash=encoded.content_hash, title=title, summarizer=summarizer,
                     params=params)


def chunk_sections(doc_map: DocMap, chunks: Sequence[Chunk]) -> list[int]:
    """Each chunk's section: the one holding most of the chunk's characters (earlier on ties)."""
    if not doc_map.sections:
        return [0] * len(chunks)
    starts = np.asarray([s.char_start for s in doc_map.sections])
    ends = np.asarray([s.char_end for s in doc_map.sections])
    out = []
    for c in chunks:
        overlap = np.minimum(ends, c.char_end) - np.maximum(starts, c.char_start)
        if overlap.max() <= 0:  # an empty chunk: the section its position falls in
            out.append(int(max(0, np.searchsorted(starts, c.char_start, "right") - 1)))
        else:
            out.append(int(np.argmax(overlap)))
    return out


def chunk_section_weights(doc_map: DocMap, chunks: Sequence[Chunk]) -> np.ndarray:
    """(n_chunks, n_sections) share of each chunk's characters in each section (rows sum to 1).

    A chunk (~900 characters) often straddles a section boundary; weighting by overlap lets
    it carry both sections instead of the larger one only.
    """
    n = max(1, len(doc_map.sections))
    w = np.zeros((len(chunks), n), np.float32)
    if not doc_map.sections:
        w[:, 0] = 1.0
        return w
    starts = np.asarray([s.char_start for s in doc_map.sections])
    ends = np.asarray([s.char_end for s in doc_map.sections])
    for row, c in enumerate(chunks):
        overlap = np.clip(np.minimum(ends, c.char_end) - np.maximum(starts, c.char_start), 0, None)
        if overlap.sum() > 0:
            w[row] = overlap / overlap.sum()
        else:
            w[row, max(0, np.searchsorted(starts, c.char_start, "right") - 1)] = 1.0
    return w


# ----------------------------------------------------------------------------- map vectors
@dataclass
class MapVectors:
    """Encoded map: the global text's vector, one vector per section text and one per section
    heading path (unit rows; a section without a heading has a zero row)."""

    global_vec: np.ndarray  # (dim,)
    section_vecs: np.ndarray  # (n_sections, dim)
    title_vecs: np.ndarray | None = None  # (n_sections, dim); None in maps stored before headings had vectors


def encode_texts(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of short texts, truncated to the encoder's window (not the query limit)."""
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    ids = encoder.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                            max_length=encoder.max_seq - 2 - len(encoder.prompt_ids["document"]))["input_ids"]
    return encoder.encode_ids([encoder.wrap_specials(x) for x in ids], want_tokens=False, role="document")[0]


def embed_maps(encoder: Encoder, maps: Sequence[DocMap]) -> list[MapVectors]:
    """Encode every map's global text, section texts and section heading paths, batched across maps.

    Global texts (~150 tokens), section texts (~70) and heading paths (~15) are encoded in
    separate passes so a batch is never padded to a longer kind's length: that alone halves
    the cost of a map. The heading path gets a vector of its own because a summary's
    sentences drown it: "Episodes > Season 2 (2018)" is what a question about season 2 matches.
    """
    glob = encode_texts(encoder, [m.global_text() for m in maps])
    secs = encode_texts(encoder, [t for m in maps for t in m.section_texts()])
    titles = [s.title.strip() for m in maps for s in m.sections]
    named = [i for i, t in enumerate(titles) if t]
    heads = np.zeros((len(titles), secs.shape[1] if secs.ndim == 2 else encoder.dim), np.float32)
    if named:
        heads[named] = encode_texts(encoder, [titles[i] for i in named])
    out, row = [], 0
    for g, m in zip(glob, maps, strict=True):
        n = len(m.sections)
        out.append(MapVectors(g, secs[row:row + n], heads[row:row + n]))
        row += n
    return out


def encode_in_context(encoder: Encoder, contexts: Sequence[str], queries: Sequence[str], *,
                      pool: str = "all") -> np.ndarray:
    """e(context ⊕ query): the context is cut, never the query, so both fit one encoder window.

    pool="all" is MiA-RAG's form (mean over every token). pool="query" averages only the
    query's tokens, read in the context of the map: the query keeps its own direction and
    only its meaning is disambiguated by the summary.
    """
    if pool not in ("all", "query"):
        raise ValueError(f"unknown pool {pool!r}")
    tok = encoder.tokenizer
    q_ids = tok(list(queries), add_special_tokens=False, truncation=True,
                max_length=encoder.max_query_tokens - 2)["input_ids"]
    c_ids = tok(list(contexts), add_special_tokens=False)["input_ids"]
    room = encoder.max_seq - 2 - len(encoder.prompt_ids["query"])
    seqs = [encoder.wrap_specials(c[:max(0, room - len(q))] + q) for c, q in zip(c_ids, q_ids, strict=True)]
    pooled, tokens = encoder.encode_ids(seqs, want_tokens=pool == "query", role="query")
    if pool == "all":
        return pooled
    out = np.stack([t[-1 - len(q):-1].astype(np.float32).mean(0) if q else t.astype(np.float32).mean(0)
                    for t, q in zip(tokens, q_ids, strict=True)])
    return _unit(out)


# ----------------------------------------------------------------------------- conditioning, routing
def condition_queries(query_vecs: np.ndarray, context_vecs: np.ndarray, alpha: float) -> np.ndarray:
    """MiA-RAG's cheap form: normalize(alpha * e(q) + (1 - alpha) * e(global summary ⊕ q))."""
    return _unit(alpha * np.asarray(query_vecs, np.float32) + (1 - alpha) * np.asarray(context_vecs, np.float32))


def section_aware_chunks(chunk_vecs: np.ndarray, section_vecs: np.ndarray,
                         chunk_section: Sequence[int] | np.ndarray, gamma: float,
                         title_vecs: np.ndarray | None = None, tau: float = 0.0) -> np.ndarray:
    """normalize(e(chunk) + gamma * e(section)) + tau * e(heading path): each chunk carries its
    section's map entry (heading path + summary, and the heading path on its own), without
    re-encoding any chunk.

    The heading term is added after normalizing, so a chunk's score is its section-aware
    cosine plus tau times its heading's cosine: a fixed bonus per section that gamma's
    normalization cannot shrink.

    `chunk_section` is either each chunk's section index (`chunk_sections`) or an
    (n_chunks, n_sections) overlap matrix (`chunk_section_weights`, the default in the
    benchmark), in which case a straddling chunk carries the overlap-weighted mix.
    """
    out = np.asarray(chunk_vecs, np.float32)
    if len(section_vecs) == 0:
        return out
    assign = np.asarray(chunk_section)

    def per_chunk(v: np.ndarray) -> np.ndarray:
        return assign @ v if assign.ndim == 2 else v[assign.astype(np.int64)]

    if gamma:
        out = _unit(out + gamma * per_chunk(section_vecs))
    if tau and title_vecs is not None and len(title_vecs):
        out = out + tau * per_chunk(np.asarray(title_vecs, np.float32))
    return out


def doc_max_scores(scores: np.ndarray, chunk_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """(n_queries, n_docs) best chunk score per document from (n_queries, n_chunks) scores."""
    out = np.full((scores.shape[0], n_docs), -np.inf, np.float32)
    for d in range(n_docs):
        cols = np.flatnonzero(chunk_doc == d)
        if len(cols):
            out[:, d] = scores[:, cols].max(1)
    return out


def route_documents(query_vecs: np.ndarray, global_vecs: np.ndarray, top_r: int, *,
                    chunk_max: np.ndarray | None = None, map_weight: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-R documents per query by map score, optionally fused with the best-chunk score:
    score = w * cos(q, e(global)) + (1 - w) * max_chunk cos(q, chunk). Returns (docs, scores)."""
    score = np.asarray(query_vecs, np.float32) @ np.asarray(global_vecs, np.float32).T
    if chunk_max is not None and map_weight < 1:
        score = map_weight * score + (1 - map_weight) * chunk_max
    r = min(top_r, score.shape[1])
    order = np.argsort(-score, axis=1, kind="stable")[:, :r]
    return order, np.take_along_axis(score, order, axis=1)
