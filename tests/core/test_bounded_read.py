"""Ingest memory is bounded: a huge JSONL line, a huge member of a .json array, a huge CSV field and a
Parquet compression bomb are quarantined without being held in memory whole; the records beside them
are read. Python allocations are measured with tracemalloc; Arrow's, in a child process, by its peak RSS."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from sidestep.ingest.readers import read_source

from .test_readers import assert_accounted, code

MAX_TEXT = 1000
BOUND = 6 * MAX_TEXT + (1 << 20)  # sidestep.ingest.bounded.record_limit(MAX_TEXT)
HUGE = 48 << 20  # 48 MiB: far above the bound


def reasons(result) -> dict[str, str]:
    return {b.location: code(b.reason) for b in result.bad}


def write_huge(path: Path, before: bytes, fill: bytes, after: bytes, n_bytes: int = HUGE) -> None:
    with path.open("wb") as f:
        f.write(before)
        block = fill * max(1, (1 << 20) // len(fill))
        for _ in range(n_bytes // len(block)):
            f.write(block)
        f.write(after)


def peak_python_bytes(fn, warm_up: Path | None = None):
    """Peak bytes Python allocated while `fn` ran. `warm_up`: a small file of the same format read first, so
    that first-time imports (and their bytecode compiled in a fresh checkout) are not counted as the read's."""
    if warm_up is not None:
        read_source(warm_up, max_text_bytes=MAX_TEXT)
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_jsonl_line_is_quarantined_without_being_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    write_huge(path, json.dumps({"id": "a", "text": "first"}).encode() + b'\n{"id": "huge", "text": "', b"x",
               b'"}\n' + json.dumps({"id": "b", "text": "last"}).encode() + b"\n")
    result, peak = peak_python_bytes(lambda: read_source(path, max_text_bytes=MAX_TEXT))
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.jsonl:2": "record_too_long"}
    bad = result.bad[0]
    assert bad.record_id == "huge" and bad.raw.startswith('{"id": "huge"') and int(bad.reason.split()[1]) > HUGE
    assert peak < 8 * BOUND, f"reading held {peak / 2**20:.1f} MiB"
    assert_accounted(result)


def test_a_huge_member_of_a_json_array_is_quarantined_and_the_array_streams(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    write_huge(path, b'[{"id": "a", "text": "first"},\n {"id": "huge", "text": "', b"y",
               b'"},\n {"id": "b", "text": "last"}, 3]')
    result, peak = peak_python_bytes(lambda: read_source(path, max_text_bytes=MAX_TEXT))
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.json[1]": "record_too_long", "docs.json[3]": "malformed_json"}
    assert next(b for b in result.bad if b.location == "docs.json[1]").record_id == "huge"
    assert peak < 8 * BOUND, f"reading held {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_the_array_scanner_splits_members_across_any_chunk_boundary(chunk: int, monkeypatch) -> None:
    import sidestep.ingest.bounded as bounded
    from sidestep.ingest.bounded import ArrayEnd, array_members

    monkeypatch.setattr(bounded, "CHUNK", chunk)
    docs = [{"id": str(i), "text": 'a "quote", a \\ backslash, [brackets] {braces}\n' * i, "n": [[i], {"k": "]"}]}
            for i in range(12)]
    for indent in (None, 2):
        data = json.dumps(docs, indent=indent).encode()
        members = list(array_members(io.BytesIO(data), 1 << 20, 100, ArrayEnd()))
        assert [json.loads(m) for m in members] == docs


def test_a_truncated_json_array_keeps_its_complete_members(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    path.write_text('[{"id": "a", "text": "first"}, {"id": "b", "text": "cut off')
    result = read_source(path)
    assert [d.doc_id for d in result.documents] == ["a"]
    assert reasons(result) == {"docs.json[1]": "malformed_json", "docs.json[end]": "malformed_json"}


def test_a_huge_csv_field_is_quarantined_without_being_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    write_huge(path, b"id,title,text\na,T,first\nhuge,T,", b"z", b"\nb,T,last\n")
    small = tmp_path / "small.csv"
    small.write_text("id,title,text\nx,T,small\n")
    result, peak = peak_python_bytes(lambda: read_source(path, max_text_bytes=MAX_TEXT), warm_up=small)
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.csv:3": "record_too_long"}
    assert result.bad[0].raw.startswith("huge,T,zzz")
    assert peak < 8 * BOUND, f"reading held {peak / 2**20:.1f} MiB"
    import csv

    assert csv.field_size_limit() < 2**31 - 1  # the process-wide limit is left as it was


def test_a_huge_quoted_multiline_csv_field_is_bounded_too(tmp_path: Path) -> None:
    """A quoted field spread over many short lines reaches the csv module line by line, and the reader stops the
    record once it holds BOUND characters (BoundedTextLines; the csv module's own field limit is the same). By
    then the csv module's field buffer, 4 bytes a character and doubling as it grows, holds 4 x the power of two
    above BOUND (8 MiB here) whatever the field's size; one more MiB is left for everything else the read holds
    (measured: 8.03 MiB alone, 8.3 MiB once inside the whole suite). A reader that let the field grow with the
    file fails both checks: a 3 MiB field would need a 16 MiB buffer, and a 12 MiB field more than a 3 MiB one."""
    csv_buffer = 4 * (1 << (BOUND - 1).bit_length())
    small = tmp_path / "small.csv"
    small.write_text("id,text\nx,small\n")
    peaks = {}
    for size in (3 << 20, 12 << 20):
        path = tmp_path / "docs.csv"
        write_huge(path, b'id,text\na,first\nhuge,"', b"line of text\n", b'"\nb,last\n', n_bytes=size)
        result, peaks[size] = peak_python_bytes(lambda p=path: read_source(p, max_text_bytes=MAX_TEXT), warm_up=small)
        assert "a" in {d.doc_id for d in result.documents}
        assert code(next(b for b in result.bad if b.location == "docs.csv:3").reason) == "record_too_long"
        assert peaks[size] < csv_buffer + (1 << 20), f"reading held {peaks[size] / 2**20:.2f} MiB"
    assert peaks[12 << 20] < peaks[3 << 20] + (256 << 10), f"the peak grew with the field: {peaks}"


CHILD = textwrap.dedent("""
    def peak_mb():  # this process's own peak (VmHWM); ru_maxrss would carry the parent's over exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import sys
    from sidestep.ingest.readers import read_source
    r = read_source(sys.argv[1], max_text_bytes=int(sys.argv[2]))
    print(sorted(d.doc_id for d in r.documents), [(b.location, b.reason.split(":")[0]) for b in r.bad])
    print(int(peak_mb()))
""")


def child_read(path: Path, max_text: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_text)], capture_output=True, text=True,
                         timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    return lines[0], int(lines[1])


def baseline_rss(tmp_path: Path) -> int:
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    return child_read(small, MAX_TEXT)[1]


def test_a_parquet_compression_bomb_is_refused_from_its_metadata(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    bomb = tmp_path / "bomb.parquet"
    writer = pq.ParquetWriter(bomb, pa.schema([("id", pa.string()), ("text", pa.string())]), compression="zstd")
    writer.write_table(pa.table({"id": ["a", "b"], "text": ["first", "second"]}))
    writer.write_table(pa.table({"id": ["boom"], "text": ["0" * (160 << 20)]}))  # 160 MiB in a few KB
    writer.write_table(pa.table({"id": ["c"], "text": ["third"]}))
    writer.close()
    assert bomb.stat().st_size < 1 << 20
    summary, rss = child_read(bomb, 1_000_000)
    assert summary == "['a', 'b', 'c'] [('bomb.parquet:3-3', 'compression_bomb')]"
    # the control reads a small Parquet file the same way (the same imports: pyarrow's Parquet reader and its
    # memory pool), so the difference is what the bomb itself costs
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["first", "second", "third"]}), small,
                   compression="zstd")
    base = child_read(small, 1_000_000)[1]
    assert rss - base < 100, f"peak RSS {rss} MiB against {base} MiB for a small Parquet file"


def test_a_parquet_cell_over_the_bound_is_quarantined_from_its_size(tmp_path: Path) -> None:
    """A long cell in a row group that is not a bomb (it does not compress) is reported from its size."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import os

    path = tmp_path / "docs.parquet"
    noise = os.urandom(3 << 20).hex()  # 6 MiB that does not compress
    pq.write_table(pa.table({"id": ["a", "long", "b"], "text": ["first", noise, "last"]}), path)
    result = read_source(path, max_text_bytes=MAX_TEXT)
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.parquet:2": "text_too_long"}
    assert result.bad[0].record_id == "long" and result.bad[0].raw == noise[:2000]


def test_nul_characters_in_any_field_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"id": "ok", "text": "fine"}, {"id": "n1", "text": "a \u0000 b"}, {"id": "n2", "title": "t\u0000",
                                                                               "text": "x"},
            {"id": "n\u00003", "text": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_source(path)
    assert [d.doc_id for d in result.documents] == ["ok"]
    assert {b.location: b.reason for b in result.bad} == {
        "docs.jsonl:2": "nul_byte: a NUL character in text", "docs.jsonl:3": "nul_byte: a NUL character in title",
        "docs.jsonl:4": "nul_byte: a NUL character in id"}
    assert all("\x00" not in b.raw and "\x00" not in (b.record_id or "") for b in result.bad)
