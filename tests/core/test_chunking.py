from __future__ import annotations

import pytest

from sidestep.text.chunking import chunk_offsets, windows


@pytest.mark.parametrize("n,size,overlap", [(1, 10, 2), (10, 10, 2), (11, 10, 2), (95, 10, 3), (1000, 254, 32)])
def test_windows_cover_every_token_with_the_requested_overlap(n, size, overlap):
    ws = windows(n, size, overlap, max_chunks=10_000)
    assert ws[0][0] == 0 and ws[-1][1] == n
    covered = set()
    for s, e in ws:
        assert 0 < e - s <= size
        covered.update(range(s, e))
    assert covered == set(range(n))
    for (_s1, e1), (s2, _e2) in zip(ws, ws[1:], strict=False):
        assert e1 - s2 == overlap  # consecutive windows share exactly `overlap` tokens


def test_a_short_document_is_one_chunk_and_max_chunks_truncates():
    assert windows(5, 10, 2, 4) == [(0, 5)]
    assert len(windows(1000, 10, 2, max_chunks=4)) == 4


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        windows(10, 5, 5, 3)
    with pytest.raises(ValueError):
        windows(10, 0, 0, 3)


def test_chunk_offsets_map_tokens_to_characters():
    text = "aa bb cc dd ee"
    offsets = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]
    chunks = chunk_offsets(offsets, size=2, overlap=0, max_chunks=10, text_len=len(text))
    assert [text[c.char_start:c.char_end] for c in chunks] == ["aa bb", "cc dd", "ee"]
    assert [c.chunk_idx for c in chunks] == [0, 1, 2]


@pytest.mark.parametrize("seed", range(20))
def test_sentence_windows_keep_every_pair_of_adjacent_sentences_together(seed):
    """Windows start and end on sentence starts, cover every token, never exceed the size, and any two
    adjacent sentences that fit one window together lie inside some window."""
    import numpy as np

    from sidestep.text.chunking import sentence_windows

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=int(rng.integers(1, 60)))
    if seed % 5 == 0:
        lengths[len(lengths) // 2] = 90  # one sentence longer than a window
    starts = np.concatenate([[0], np.cumsum(lengths)])
    n = int(starts[-1])
    size, overlap = 64, 16
    ws = sentence_windows(n, starts[:-1].tolist(), size, overlap, max_chunks=10_000)
    assert ws[0][0] == 0 and ws[-1][1] == n
    covered = set()
    for s, e in ws:
        assert 0 < e - s <= size
        covered.update(range(s, e))
    assert covered == set(range(n))
    bounds = set(starts.tolist())
    for s, e in ws:
        if e - s < size or (s in bounds and e in bounds):
            continue
        # a cut off a sentence boundary happens only inside a sentence longer than a window
        assert any(a <= s < b and b - a > size for a, b in zip(starts, starts[1:], strict=False))
    for a, b, c in zip(starts, starts[1:], starts[2:], strict=False):
        if c - a <= size:
            assert any(s <= a and c <= e for s, e in ws), (a, b, c, ws)


def test_sentence_chunk_offsets_align_on_sentence_characters():
    from sidestep.text.chunking import sentence_chunk_offsets

    text = "Aa bb. Cc dd. Ee ff."
    offsets = [(0, 2), (3, 5), (5, 6), (7, 9), (10, 12), (12, 13), (14, 16), (17, 19), (19, 20)]
    chunks = sentence_chunk_offsets(offsets, [0, 7, 14], size=6, overlap=1, max_chunks=10, text_len=len(text))
    assert [text[c.char_start:c.char_end] for c in chunks] == ["Aa bb. Cc dd.", "Cc dd. Ee ff."]
    # plain token windows of the same size cut "Cc dd." in two
    assert [text[c.char_start:c.char_end] for c in chunk_offsets(offsets, 6, 1, 10, len(text))][0] == "Aa bb. Cc dd."
    assert [text[c.char_start:c.char_end] for c in chunk_offsets(offsets, 4, 1, 10, len(text))][0] == "Aa bb. Cc"
