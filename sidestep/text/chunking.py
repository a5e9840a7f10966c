"""Token-window chunking with overlap (plain, or aligned on sentence boundaries); positions are kept in
tokens and characters."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    chunk_idx: int
    tok_start: int  # first content token (specials not counted)
    tok_end: int  # one past the last content token
    char_start: int
    char_end: int


def windows(n_tokens: int, size: int, overlap: int, max_chunks: int) -> list[tuple[int, int]]:
    """[start, end) token windows covering n_tokens; the last window ends at n_tokens.

    A document that fits in one window is one chunk; the stride is size - overlap.
    """
    if size <= 0:
        raise ValueError("window size must be positive")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, {size}), got {overlap}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    stride = size - overlap
    out: list[tuple[int, int]] = []
    start = 0
    while len(out) < max_chunks:
        end = min(start + size, n_tokens)
        out.append((start, end))
        if end >= n_tokens:
            break
        start += stride
    return out


def chunk_offsets(
    offsets: list[tuple[int, int]], size: int, overlap: int, max_chunks: int, text_len: int
) -> list[Chunk]:
    """Chunks of one tokenized text, from the tokenizer's (char_start, char_end) per token."""
    if not offsets:
        return [Chunk(0, 0, 0, 0, text_len)]
    return [
        Chunk(i, s, e, offsets[s][0], offsets[e - 1][1])
        for i, (s, e) in enumerate(windows(len(offsets), size, overlap, max_chunks))
    ]


def sentence_windows(n_tokens: int, breaks: list[int], size: int, overlap: int, max_chunks: int
                     ) -> list[tuple[int, int]]:
    """[start, end) token windows that start and end on sentence boundaries (`breaks`: token
    indices where a sentence starts), each at most `size` tokens, consecutive windows sharing at
    least one whole sentence and about `overlap` tokens.

    So any span inside two adjacent sentences lies wholly inside some window (unless the two
    sentences together exceed `size`): an answer does not fall across a chunk boundary. A single
    sentence longer than `size` is cut into token windows with `overlap`.
    """
    if size <= 0:
        raise ValueError("window size must be positive")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, {size}), got {overlap}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    b = sorted({0, n_tokens, *(x for x in breaks if 0 < x < n_tokens)})
    out: list[tuple[int, int]] = []
    i = 0  # index in b of the window's start
    while len(out) < max_chunks and b[i] < n_tokens:
        start = b[i]
        j = i + 1
        while j + 1 < len(b) and b[j + 1] - start <= size:
            j += 1
        if b[j] - start > size:  # one sentence longer than a window: token windows inside it
            for s, e in windows(b[j] - start, size, overlap, max_chunks - len(out)):
                out.append((start + s, start + e))
            i = j
            continue
        out.append((start, b[j]))
        if b[j] >= n_tokens:
            break
        # next window: back off from the end by at least one sentence and about `overlap` tokens
        k = j - 1
        while k - 1 > i and b[j] - b[k] < overlap:
            k -= 1
        i = max(k, i + 1)
    return out


def sentence_chunk_offsets(offsets: list[tuple[int, int]], sentence_starts: list[int], size: int, overlap: int,
                           max_chunks: int, text_len: int) -> list[Chunk]:
    """Sentence-aligned chunks of one tokenized text: `sentence_starts` are character offsets."""
    if not offsets:
        return [Chunk(0, 0, 0, 0, text_len)]
    tok_starts = [a for a, _ in offsets]
    breaks = [bisect.bisect_left(tok_starts, c) for c in sentence_starts]
    return [
        Chunk(i, s, e, offsets[s][0], offsets[e - 1][1])
        for i, (s, e) in enumerate(sentence_windows(len(offsets), breaks, size, overlap, max_chunks))
    ]
