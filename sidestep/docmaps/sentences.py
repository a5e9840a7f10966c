"""Sentences of a document and their vectors: cleaning, sentence spans, and sentence embeddings
taken as the mean of the document's contextual token vectors over each sentence's token span
(so summarizing a document never runs the encoder over its text a second time).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sidestep.docmaps.docmap import MapError

if TYPE_CHECKING:
    from sidestep.text.encoder import EncodedDoc


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
