"""Parsers for single files and text folders: JSON / JSONL / BEIR, CSV, Parquet, .txt/.md folders.

Each yields RawRecords (or BadRecords for what cannot even be parsed);
validation and de-duplication happen in sidestep.ingest.readers.
"""

from __future__ import annotations

import codecs
import csv
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sidestep.ingest.jsonsafe import TOO_DEEP, TooDeep, loads_guarded, too_deep
from sidestep.ingest.records import BadRecord
from sidestep.ingest.validation import (
    Item,
    RawRecord,
    SourceError,
    _decode_error,
    _json_type,
    _Options,
    _printable,
    _too_long,
)

TEXT_SUFFIXES = (".txt", ".md")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


# --------------------------------------------------------------------------- JSON / JSONL / BEIR


def _iter_json_records(path: Path, opts: _Options) -> Iterator[Item]:
    """JSONL streamed line by line; a .json file holding one JSON array is read as a list of records."""
    if path.suffix.lower() == ".json" and _first_byte(path) == b"[":
        array = _load_json_array(path)
        if array is not None:
            yield from _array_records(array, path.name, opts)
            return
    yield from _iter_jsonl(path, opts)


def _iter_jsonl(path: Path, opts: _Options) -> Iterator[Item]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if line.strip():
                yield _parse_json_line(line.rstrip(b"\r\n"), f"{path.name}:{lineno}", opts)


def _parse_json_line(line: bytes, location: str, opts: _Options) -> Item:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = line.decode("utf-8", "replace")
        return BadRecord(location, _decode_error(line, exc), _peek_id(raw, opts), raw)
    try:
        obj = json.loads(text)
    except RecursionError:
        return BadRecord(location, TOO_DEEP, None, _printable(text))
    except ValueError as exc:
        return BadRecord(location, f"malformed_json: {_json_error(exc)}", None, _printable(text))
    return _object_record(obj, location, opts, text)


def _object_record(obj: Any, location: str, opts: _Options, raw: str | None = None) -> Item:
    """`raw` None: the record's JSON text is written from `obj` (after the depth check, which makes that safe)."""
    if isinstance(obj, TooDeep):
        return BadRecord(location, TOO_DEEP, None, _printable(obj.raw))
    if too_deep(obj):
        record_id = _get_id(obj, opts.id_field) if isinstance(obj, dict) else None
        shown = str(record_id) if isinstance(record_id, str | int) else None
        return BadRecord(location, TOO_DEEP, shown, _printable(raw or ""))
    if raw is None:
        raw = json.dumps(obj, ensure_ascii=False)
    if not isinstance(obj, dict):
        return BadRecord(
            location, f"malformed_json: expected an object, got {_json_type(obj)}", None, _printable(raw)
        )
    title = obj.get(opts.title_field) if opts.title_field else None
    return RawRecord(location, _get_id(obj, opts.id_field), title, obj.get(opts.text_field), raw)


def _get_id(obj: dict, id_field: str) -> Any:
    """BEIR writes `_id`, most other JSONL writes `id`: accept either when the default name is used."""
    value = obj.get(id_field)
    if value is None and id_field in ("id", "_id"):
        value = obj.get("_id" if id_field == "id" else "id")
    return value


def _peek_id(raw: str, opts: _Options) -> str | None:
    """Best effort id for a quarantined line, so an operator can find the record upstream."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = _get_id(obj, opts.id_field) if isinstance(obj, dict) else None
    return None if value is None else str(value)


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg.lower()} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nesting too deep"
    return str(exc).lower()


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.removeprefix(codecs.BOM_UTF8).lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _load_json_array(path: Path) -> list | None:
    """None means 'not one JSON array after all' (e.g. JSONL whose first line is an array)."""
    try:
        value = loads_guarded(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, list) else None


def _array_records(array: list, name: str, opts: _Options) -> Iterator[Item]:
    for i, obj in enumerate(array):
        yield _object_record(obj, f"{name}[{i}]", opts)


# --------------------------------------------------------------------------- CSV


def _iter_csv(path: Path, opts: _Options) -> Iterator[Item]:
    """Decoding with surrogateescape keeps one bad byte from failing the file; validation flags the row."""
    _raise_csv_field_limit()
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        columns = _columns([h.strip() for h in header], opts, path)
        previous = reader.line_num
        while True:
            location = f"{path.name}:{previous + 1}"
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                previous = reader.line_num
                yield BadRecord(location, f"malformed_csv: {str(exc).lower()}")
                continue
            previous = reader.line_num
            if row:
                yield _csv_record(row, len(header), columns, location)


def _csv_record(row: list[str], n_header: int, columns: tuple[int, int | None, int], location: str) -> Item:
    raw = ",".join(row)
    if len(row) != n_header:
        return BadRecord(
            location, f"malformed_row: {len(row)} fields, header has {n_header}", None, _printable(raw)
        )
    id_col, title_col, text_col = columns
    title = row[title_col] if title_col is not None else None
    return RawRecord(location, row[id_col], title, row[text_col], raw)


def _columns(names: list[str], opts: _Options, path: Path) -> tuple[int, int | None, int]:
    """A missing id or text column is a layout error: every row would be rejected for the same reason."""
    for needed in (opts.id_field, opts.text_field):
        if needed not in names:
            raise SourceError(f"{path} has no column {needed!r}; columns are {names}")
    title = names.index(opts.title_field) if opts.title_field in names else None
    return names.index(opts.id_field), title, names.index(opts.text_field)


def _raise_csv_field_limit() -> None:
    """Over-long fields must reach validation (text_too_long), not die inside the csv module."""
    limit = 2**31 - 1
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


# --------------------------------------------------------------------------- Parquet


def _iter_parquet(path: Path, opts: _Options) -> Iterator[Item]:
    """Streams row batches; binary cells are decoded here and bad bytes are caught by validation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read parquet file {path}: {exc}") from exc
    names = list(pf.schema_arrow.names)
    id_col, title_col, text_col = (names[i] if i is not None else None for i in _columns(names, opts, path))
    wanted = [c for c in dict.fromkeys((id_col, title_col, text_col)) if c is not None]
    row_no = 0
    for batch in pf.iter_batches(batch_size=2048, columns=wanted):
        for row in batch.to_pylist():
            row_no += 1
            cells = {k: _from_parquet(v) for k, v in row.items()}
            title = cells.get(title_col) if title_col else None
            raw = json.dumps(cells, ensure_ascii=False, default=str)
            yield RawRecord(f"{path.name}:{row_no}", cells[id_col], title, cells[text_col], raw)


def _from_parquet(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


# --------------------------------------------------------------------------- text folders


def _iter_textdir(root: Path, opts: _Options) -> Iterator[Item]:
    """Only regular files inside the root are read: links are not followed, special files never opened."""
    for rel, kind in _text_entries(root):
        if kind == "symlink":
            yield BadRecord(rel, f"symlink: not followed (points to {_link_target(root / rel)})", rel)
        elif kind != "file":
            yield BadRecord(rel, f"not_a_regular_file: {kind} (never opened)", rel)
        else:
            yield _text_file_record(root, rel, opts.max_text_bytes)


def _text_files(root: Path) -> Iterator[str]:
    """Relative posix paths of .txt/.md entries (and linked folders), sorted so ids and order are stable."""
    for rel, _kind in _text_entries(root):
        yield rel


def _text_entries(root: Path) -> list[tuple[str, str]]:
    """(relative path, "file" | "symlink" | a special kind such as "fifo") of every .txt/.md entry and every
    linked folder.

    os.walk does not enter linked folders (followlinks=False) but lists them among the folders; lstat
    tells a link or a FIFO named like a text file from a regular file without opening it.
    """
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if Path(dirpath, name).is_symlink():
                found.append((Path(dirpath, name).relative_to(root).as_posix(), "symlink"))
        for name in filenames:
            if name.lower().endswith(TEXT_SUFFIXES):
                path = Path(dirpath, name)
                found.append((path.relative_to(root).as_posix(), _entry_kind(path)))
    return sorted(found)


def _entry_kind(path: Path) -> str:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "file"  # gone since it was listed: reading it reports why
    return "symlink" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else _special(mode)


def _special(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _text_file_record(root: Path, rel: str, max_text_bytes: int) -> Item:
    """Opened without following a link and without blocking, then checked on the open descriptor, so a
    file swapped for a link or a FIFO after the folder was listed is still refused."""
    path = root / rel
    limit = max_text_bytes + len(codecs.BOM_UTF8)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return BadRecord(rel, f"symlink: not followed (points to {_link_target(path)})", rel)
        return BadRecord(rel, f"unreadable_file: {exc.strerror or exc}".lower(), rel)
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                return BadRecord(rel, f"not_a_regular_file: {_special(info.st_mode)}", rel)
            if info.st_size > limit:
                return BadRecord(rel, _too_long(info.st_size, max_text_bytes), rel, _head(f))
            data = f.read(limit + 1)
    except OSError as exc:
        return BadRecord(rel, f"unreadable_file: {exc.strerror or exc}".lower(), rel)
    if len(data) > limit:  # it grew after fstat
        return BadRecord(rel, _too_long(len(data), max_text_bytes), rel, data[:4096].decode("utf-8", "replace"))
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(rel, _decode_error(data, exc), rel, data.decode("utf-8", "replace"))
    return RawRecord(rel, rel, _text_title(rel, text), text, text)


def _head(f: BinaryIO) -> str:
    return f.read(4096).decode("utf-8", "replace")


def _text_title(rel: str, text: str) -> str:
    """Markdown files are titled by their first heading (outside code fences), everything else by stem."""
    stem = Path(rel).stem
    if not rel.lower().endswith(".md"):
        return stem
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and (m := _MD_HEADING.match(line)):
            return m.group(1)
    return stem
