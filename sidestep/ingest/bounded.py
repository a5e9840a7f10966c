"""Reading with a bound: no record is held in memory whole before its size is known.

A JSONL line, a member of a `.json` array, a CSV record or a Parquet cell larger than
`record_limit(max_text_bytes)` is skipped as it is read (its first bytes kept as a preview) and
quarantined as `record_too_long`; only records under the bound are parsed, and the text check of
validation (`max_text_bytes`) then applies as before. The bound leaves room for JSON escapes
(`\\u0001` is six bytes for one) and for the other fields, so no record whose text is within
`max_text_bytes` is refused here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

CHUNK = 1 << 20
RECORD_SLACK = 1 << 20  # bytes beyond the escaped text a record may hold: id, title, other fields
PREVIEW_BYTES = 2000


def record_limit(max_text_bytes: int) -> int:
    """Largest raw record (bytes) that is parsed at all."""
    return 6 * max_text_bytes + RECORD_SLACK


def too_long_reason(n_bytes: int, limit: int, *, at_least: bool = False) -> str:
    return f"record_too_long: {'more than ' if at_least else ''}{n_bytes} bytes > {limit} (not parsed)"


@dataclass(frozen=True)
class Skipped:
    """A record not held whole: its size (bytes, a lower bound when `at_least`) and its first bytes."""

    n_bytes: int
    head: bytes
    at_least: bool = False
    deep: bool = False  # nested deeper than allowed (JSON array members), so never parsed


# --------------------------------------------------------------------------- lines


def bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | Skipped]:
    """The file's physical lines (newline kept), a line over `limit` bytes as Skipped (its rest read and
    dropped in chunks)."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        n, head = len(line), line[:PREVIEW_BYTES]
        while not line.endswith(b"\n"):
            line = f.readline(CHUNK)
            if not line:
                break
            n += len(line)
        yield Skipped(n, head)


class RecordTooLong(Exception):
    def __init__(self, skipped: Skipped):
        super().__init__("record too long")
        self.skipped = skipped


class BoundedTextLines:
    """Feeds csv.reader lines, at most `limit` characters per record: `reset()` after each record; a
    record that grows past it raises RecordTooLong out of the reader after the rest of the record is read
    and dropped. The record's end is found by quote parity (a quoted field spans lines; quotes inside it
    are doubled), so the reader resumes at the next record, not inside the long one."""

    def __init__(self, f: TextIO, limit: int):
        self.f, self.limit = f, limit
        self.reset()

    def reset(self) -> None:
        self.used, self.quotes, self.head = 0, 0, ""

    def __iter__(self) -> BoundedTextLines:
        return self

    def __next__(self) -> str:
        line = self.f.readline(self.limit + 1)
        if not line:
            raise StopIteration
        if not self.used:
            self.head = line[:PREVIEW_BYTES]
        self.used += len(line)
        self.quotes += line.count('"')
        if self.used <= self.limit:
            return line
        n, head = self.used, self.head
        while not (line.endswith("\n") and self.quotes % 2 == 0):
            line = self.f.readline(CHUNK)
            if not line:
                break
            n += len(line)
            self.quotes += line.count('"')
        self.reset()
        raise RecordTooLong(Skipped(n, head.encode("utf-8", "surrogateescape")[:PREVIEW_BYTES]))


# --------------------------------------------------------------------------- JSON arrays

_OUTSIDE = re.compile(rb'["\[\]{},]')
_SPACE = b" \t\r\n"


class NotAnArray(ValueError):
    pass


@dataclass
class ArrayEnd:
    """What follows the top-level array: `rest` is the first bytes after it when it is not only space,
    `error` says why the array did not end properly (truncated file)."""

    rest: bytes = b""
    error: str | None = None


class _Member:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.n = 0
        self.depth = 0
        self.max_depth = 0
        self.head = b""

    def add(self, data: bytes, limit: int) -> None:
        if not data:
            return
        if self.n < PREVIEW_BYTES:
            self.head += data[: PREVIEW_BYTES - self.n]
        self.n += len(data)
        if self.n <= limit:
            self.parts.append(data)
        else:
            self.parts = []

    def result(self, limit: int, max_depth: int) -> bytes | Skipped:
        if self.n > limit:
            return Skipped(self.n, self.head)
        if self.max_depth > max_depth:
            return Skipped(self.n, self.head, deep=True)
        return b"".join(self.parts)


def array_members(f: BinaryIO, limit: int, max_depth: int, end: ArrayEnd) -> Iterator[bytes | Skipped]:
    """The members of the JSON array the file holds, as raw bytes, one at a time; a member over `limit`
    bytes or nested more than `max_depth` levels is Skipped without being held or parsed. Raises
    NotAnArray before yielding anything when the file does not start with '['. `end` is filled in when
    the iteration finishes. Only the structure is scanned here (strings skipped, brackets counted); each
    member is then parsed on its own, so a malformed member costs only itself."""
    buf = f.read(CHUNK).removeprefix(b"\xef\xbb\xbf")
    pos = len(buf) - len(buf.lstrip(_SPACE))
    if buf[pos : pos + 1] != b"[":
        raise NotAnArray("not a JSON array")
    pos += 1
    member: _Member | None = None
    in_string = after_comma = False
    escaped = 0  # inside a string at a chunk's end: 2, or 1 on an unpaired backslash (skip the next byte)
    while True:
        if pos >= len(buf):
            buf, pos = f.read(CHUNK), 0
            if not buf:
                end.error = "unterminated array at end of file"
                if member is not None:
                    yield member.result(limit, max_depth)
                return
        if in_string:
            assert member is not None
            stop, escaped = _string_end(buf, pos + (escaped == 1))
            member.add(buf[pos:stop], limit)
            pos, in_string = stop, escaped != 0
            continue
        m = _OUTSIDE.search(buf, pos)
        stop = m.start() if m else len(buf)
        tok = buf[stop : stop + 1]
        if member is None:
            if not buf[pos:stop].strip(_SPACE) and tok in (b"", b",", b"]"):
                pos = stop + 1 if tok else stop
                if tok == b",":  # no value before a comma
                    yield b""
                    after_comma = True
                elif tok == b"]":
                    if after_comma:  # a trailing comma
                        yield b""
                    _finish(f, buf, pos, end)
                    return
                continue
            member = _Member()
        if not tok:
            member.add(buf[pos:stop], limit)
            pos = stop
            continue
        if member.depth == 0 and tok in (b",", b"]"):
            member.add(buf[pos:stop], limit)
            yield member.result(limit, max_depth)
            member, pos, after_comma = None, stop + 1, tok == b","
            if tok == b"]":
                _finish(f, buf, pos, end)
                return
            continue
        member.add(buf[pos : stop + 1], limit)
        pos = stop + 1
        if tok == b'"':
            in_string = True
        elif tok in (b"[", b"{"):
            member.depth += 1
            member.max_depth = max(member.max_depth, member.depth)
        elif tok in (b"]", b"}") and member.depth > 0:
            member.depth -= 1


def _string_end(buf: bytes, start: int) -> tuple[int, int]:
    """Inside a string from `start`: (the index after its closing quote, 0), or (len(buf), 2, or 1 when
    the chunk ends on an unpaired backslash) when it runs past the chunk. A quote closes the string when an
    even number of backslashes precedes it; memchr (bytes.find) does the scanning."""
    q = buf.find(b'"', start)
    while q != -1:
        k = q
        while k > start and buf[k - 1] == 0x5C:
            k -= 1
        if (q - k) % 2 == 0:
            return q + 1, 0
        q = buf.find(b'"', q + 1)
    k = len(buf)
    while k > start and buf[k - 1] == 0x5C:
        k -= 1
    return len(buf), 2 - (len(buf) - k) % 2


def _finish(f: BinaryIO, buf: bytes, pos: int, end: ArrayEnd) -> None:
    rest = buf[pos:].lstrip(_SPACE)
    while not rest:
        more = f.read(CHUNK)
        if not more:
            return
        rest = more.lstrip(_SPACE)
    end.rest = rest[:PREVIEW_BYTES]
