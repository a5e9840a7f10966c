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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sidestep.ingest.bounded import (
    ArrayEnd,
    BoundedTextLines,
    RecordTooLong,
    Skipped,
    array_members,
    bounded_lines,
    record_limit,
    too_long_reason,
)
from sidestep.ingest.jsonsafe import MAX_DEPTH, TOO_DEEP, TooDeep, too_deep
from sidestep.ingest.parquetsafe import iter_parquet
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
    """JSONL streamed line by line; a .json file holding one JSON array is streamed member by member.
    Neither a line nor a member is held whole beyond `record_limit` (see sidestep.ingest.bounded)."""
    if path.suffix.lower() == ".json" and _first_byte(path) == b"[":
        yield from _iter_json_array(path, opts)
        return
    yield from _iter_jsonl(path, opts)


def _iter_jsonl(path: Path, opts: _Options) -> Iterator[Item]:
    limit = record_limit(opts.max_text_bytes)
    with path.open("rb") as f:
        for lineno, line in enumerate(bounded_lines(f, limit), 1):
            location = f"{path.name}:{lineno}"
            if isinstance(line, Skipped):
                yield _skipped(line, location, limit, opts)
                continue
            if lineno == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if line.strip():
                yield _parse_json_line(line.rstrip(b"\r\n"), location, opts)


def _iter_json_array(path: Path, opts: _Options) -> Iterator[Item]:
    limit, end = record_limit(opts.max_text_bytes), ArrayEnd()
    with path.open("rb") as f:
        for i, member in enumerate(array_members(f, limit, MAX_DEPTH, end)):
            location = f"{path.name}[{i}]"
            if isinstance(member, Skipped):
                yield _skipped(member, location, limit, opts)
            else:
                yield _parse_json_line(member.strip(), location, opts)
    if end.error:
        yield BadRecord(f"{path.name}[end]", f"malformed_json: {end.error}")
    elif end.rest:
        yield BadRecord(f"{path.name}[end]", "malformed_json: extra data after the top-level array (not read)",
                        None, end.rest.decode("utf-8", "replace"))


def _skipped(s: Skipped, location: str, limit: int, opts: _Options) -> BadRecord:
    raw = s.head.decode("utf-8", "replace")
    if s.deep:
        return BadRecord(location, TOO_DEEP, None, raw)
    m = re.search('"' + re.escape(opts.id_field) + r'"\s*:\s*("(?:[^"\\]|\\.){1,200}"|-?\d{1,30})', raw)
    try:
        record_id = str(json.loads(m.group(1))) if m else None
    except ValueError:
        record_id = None
    return BadRecord(location, too_long_reason(s.n_bytes, limit, at_least=s.at_least), record_id, raw)


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
        msg = exc.msg.lower()  # some end in "at" already ("unterminated string starting at")
        return f"{msg} column {exc.colno}" if msg.endswith(" at") else f"{msg} at column {exc.colno}"
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


# --------------------------------------------------------------------------- CSV


def _iter_csv(path: Path, opts: _Options) -> Iterator[Item]:
    """Decoding with surrogateescape keeps one bad byte from failing the file; validation flags the row.
    A record longer than `record_limit` characters (one field, or all of them) is never held whole: the
    csv module reads lines through BoundedTextLines and its own field limit is set to the same bound."""
    limit = record_limit(opts.max_text_bytes)
    previous_limit = csv.field_size_limit(limit)
    try:
        with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            lines = BoundedTextLines(f, limit)
            reader = csv.reader(lines)
            try:
                header = next(reader, None)
            except RecordTooLong as exc:
                raise SourceError(f"{path}: the header line is over {limit} characters") from exc
            if header is None:
                return
            columns = _columns([h.strip() for h in header], opts, path)
            yield from _csv_rows(reader, lines, len(header), columns, path.name, limit)
    finally:
        csv.field_size_limit(previous_limit)


def _csv_rows(reader: Any, lines: BoundedTextLines, n_header: int, columns: tuple[int, int | None, int],
              name: str, limit: int) -> Iterator[Item]:
    previous = reader.line_num
    lost = 0  # lines the reader did not count: an over-long line raises before it is counted
    while True:
        location = f"{name}:{previous + lost + 1}"
        lines.reset()
        try:
            row = next(reader)
        except StopIteration:
            return
        except RecordTooLong as exc:
            previous, lost = reader.line_num, lost + 1
            s = exc.skipped
            yield BadRecord(location, too_long_reason(s.n_bytes, limit), None, s.head.decode("utf-8", "replace"))
            continue
        except csv.Error as exc:
            previous = reader.line_num
            reason = str(exc).lower()
            code = "record_too_long" if "field limit" in reason else "malformed_csv"
            yield BadRecord(location, f"{code}: {reason}", None, _printable(lines.head))
            continue
        previous = reader.line_num
        if row:
            yield _csv_record(row, n_header, columns, location)


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


# --------------------------------------------------------------------------- Parquet


def _iter_parquet(path: Path, opts: _Options) -> Iterator[Item]:
    """Streams row batches with a bound on memory (sidestep.ingest.parquetsafe); binary cells are decoded
    there and bad bytes are caught by validation."""
    return iter_parquet(path, opts, _columns)


# --------------------------------------------------------------------------- text folders


def _iter_textdir(root: Path, opts: _Options, entries: list[tuple[str, str]] | None = None) -> Iterator[Item]:
    """Only regular files inside the root are read: links are not followed, special files never opened.
    `entries`: the folder's scan (`scan_textdir(root).entries`) when the caller already has it."""
    for rel, kind in _text_entries(root) if entries is None else entries:
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


SKIPPED_NAMED = 20  # skipped files named in a report; the count covers the rest


@dataclass
class TextDirScan:
    """One walk of a text folder: what it reads, and what it holds but does not read."""

    entries: list[tuple[str, str]]  # (relative path, "file" | "symlink" | a special kind) of each .txt/.md entry
    skipped: int  # regular files that are not .txt/.md (hidden files and folders left out)
    skipped_files: list[str]  # the first SKIPPED_NAMED of them, in walk order (files before subfolders, sorted)


def scan_textdir(root: Path) -> TextDirScan:
    """Every .txt/.md entry and every linked folder, with its kind, and the count (and first names) of the
    regular files the folder holds but does not read, so that an ingest says what it did not read instead of
    staying silent. Links and special files not named like text are not counted; hidden files and anything
    under a hidden folder (.DS_Store, .git/) are not counted either. Memory for the skipped stays bounded.

    os.walk does not enter linked folders (followlinks=False) but lists them among the folders; lstat
    tells a link or a FIFO named like a text file from a regular file without opening it.
    """
    found: list[tuple[str, str]] = []
    skipped, first = 0, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        hidden_dir = any(part.startswith(".") for part in rel_dir.parts)
        for name in dirnames:
            if Path(dirpath, name).is_symlink():
                found.append(((rel_dir / name).as_posix(), "symlink"))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.lower().endswith(TEXT_SUFFIXES):
                found.append(((rel_dir / name).as_posix(), _entry_kind(path)))
            elif not (hidden_dir or name.startswith(".")) and _entry_kind(path) == "file":
                skipped += 1
                if len(first) < SKIPPED_NAMED:
                    first.append((rel_dir / name).as_posix())
    return TextDirScan(sorted(found), skipped, first)


def _text_entries(root: Path) -> list[tuple[str, str]]:
    """(relative path, kind) of every .txt/.md entry and every linked folder (`scan_textdir`)."""
    return scan_textdir(root).entries


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
