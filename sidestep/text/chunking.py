"""Token-window chunking with overlap; positions are kept in tokens and characters."""

from __future__ import annotations

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
