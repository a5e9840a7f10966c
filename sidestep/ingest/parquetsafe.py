"""Parquet read with a bound on memory: no cell is turned into a Python value before its size is known.

A Parquet file can expand far beyond its size on disk: a column chunk of one repeated value compresses
a thousandfold, and a dictionary-encoded column repeats one long value on every row. So:

- each row group's metadata is checked first: a wanted column chunk that expands past
  PARQUET_CHUNK_CAP bytes *and* more than MAX_RATIO times its compressed size (or to more than
  `record_limit` bytes per row) is a compression bomb, refused whole with its row range, never decoded;
- columns are read as dictionaries (`read_dictionary`), so a repeated value stays one value in memory;
- cell sizes are computed on the Arrow arrays, a row over `record_limit` is quarantined from its sizes
  alone, and rows become Python values a few megabytes at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sidestep.ingest.bounded import PREVIEW_BYTES, record_limit, too_long_reason
from sidestep.ingest.records import BadRecord
from sidestep.ingest.validation import Item, RawRecord, SourceError, _Options, _too_long

PARQUET_CHUNK_CAP = 64 << 20  # a column chunk may always expand this far
MAX_RATIO = 100  # beyond the cap, an expansion over this ratio is a bomb (text compresses 2-10x)
BATCH_BYTES = 16 << 20  # rows are materialised this many bytes at a time
MAX_BATCH_ROWS = 2048


def iter_parquet(path: Path, opts: _Options, columns: Any) -> Iterator[Item]:
    """`columns(names, opts, path)` -> (id, title, text) column indexes (title may be None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        names = list(schema.names)
        id_col, title_col, text_col = (names[i] if i is not None else None for i in columns(names, opts, path))
        wanted = [c for c in dict.fromkeys((id_col, title_col, text_col)) if c is not None]
        sized = [c for c in wanted if _is_bytes(schema.field(c).type)]
        pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False, read_dictionary=sized)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read parquet file {path}: {exc}") from exc
    limit = record_limit(opts.max_text_bytes)
    md = pf.metadata
    row_no = 0
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        n = group.num_rows
        reason = _bomb(group, wanted, n, limit)
        if reason is not None:
            yield BadRecord(f"{path.name}:{row_no + 1}-{row_no + n}", reason)
            row_no += n
            continue
        expanded = sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)
                       if group.column(j).path_in_schema in wanted)
        rows = int(min(MAX_BATCH_ROWS, max(1, BATCH_BYTES // max(1, expanded // max(1, n)))))
        for batch in pf.iter_batches(batch_size=rows, row_groups=[rg], columns=wanted):
            yield from _batch(batch, sized, (id_col, title_col, text_col), path.name, row_no, limit, opts)
            row_no += batch.num_rows


def _is_bytes(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t))


def _bomb(group: Any, wanted: list[str], n_rows: int, limit: int) -> str | None:
    for j in range(group.num_columns):
        c = group.column(j)
        if c.path_in_schema not in wanted:
            continue
        u, z = c.total_uncompressed_size, max(1, c.total_compressed_size)
        if u > PARQUET_CHUNK_CAP and (u > MAX_RATIO * z or u > limit * max(1, n_rows)):
            return (f"compression_bomb: column {c.path_in_schema!r} of this row group expands from {z} to {u} "
                    f"bytes over {n_rows} rows (not decoded)")
    return None


def _lengths(arr: Any) -> np.ndarray:
    """Bytes of each cell (0 for null) without making Python values: dictionaries are measured once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        lens = pc.binary_length(arr.dictionary).take(arr.indices)
    else:
        lens = pc.binary_length(arr)
    return lens.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _batch(batch: Any, sized: list[str], cols: tuple, name: str, row0: int, limit: int,
           opts: _Options) -> Iterator[Item]:
    id_col, title_col, text_col = cols
    lens = {c: _lengths(batch.column(c)) for c in sized}
    total = sum(lens.values()) if lens else np.zeros(batch.num_rows, np.int64)
    start = 0
    while start < batch.num_rows:
        if total[start] > limit:
            yield _too_big(batch, start, lens, text_col, id_col, name, row0, limit, opts)
            start += 1
            continue
        stop, used = start, 0
        while stop < batch.num_rows and total[stop] <= limit and (stop == start or used + total[stop] <= BATCH_BYTES):
            used += int(total[stop])
            stop += 1
        for i, row in enumerate(batch.slice(start, stop - start).to_pylist(), start):
            cells = {k: _from_parquet(v) for k, v in row.items()}
            title = cells.get(title_col) if title_col else None
            raw = json.dumps(cells, ensure_ascii=False, default=str)
            yield RawRecord(f"{name}:{row0 + i + 1}", cells[id_col], title, cells[text_col], raw)
        start = stop


def _too_big(batch: Any, i: int, lens: dict, text_col: str, id_col: str, name: str, row0: int, limit: int,
             opts: _Options) -> BadRecord:
    """A row over the bound, reported from its sizes: the text's own size when it alone is too long."""
    text_bytes = int(lens[text_col][i]) if text_col in lens else 0
    reason = _too_long(text_bytes, opts.max_text_bytes) if text_bytes > limit else too_long_reason(
        int(sum(v[i] for v in lens.values())), limit)
    record_id = None
    if id_col not in lens or lens[id_col][i] <= 200:
        value = batch.column(id_col)[i].as_py()
        record_id = None if value is None else str(_from_parquet(value))
    head = ""
    if text_col in lens:
        head = _head(batch.column(text_col), i)
    return BadRecord(f"{name}:{row0 + i + 1}", reason, record_id, head)


def _head(arr: Any, i: int) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr, i = arr.dictionary, arr.indices[i].as_py()
    cell = arr.slice(i, 1)
    if pa.types.is_string(cell.type) or pa.types.is_large_string(cell.type):  # zero-copy views as bytes
        cell = cell.cast(pa.binary() if pa.types.is_string(cell.type) else pa.large_binary())
    value = pc.binary_slice(cell, 0, PREVIEW_BYTES)[0].as_py()
    return "" if value is None else value.decode("utf-8", "replace")


def _from_parquet(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
