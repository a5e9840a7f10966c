"""Sections of a document: from structure where the text has it (markdown ``#``, HTML-like
``<H2>``, numbered headings, short heading lines) and from topic shifts in the sentence-embedding
sequence where it has not (TextTiling-style depth scores), always within min/max sizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sidestep.docmaps.docmap import MapParams
from sidestep.docmaps.sentences import clean_text, split_sentences


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
