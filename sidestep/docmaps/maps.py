"""Document maps (idea 3, MiA-RAG on a CPU): sections -> section summaries -> one global summary.

A map is built from what the pipeline already computed. Sentence embeddings are the mean of
the document's *contextual token vectors* over each sentence's token span (the vectors the
encoder produced for the chunks), so summarizing a document never runs the encoder over its
text a second time; only the short summaries are encoded. That is what keeps summarization a
small share of reindex time.

Sections come from structure where the text has it (markdown ``#``, HTML-like ``<H2>``,
numbered headings, short heading lines) and from topic shifts in the sentence-embedding
sequence where it has not (TextTiling-style depth scores), always within min/max sizes. The
default summarizer is extractive (budgeted facility location over sentence embeddings); any
`Summarizer` can replace it, e.g. `LLMSummarizer` for an OpenAI-compatible endpoint.

Retrieval helpers at the end are pure functions over vectors so storage and serving can call
them: query conditioning on the global summary, section-aware chunk vectors, and routing
documents by their maps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from sidestep.text.chunking import Chunk
    from sidestep.text.encoder import EncodedDoc, Encoder


class MapError(Exception):
    """A document's map could not be built; the caller quarantines the map, not the document."""

    def __init__(self, reason: str, content_hash: str | None = None):
        super().__init__(reason if content_hash is None else f"{content_hash}: {reason}")
        self.reason = reason
        self.content_hash = content_hash


# ----------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class MapParams:
    """Sizes of a map. Defaults: a section is a few chunks (a chunk is ~900 chars), its summary
    two or three sentences; the global summary fits with a query in one encoder window."""

    section_budget_chars: int = 300
    global_budget_chars: int = 600
    min_section_chars: int = 1000
    max_section_chars: int = 6000
    max_sentence_chars: int = 500
    tiling_window: int = 3  # sentences on each side of a gap
    tiling_std: float = 0.5  # a topic boundary needs depth > mean + tiling_std * std


@dataclass(frozen=True)
class Section:
    idx: int
    title: str
    char_start: int
    char_end: int
    summary: str


@dataclass
class DocMap:
    """The map of one document: its sections (a partition of the text) and a global summary."""

    content_hash: str
    title: str
    sections: list[Section]
    global_summary: str
    summarizer: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DocMap:
        secs = [Section(**s) for s in d["sections"]]
        return cls(d["content_hash"], d["title"], secs, d["global_summary"], d["summarizer"],
                   dict(d.get("params") or {}))

    def global_text(self) -> str:
        """What represents the whole document to the encoder: its title, then its global summary."""
        return join_title(self.title, self.global_summary)

    def section_texts(self) -> list[str]:
        """What represents each section: its heading path, then its summary."""
        return [join_title(s.title, s.summary) for s in self.sections]


def join_title(title: str, body: str) -> str:
    return f"{title}: {body}" if title and body else (title or body)


# ----------------------------------------------------------------------------- text
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:[ _][^<>\n]{0,80})?/?>")
_BLOCK_TAG = re.compile(
    r"</?(?:p|h[1-6]|table|tr|ul|ol|li|dl|dd|dt|div|br|section|blockquote|pre|hr|caption)"
    r"(?:[ _][^<>\n]{0,80})?/?>", re.I)
_HARD_BREAK = re.compile(rf"\n|{_BLOCK_TAG.pattern}", re.I)
_SENT_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_ABBREV = {"e.g", "i.e", "al", "fig", "figs", "eq", "eqs", "dr", "mr", "mrs", "ms", "vs", "no", "st", "jr",
           "sr", "approx", "cf", "sec", "tab", "etc", "inc", "ltd", "co", "vol", "pp", "ref", "refs", "ca"}
_ALNUM = re.compile(r"\w")
_WS = re.compile(r"\s+")


def clean_text(s: str) -> str:
    """Readable text of a span: markup tags dropped, whitespace collapsed."""
    return _WS.sub(" ", _TAG.sub(" ", s)).strip()


def _is_abbrev(before: str) -> bool:
    """Whether the word ending at a period is an abbreviation or an initial (no sentence end)."""
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    word = word.rstrip(".").lstrip("([\"'")
    if not word:
        return False
    return word.lower() in _ABBREV or (len(word) == 1 and word.isalpha()) or bool(
        re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word))


def _cap(start: int, end: int, text: str, max_chars: int) -> list[tuple[int, int]]:
    """Split an over-long span at whitespace so no sentence exceeds max_chars."""
    out = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + max_chars // 2, start + max_chars)
        cut = cut if cut > start else start + max_chars
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if _ALNUM.search(text, start, end) else None


def split_sentences(text: str, max_chars: int = 500) -> list[tuple[int, int]]:
    """Sentence char spans [start, end) in document order, disjoint, none longer than max_chars.

    Line breaks and block-level markup (<P>, <Li>, <Tr>, <H2>, ...) always end a sentence, so
    tables and lists become row- or item-sized units; prose is split at . ! ? before a capital
    or digit, except after known abbreviations and initials. Spans without a letter or digit
    are dropped.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for brk in [*_HARD_BREAK.finditer(text), None]:
        seg_end = brk.start() if brk else len(text)
        _split_segment(text, pos, seg_end, max_chars, spans)
        pos = brk.end() if brk else len(text)
    return spans


def _split_segment(text: str, start: int, end: int, max_chars: int, out: list[tuple[int, int]]) -> None:
    cur = start
    for m in _SENT_END.finditer(text, start, end):
        if _is_abbrev(text[max(cur, m.start() - 20):m.start() + 1]):
            continue
        _emit(text, cur, m.start() + len(m.group(0).rstrip()), max_chars, out)
        cur = m.end()
    _emit(text, cur, end, max_chars, out)


def _emit(text: str, start: int, end: int, max_chars: int, out: list[tuple[int, int]]) -> None:
    span = _trim(text, start, end)
    if span:
        out.extend(s for s in _cap(*span, text, max_chars) if _trim(text, *s))


# ----------------------------------------------------------------------------- token vectors
@dataclass
class TokenView:
    """A document's tokens in order: char offsets and one contextual vector each.

    Only tokens the chunks cover are present (a document cut at max_chunks keeps a prefix).
    A token seen by two overlapping chunks takes the vector of the first chunk.
    """

    starts: np.ndarray  # (n,) int64 char start per token
    ends: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float16


def token_view(tokenizer: Any, text: str, encoded: EncodedDoc) -> TokenView:
    """Stitch an EncodedDoc's per-chunk token vectors into one sequence over `text`.

    `text` must be the string the encoder read (encoder.doc_text(title, text)); tokenizing it
    again is cheap and gives the char offsets the EncodedDoc does not keep.
    """
    offs = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces, filled = [], 0
    for c, tok in zip(encoded.chunks, encoded.tokens, strict=True):
        if c.tok_end <= filled:
            continue
        if c.tok_start > filled or tok.shape[0] != c.tok_end - c.tok_start + 2:
            raise MapError("chunk token vectors do not line up with the chunk plan", encoded.content_hash)
        lo = filled - c.tok_start
        pieces.append(tok[1 + lo:1 + c.tok_end - c.tok_start])
        filled = c.tok_end
    last = next((c for c in reversed(encoded.chunks) if c.tok_end == filled), None)
    if filled > len(offs) or (filled and (offs[0][0] != encoded.chunks[0].char_start
                                          or last is None or offs[filled - 1][1] != last.char_end)):
        raise MapError("token offsets do not match the encoded text", encoded.content_hash)
    dim = encoded.tokens[0].shape[1] if encoded.tokens else 0
    vecs = np.concatenate(pieces) if pieces else np.zeros((0, dim), np.float16)
    arr = np.asarray(offs[:filled], dtype=np.int64).reshape(-1, 2)
    return TokenView(arr[:, 0], arr[:, 1], vecs)


def sentence_vectors(spans: Sequence[tuple[int, int]], view: TokenView | None, dim: int = 0) -> np.ndarray:
    """Unit vector per sentence: the mean of its tokens' contextual vectors (zeros if no token)."""
    if view is None:
        return np.zeros((len(spans), dim), np.float32)
    out = np.zeros((len(spans), view.vectors.shape[1]), np.float32)
    if not spans or len(view.starts) == 0:
        return out
    bounds = np.asarray(spans, dtype=np.int64)
    a = np.searchsorted(view.starts, bounds[:, 0], "left")
    b = np.searchsorted(view.starts, bounds[:, 1], "left")
    ok = np.flatnonzero(b > a)
    if len(ok) == 0:
        return out
    idx = np.stack([a[ok], b[ok]], axis=1).ravel()
    if idx[-1] >= len(view.vectors):  # the last span runs to the end: reduceat sums to the end anyway
        idx = idx[:-1]
    sums = np.add.reduceat(view.vectors, idx, axis=0, dtype=np.float32)[0::2]
    out[ok] = _unit(sums / (b[ok] - a[ok])[:, None])
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class Heading:
    start: int
    end: int
    level: int
    title: str
    markup: bool = True  # from <Hn> or '#' markup, not inferred from layout


@dataclass(frozen=True)
class SectionSpan:
    title: str
    char_start: int
    char_end: int


_MD_HEAD = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(\S[^\n]*?)[ \t#]*$", re.M)
_HTML_HEAD = re.compile(r"<[Hh]([1-6])>([^<]{0,300})</[Hh]\1>")
_NUM_HEAD = re.compile(r"^[ \t]*(\d{1,2}(?:\.\d{1,2}){0,3})\.?[ \t]+([A-Z][^\n]{0,78})$", re.M)
_LINE = re.compile(r"^([A-Z][^\n]{0,79})$", re.M)


def _short_title(s: str, max_words: int) -> bool:
    return len(s.split()) <= max_words and not re.search(r"[.,;:!?=$\\]$", s)


def _plain_heading(text: str, m: re.Match) -> bool:
    """A short, unpunctuated line that starts a block: title-case, all-caps, or followed by a
    blank line or a paragraph (papers put "Related work" right above its paragraph)."""
    line = m.group(1).strip()
    if not _short_title(line, 8) or (m.start() > 0 and text[m.start() - 1] != "\n"):
        return False
    nxt_end = text.find("\n", m.end() + 1)
    nxt = text[m.end() + 1:nxt_end if nxt_end >= 0 else len(text)]
    if not nxt.strip():
        return m.end() < len(text)
    words = [w for w in line.split() if w[0].isalpha()]
    titled = line.isupper() or all(w[0].isupper() or len(w) <= 3 for w in words)
    return len(nxt) >= 150 and (titled or len(words) <= 5)


def find_headings(text: str) -> list[Heading]:
    """Headings from markup or layout, in order: (start, end of heading line, level, title)."""
    found: dict[int, Heading] = {}
    for m in _HTML_HEAD.finditer(text):
        if title := clean_text(m.group(2)):
            found[m.start()] = Heading(m.start(), m.end(), int(m.group(1)), title)
    for m in _MD_HEAD.finditer(text):
        found.setdefault(m.start(), Heading(m.start(), m.end(), len(m.group(1)), clean_text(m.group(2))))
    for m in _NUM_HEAD.finditer(text):
        if _short_title(m.group(2).strip(), 10):
            level = m.group(1).count(".") + 1
            title = f"{m.group(1)} {m.group(2).strip()}"
            found.setdefault(m.start(), Heading(m.start(), m.end(), level, title, False))
    for m in _LINE.finditer(text):
        if m.start() not in found and _plain_heading(text, m):
            found[m.start()] = Heading(m.start(), m.end(), 1, m.group(1).strip(), False)
    return sorted(found.values(), key=lambda h: h.start)


def _structural_spans(text: str, heads: list[Heading]) -> list[SectionSpan]:
    """One span per heading (title = the heading path), plus a preamble before the first."""
    spans: list[SectionSpan] = []
    if heads[0].start > 0:
        spans.append(SectionSpan("", 0, heads[0].start))
    stack: list[Heading] = []
    for i, h in enumerate(heads):
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
        end = heads[i + 1].start if i + 1 < len(heads) else len(text)
        spans.append(SectionSpan(" > ".join(s.title for s in stack), h.start, end))
    return spans


def merge_titles(a: str, b: str) -> str:
    """Title of two merged sections: a parent's path is implied by its child's; siblings are
    listed ("Records > Game; Season") so no heading is lost from the map."""
    if not a or b.startswith(a):
        return b
    if not b or a.startswith(b) or b in a.split("; "):
        return a
    return f"{a}; {b.rsplit(' > ', 1)[-1]}"


def _merge_small(spans: list[SectionSpan], min_chars: int) -> list[SectionSpan]:
    """Fold sections shorter than min_chars into the next one (the last into the previous)."""
    out: list[SectionSpan] = []
    carry: SectionSpan | None = None
    for s in spans:
        if carry is not None:
            s = SectionSpan(merge_titles(carry.title, s.title), carry.char_start, s.char_end)
        if s.char_end - s.char_start < min_chars:
            carry = s
            continue
        out.append(s)
        carry = None
    if carry is not None:
        if out:
            last = out[-1]
            out[-1] = SectionSpan(merge_titles(last.title, carry.title), last.char_start, carry.char_end)
        else:
            out.append(carry)
    return out


def _depth_scores(vecs: np.ndarray, window: int) -> np.ndarray:
    """TextTiling depth of each gap between consecutive sentences (gap g precedes sentence g+1).

    Similarity of the mean vectors of `window` sentences on each side; depth = rise to the
    highest similarity within 2*window gaps on the left plus on the right. Gaps next to
    sentences without vectors get depth 0 (no evidence of a shift).
    """
    m = len(vecs)
    if m < 2:
        return np.zeros(0, np.float32)
    csum = np.vstack([np.zeros((1, vecs.shape[1]), np.float32), np.cumsum(vecs, axis=0, dtype=np.float32)])
    g = np.arange(1, m)
    left = csum[g] - csum[np.maximum(0, g - window)]
    right = csum[np.minimum(m, g + window)] - csum[g]
    ln, rn = np.linalg.norm(left, axis=1), np.linalg.norm(right, axis=1)
    valid = (ln > 0) & (rn > 0)
    sims = np.where(valid, (left * right).sum(1) / np.where(valid, ln * rn, 1.0), 0.0)
    h = 2 * window
    pad = np.pad(sims, h, constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(pad, h + 1)
    lpeak, rpeak = win[: m - 1].max(1), win[h:h + m - 1].max(1)
    depth = np.where(valid, lpeak + rpeak - 2 * sims, 0.0)
    return depth.astype(np.float32)


def _topic_cuts(starts: np.ndarray, vecs: np.ndarray | None, lo: int, hi: int, p: MapParams,
                threshold: bool = True) -> list[int]:
    """Char positions (sentence starts) that cut [lo, hi) at topic shifts, within min/max sizes.

    With threshold=False only pieces over max_section_chars are cut (still at the deepest
    gaps): a section its author delimited is not re-segmented, only kept to size."""
    m = len(starts)
    if m < 2:
        return []
    gaps = starts[1:]
    has_vec = vecs is not None and len(vecs) and bool(np.any(vecs))
    depth = _depth_scores(vecs, p.tiling_window) if has_vec else np.zeros(m - 1, np.float32)
    cuts: list[int] = []
    if has_vec and threshold:
        thr = float(depth.mean() + p.tiling_std * depth.std())
        for g in np.argsort(-depth, kind="stable"):
            if depth[g] <= max(thr, 1e-6):
                break
            _try_cut(cuts, int(gaps[g]), lo, hi, p.min_section_chars)
    return _enforce_max(cuts, gaps, depth, lo, hi, p)


def _try_cut(cuts: list[int], pos: int, lo: int, hi: int, min_chars: int) -> bool:
    import bisect

    i = bisect.bisect_left(cuts, pos)
    left = cuts[i - 1] if i > 0 else lo
    right = cuts[i] if i < len(cuts) else hi
    if pos - left < min_chars or right - pos < min_chars:
        return False
    cuts.insert(i, pos)
    return True


def _enforce_max(cuts: list[int], gaps: np.ndarray, depth: np.ndarray, lo: int, hi: int,
                 p: MapParams) -> list[int]:
    """Split pieces longer than max_section_chars at their deepest admissible gap (middle on ties)."""
    todo = [(a, b) for a, b in zip([lo, *cuts], [*cuts, hi], strict=True)]
    out = set(cuts)
    while todo:
        a, b = todo.pop()
        if b - a <= p.max_section_chars:
            continue
        inside = np.flatnonzero((gaps > a) & (gaps < b))
        if len(inside) == 0:
            continue
        pos = gaps[inside]
        ok = inside[(pos - a >= p.min_section_chars) & (b - pos >= p.min_section_chars)]
        cand = ok if len(ok) else inside
        mid = (a + b) / 2
        score = depth[cand] - 1e-9 * np.abs(gaps[cand] - mid)
        cut = int(gaps[cand[int(np.argmax(score))]])
        out.add(cut)
        todo += [(a, cut), (cut, b)]
    return sorted(out)


def find_sections(text: str, sentences: Sequence[tuple[int, int]] | None = None,
                  vectors: np.ndarray | None = None, params: MapParams | None = None) -> list[SectionSpan]:
    """Partition the text into sections: headings first, topic shifts inside what is left.

    The result covers [0, len(text)) in order without overlap. Structured sections shorter
    than min_section_chars are merged forward; sections longer than max_section_chars, and a
    document without headings, are cut at topic shifts (TextTiling depth over `vectors`, one
    per sentence) or, without vectors, evenly at sentence starts.
    """
    p = params or MapParams()
    sentences = list(sentences) if sentences is not None else split_sentences(text, p.max_sentence_chars)
    heads = find_headings(text)
    spans = _structural_spans(text, heads) if heads else [SectionSpan("", 0, len(text))]
    spans = _merge_small(spans, p.min_section_chars)
    starts = np.asarray([s for s, _ in sentences], dtype=np.int64)
    out: list[SectionSpan] = []
    for sp in spans:
        if heads and sp.char_end - sp.char_start <= p.max_section_chars:
            out.append(sp)
            continue
        sel = np.flatnonzero((starts >= sp.char_start) & (starts < sp.char_end))
        vec = vectors[sel] if vectors is not None and len(sel) else None
        cuts = _topic_cuts(starts[sel], vec, sp.char_start, sp.char_end, p, threshold=not heads)
        bounds = [sp.char_start, *cuts, sp.char_end]
        out.extend(SectionSpan(sp.title, a, b) for a, b in zip(bounds, bounds[1:], strict=False))
    return out


# ----------------------------------------------------------------------------- summarizers
@dataclass
class Passage:
    """What a summarizer reads: sentences in order, optionally their unit vectors and weights."""

    sentences: list[str]
    vectors: np.ndarray | None = None  # (n, dim) unit rows, zero rows = unknown
    weights: np.ndarray | None = None  # (n,) how much each sentence counts for coverage
    title: str = ""


@dataclass(frozen=True)
class Summary:
    text: str
    picked: tuple[int, ...] | None = None  # sentence indices for extractive summaries


@runtime_checkable
class Summarizer(Protocol):
    """Turns a passage into a summary of at most `budget_chars` characters."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def summarize(self, passage: Passage, budget_chars: int) -> Summary: ...


def truncate(text: str, budget: int) -> str:
    """Cut at a word boundary so the result has at most `budget` characters."""
    text = text.strip()
    if len(text) <= budget:
        return text
    cut = text.rfind(" ", 0, budget)
    return text[:cut if cut > budget // 2 else budget].rstrip()


class ExtractiveSummarizer:
    """Budgeted facility location over sentence embeddings (Lin & Bilmes 2011), or centrality.

    Facility location picks sentences that together *cover* the passage (every sentence is
    close to some picked one), which suits maps better than pure centrality, which repeats the
    dominant topic. Gains are divided by length**length_power so long sentences pay for their
    budget. Prose sentences (ending in . ! ?) of at least `min_chars` are preferred as
    candidates; every sentence still counts for coverage. Picks are returned in document order.
    """

    name = "extractive"

    def __init__(self, method: str = "facility", *, min_chars: int = 25, length_power: float = 0.5):
        if method not in ("facility", "centrality"):
            raise ValueError(f"unknown method {method!r}")
        self.method, self.min_chars, self.length_power = method, min_chars, length_power

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "min_chars": self.min_chars, "length_power": self.length_power}

    def summarize(self, passage: Passage, budget_chars: int) -> Summary:
        sents = passage.sentences
        if not sents:
            return Summary("", ())
        lengths = np.asarray([len(s) + 1 for s in sents], dtype=np.float64)
        cands = self._candidates(sents)
        vecs = passage.vectors
        if vecs is None or not np.any(vecs[cands]):
            picked = self._lead(cands, lengths, budget_chars)
        else:
            picked = self._select(vecs, passage.weights, cands, lengths, budget_chars)
        if not picked:  # nothing fits: the most central candidate, cut to the budget
            i = self._most_central(vecs, passage.weights, cands)
            return Summary(truncate(sents[i], budget_chars), (i,))
        picked = sorted(picked)
        return Summary(" ".join(sents[i] for i in picked), tuple(picked))

    def _candidates(self, sents: list[str]) -> np.ndarray:
        long_ = [i for i, s in enumerate(sents) if len(s) >= self.min_chars and len(s.split()) >= 4]
        prose = [i for i in long_ if _ends_sentence(sents[i])]
        return np.asarray(prose if len(prose) >= 2 else long_ or list(range(len(sents))))

    @staticmethod
    def _most_central(vecs: np.ndarray | None, weights: np.ndarray | None, cands: np.ndarray) -> int:
        if vecs is None or not np.any(vecs[cands]):
            return int(cands[0])
        w = np.ones(len(vecs)) if weights is None else np.asarray(weights, dtype=np.float64)
        return int(cands[int(np.argmax(w @ np.clip(vecs @ vecs[cands].T, 0.0, None)))])

    @staticmethod
    def _lead(cands: np.ndarray, lengths: np.ndarray, budget: int) -> list[int]:
        picked, used = [], 0.0
        for i in cands:
            if used + lengths[i] <= budget + 1:
                picked.append(int(i))
                used += lengths[i]
        return picked

    def _select(self, vecs: np.ndarray, weights: np.ndarray | None, cands: np.ndarray,
                lengths: np.ndarray, budget: int) -> list[int]:
        sim = np.clip(vecs @ vecs[cands].T, 0.0, None)  # (n_all, n_cand)
        w = np.ones(len(vecs)) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.method == "centrality":
            return self._by_order(cands, w @ sim, lengths, budget)
        return self._facility(sim, w, cands, lengths, budget)

    def _by_order(self, cands: np.ndarray, score: np.ndarray, lengths: np.ndarray, budget: int) -> list[int]:
        picked, used = [], 0.0
        for j in np.argsort(-score, kind="stable"):
            i = int(cands[j])
            if used + lengths[i] <= budget + 1:
                picked.append(i)
                used += lengths[i]
        return picked

    def _facility(self, sim: np.ndarray, w: np.ndarray, cands: np.ndarray, lengths: np.ndarray,
                  budget: int) -> list[int]:
        cover = np.zeros(sim.shape[0])
        free = np.ones(len(cands), bool)
        cost = lengths[cands] ** self.length_power
        picked, used = [], 0.0
        while True:
            free &= used + lengths[cands] <= budget + 1
            if not free.any():
                break
            gain = (w[:, None] * np.maximum(sim - cover[:, None], 0.0)).sum(0) / cost
            gain[~free] = -np.inf
            j = int(np.argmax(gain))
            if gain[j] <= 0 and picked:
                break
            picked.append(int(cands[j]))
            used += lengths[cands[j]]
            cover = np.maximum(cover, sim[:, j])
            free[j] = False
        return picked


def _ends_sentence(s: str) -> bool:
    return s.rstrip("\"')]\u201d\u2019 ").endswith((".", "!", "?"))


class LLMSummarizer:
    """Summaries from an OpenAI-compatible `/v1/chat/completions` endpoint (off by default).

    Any transport or format failure raises MapError so the caller quarantines that document's
    map; the reply is cut to the budget. The API key is read from the environment variable
    named in config, never stored in the map's params.
    """

    name = "llm"

    def __init__(self, endpoint: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_input_chars: int = 12_000, temperature: float = 0.0, trust_env: bool = True):
        self.endpoint, self.model, self.api_key_env = endpoint, model, api_key_env
        self.timeout_s, self.max_input_chars, self.temperature = timeout_s, max_input_chars, temperature
        self.trust_env = trust_env
        self._client: Any = None

    def params(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "model": self.model, "temperature": self.temperature,
                "max_input_chars": self.max_input_chars}

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"

    def _headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise MapError(f"environment variable {self.api_key_env} (LLM API key) is not set")
        return {"Authorization": f"Bearer {key}"}

    def _prompt(self, passage: Passage, budget: int) -> str:
        what = f'the section "{passage.title}"' if passage.title else "the following text"
        body = truncate(" ".join(passage.sentences), self.max_input_chars)
        return (f"Summarize {what} in at most {budget} characters. Keep names, numbers and the main "
                f"claims. Reply with the summary only.\n\n{body}")

    def summarize(self, passage: Passage, budget_chars: int) -> Summary:
        if not passage.sentences:
            return Summary("")
        import httpx

        payload = {"model": self.model, "temperature": self.temperature,
                   "max_tokens": max(16, budget_chars // 3),
                   "messages": [{"role": "system", "content": "You write short, faithful summaries."},
                                {"role": "user", "content": self._prompt(passage, budget_chars)}]}
        try:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, trust_env=self.trust_env)
            resp = self._client.post(self.url, json=payload, headers=self._headers())
            resp.raise_for_status()
            text = resp.json()["choices"][0]["message"]["content"]
        except MapError:
            raise
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise MapError(f"LLM summarizer failed: {type(e).__name__}: {e}") from e
        if not isinstance(text, str) or not text.strip():
            raise MapError("LLM summarizer returned an empty summary")
        return Summary(truncate(clean_text(text), budget_chars))


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
                            max_length=encoder.max_seq - 2)["input_ids"]
    return encoder.encode_ids([encoder.wrap_specials(x) for x in ids], want_tokens=False)[0]


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
    room = encoder.max_seq - 2
    seqs = [encoder.wrap_specials(c[:max(0, room - len(q))] + q) for c, q in zip(c_ids, q_ids, strict=True)]
    pooled, tokens = encoder.encode_ids(seqs, want_tokens=pool == "query")
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
