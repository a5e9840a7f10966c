"""What every source format shares: the raw record a parser yields, the error a bad source raises,
and the one check (`validate_record`) that turns a raw record into a Document or a BadRecord.

Parsers only parse; the reasons a record is rejected are worded here, so every
format rejects bad input the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sidestep.ingest.records import BadRecord, Document

_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = {list: "array", dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


class SourceError(Exception):
    """Unreadable source (missing path, unknown format, undetectable layout). Raised before anything is written."""


@dataclass(frozen=True)
class RawRecord:
    """One parsed but unvalidated document record; field values are whatever the source held."""

    location: str
    doc_id: Any
    title: Any
    text: Any
    raw: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Options:
    id_field: str
    title_field: str | None
    text_field: str
    max_text_bytes: int


Item = RawRecord | BadRecord


# --------------------------------------------------------------------------- validation


def validate_record(rec: RawRecord, max_text_bytes: int) -> Document | BadRecord:
    """The one place that decides whether a record is a usable document, for every format."""
    doc_id, reason = _clean_id(rec.doc_id)
    if reason is None:
        reason = _text_reason(rec.text, max_text_bytes)
    title = ""
    if reason is None:
        title, reason = _clean_title(rec.title)
    if reason is not None:
        return BadRecord(rec.location, reason, doc_id, _printable(rec.raw))
    return Document(
        doc_id=doc_id, text=rec.text, title=title, location=rec.location, metadata=dict(rec.metadata)
    )


def _clean_id(value: Any) -> tuple[str | None, str | None]:
    """Ids become stripped strings; numbers are accepted because JSON and Parquet ids often are."""
    if value is None:
        return None, "missing_id"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"invalid_id: expected a string or integer, got {_json_type(value)}"
    doc_id = str(value).strip()
    if not doc_id:
        return None, "missing_id"
    if _SURROGATE.search(doc_id):
        return _printable(doc_id), _surrogate_reason(doc_id, "id")
    if "\x00" in doc_id:
        return doc_id.replace("\x00", "\ufffd"), _nul_reason("id")
    return doc_id, None


def _text_reason(text: Any, max_text_bytes: int) -> str | None:
    if text is None:
        return "missing_text"
    if not isinstance(text, str):
        return f"invalid_text: expected a string, got {_json_type(text)}"
    if _SURROGATE.search(text):
        return _surrogate_reason(text, "text")
    if "\x00" in text:
        return _nul_reason("text")
    if not text.strip():
        return "empty_text"
    n_bytes = len(text.encode("utf-8"))
    if n_bytes > max_text_bytes:
        return _too_long(n_bytes, max_text_bytes)
    return None


def _clean_title(value: Any) -> tuple[str, str | None]:
    """Titles are optional; numbers are kept as text because a title like 1984 is legitimate."""
    if value is None:
        return "", None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "", f"invalid_title: expected a string, got {_json_type(value)}"
    title = str(value).strip()
    if _SURROGATE.search(title):
        return "", _surrogate_reason(title, "title")
    if "\x00" in title:
        return "", _nul_reason("title")
    return title, None


def _nul_reason(what: str) -> str:
    """A NUL character is binary data (a UTF-16 file, an image named .txt), never text to index."""
    return f"nul_byte: a NUL character in {what}"


def _too_long(n_bytes: int, limit: int) -> str:
    return f"text_too_long: {n_bytes} bytes > {limit}"


def _surrogate_reason(value: str, what: str) -> str:
    """Surrogates mark bytes that were not UTF-8 (surrogateescape) or lone \\ud800-style JSON escapes."""
    m = _SURROGATE.search(value)
    assert m is not None
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"not_utf8: invalid byte 0x{code - 0xDC00:02x} in {what}"
    return f"not_utf8: lone surrogate \\u{code:04x} in {what}"


def _printable(value: str) -> str:
    """Raw previews must be storable as UTF-8, so undecodable bytes (and NULs) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", value).replace("\x00", "\ufffd")


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _decode_error(line: bytes, exc: UnicodeDecodeError) -> str:
    return f"not_utf8: invalid byte 0x{line[exc.start]:02x} at byte {exc.start}"
