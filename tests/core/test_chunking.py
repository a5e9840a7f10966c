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
