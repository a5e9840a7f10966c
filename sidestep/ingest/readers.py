"""Pure source readers: every input format becomes validated Documents plus quarantined BadRecords.

Readers never write anything. Each format only parses; one function
(`validate_record`) decides what is a good document, and one pass
(`_finalize`) handles duplicates, so every format rejects bad input the same way
and a bad record never stops the batch. `SourceError` is reserved for problems
with the source as a whole (missing path, unknown format, unreadable layout),
and since `read_source` returns everything at once it is always raised before
the caller writes anything.

Locations are "file:line" (1-based line of the record's first line) for line
formats, "file.parquet:row" (1-based) for Parquet, "file.json[key]" for JSON
objects and arrays, and the relative path for text folders.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidestep.config import FORMATS
from sidestep.ingest.records import BadRecord, Document, Interaction

ACCEPTED_FORMATS = ", ".join(FORMATS)
TEXT_SUFFIXES = (".txt", ".md")
FILE_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DIR_FORMATS = ("beir", "textdir", "recbole", "lcrec")
MAX_LOCATIONS_IN_REASON = 10
_SURROGATE = re.compile("[\ud800-\udfff]")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_JSON_TYPES = {list: "array", dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


class SourceError(Exception):
    """Unreadable source (missing path, unknown format, undetectable layout). Raised before anything is written."""


@dataclass
class ReadResult:
    """Everything one source yielded; `bad` holds every rejected record, nothing is dropped silently."""

    documents: list[Document]  # validated and de-duplicated, in source order
    bad: list[BadRecord]  # every rejected record with reason + location
    interactions: list[Interaction]
    n_read: int  # document records seen (good + bad + duplicates), before dedupe
    n_duplicates: int  # exact duplicates (same id, same title+text) dropped but counted
    format: str


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


# --------------------------------------------------------------------------- detection


def detect_format(path: str | Path) -> str:
    """Guess the format from the path alone, so `--format` is only needed for odd layouts."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"source not found: {p} (accepted formats: {ACCEPTED_FORMATS})")
    if p.is_dir():
        return _detect_dir(p)
    fmt = FILE_SUFFIX_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise SourceError(
            f"cannot tell the format of {p} from its suffix {p.suffix!r}; expected one of "
            f"{', '.join(sorted(FILE_SUFFIX_FORMATS))} or a folder (accepted formats: {ACCEPTED_FORMATS})"
        )
    return fmt


def _detect_dir(p: Path) -> str:
    """Folder layouts, most specific first: a BEIR folder may also hold .md notes."""
    names = [c.name for c in p.iterdir() if c.is_file()]
    if "corpus.jsonl" in names:
        return "beir"
    if any(n.endswith(".text") for n in names) and any(n.endswith(".inter") for n in names):
        return "recbole"
    if any(n.endswith(".item.json") for n in names):
        return "lcrec"
    if next(_text_files(p), None) is not None:
        return "textdir"
    raise SourceError(
        f"cannot tell the format of folder {p}: it has no corpus.jsonl (beir), no .text + .inter "
        f"files (recbole), no .item.json (lcrec) and no .txt/.md files (textdir); "
        f"accepted formats: {ACCEPTED_FORMATS}"
    )


def _resolve_format(p: Path, fmt: str | None) -> str:
    """Check an explicit format against the path so a mismatch fails loudly instead of reading nothing."""
    if fmt is None:
        return detect_format(p)
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r} for {p}; accepted formats: {ACCEPTED_FORMATS}")
    if not p.exists():
        raise SourceError(f"source not found: {p} (accepted formats: {ACCEPTED_FORMATS})")
    if fmt in DIR_FORMATS and not p.is_dir():
        raise SourceError(f"format {fmt!r} needs a folder, but {p} is a file")
    if fmt not in DIR_FORMATS and not p.is_file():
        raise SourceError(f"format {fmt!r} needs a file, but {p} is a folder")
    return fmt


# --------------------------------------------------------------------------- entry point


def read_source(
    path: str | Path,
    fmt: str | None = None,
    *,
    id_field: str = "id",
    title_field: str | None = "title",
    text_field: str = "text",
    max_text_bytes: int = 1_000_000,
) -> ReadResult:
    """Read one source completely; bad records are collected, only a bad source raises SourceError."""
    p = Path(path)
    fmt = _resolve_format(p, fmt)
    opts = _Options(id_field, title_field, text_field, max_text_bytes)
    items, interactions, inter_bad = _dispatch(p, fmt, opts)
    documents, bad, n_read, n_duplicates = _finalize(items, max_text_bytes)
    return ReadResult(documents, bad + inter_bad, interactions, n_read, n_duplicates, fmt)


def _dispatch(p: Path, fmt: str, opts: _Options) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
    """Layout checks run here, eagerly, so SourceError comes before any record is parsed."""
    if fmt == "beir":
        corpus = p / "corpus.jsonl"
        if not corpus.is_file():
            raise SourceError(f"beir folder {p} has no corpus.jsonl")
        beir = _Options("_id", "title", "text", opts.max_text_bytes)
        return _iter_json_records(corpus, beir), [], []
    if fmt == "jsonl":
        return _iter_json_records(p, opts), [], []
    if fmt == "csv":
        return _iter_csv(p, opts), [], []
    if fmt == "parquet":
        return _iter_parquet(p, opts), [], []
    if fmt == "textdir":
        return _iter_textdir(p, opts), [], []
    if fmt == "recbole":
        return _read_recbole(p)
    return _read_lcrec(p)


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
    return doc_id, None


def _text_reason(text: Any, max_text_bytes: int) -> str | None:
    if text is None:
        return "missing_text"
    if not isinstance(text, str):
        return f"invalid_text: expected a string, got {_json_type(text)}"
    if _SURROGATE.search(text):
        return _surrogate_reason(text, "text")
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
    return title, None


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
    """Raw previews must be storable as UTF-8, so undecodable bytes become U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _decode_error(line: bytes, exc: UnicodeDecodeError) -> str:
    return f"not_utf8: invalid byte 0x{line[exc.start]:02x} at byte {exc.start}"


# --------------------------------------------------------------------------- de-duplication


def _finalize(items: Iterable[Item], max_text_bytes: int) -> tuple[list[Document], list[BadRecord], int, int]:
    """Validate, then resolve repeated ids: identical copies are counted, conflicting ones all quarantined.

    We cannot know which of two different versions of one id is right, so none of them is ingested.
    """
    first: dict[str, Document] = {}
    extra: dict[str, list[Document]] = {}
    bad: list[BadRecord] = []
    n_read = 0
    for item in items:
        n_read += 1
        result = item if isinstance(item, BadRecord) else validate_record(item, max_text_bytes)
        if isinstance(result, BadRecord):
            bad.append(result)
        elif result.doc_id in first:
            extra.setdefault(result.doc_id, []).append(result)
        else:
            first[result.doc_id] = result
    n_duplicates = 0
    for doc_id, copies in extra.items():
        head = first[doc_id]
        if all((c.title, c.text) == (head.title, head.text) for c in copies):
            n_duplicates += len(copies)
        else:
            bad.extend(_conflicts([head, *copies]))
            del first[doc_id]
    return list(first.values()), bad, n_read, n_duplicates


def _conflicts(copies: list[Document]) -> list[BadRecord]:
    locations = [c.location for c in copies]
    shown = ", ".join(locations[:MAX_LOCATIONS_IN_REASON])
    if len(locations) > MAX_LOCATIONS_IN_REASON:
        shown += f" and {len(locations) - MAX_LOCATIONS_IN_REASON} more"
    doc_id = copies[0].doc_id
    reason = f"conflicting_duplicate_id: {doc_id!r} seen at {shown}"
    return [BadRecord(c.location, reason, doc_id, _preview(c)) for c in copies]


def _preview(doc: Document) -> str:
    return json.dumps({"id": doc.doc_id, "title": doc.title, "text": doc.text}, ensure_ascii=False)


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
    except (ValueError, RecursionError) as exc:
        return BadRecord(location, f"malformed_json: {_json_error(exc)}", None, _printable(text))
    return _object_record(obj, location, opts, text)


def _object_record(obj: Any, location: str, opts: _Options, raw: str) -> Item:
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
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _array_records(array: list, name: str, opts: _Options) -> Iterator[Item]:
    for i, obj in enumerate(array):
        yield _object_record(obj, f"{name}[{i}]", opts, json.dumps(obj, ensure_ascii=False))


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
    for rel in _text_files(root):
        yield _text_file_record(root, rel, opts.max_text_bytes)


def _text_files(root: Path) -> Iterator[str]:
    """Relative posix paths of .txt/.md files, sorted so ids and order are stable across machines."""
    found: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.lower().endswith(TEXT_SUFFIXES):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    yield from sorted(found)


def _text_file_record(root: Path, rel: str, max_text_bytes: int) -> Item:
    path = root / rel
    try:
        size = path.stat().st_size
        if size > max_text_bytes + len(codecs.BOM_UTF8):
            return BadRecord(rel, _too_long(size, max_text_bytes), rel, _head(path))
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as exc:
        return BadRecord(rel, f"unreadable_file: {exc.strerror or exc}".lower(), rel)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(rel, _decode_error(data, exc), rel, data.decode("utf-8", "replace"))
    return RawRecord(rel, rel, _text_title(rel, text), text, text)


def _head(path: Path) -> str:
    with path.open("rb") as f:
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


# --------------------------------------------------------------------------- RecBole


@dataclass(frozen=True)
class _RecboleLayout:
    text: Path
    item2index: Path | None
    inters: list[tuple[str, Path]]  # (split, path)


def _read_recbole(root: Path) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
    layout = _recbole_layout(root)
    mapping = _load_item2index(layout.item2index) if layout.item2index else None
    interactions: list[Interaction] = []
    bad: list[BadRecord] = []
    for split, path in layout.inters:
        rows, rows_bad = _read_recbole_inter(path, split)
        interactions.extend(rows)
        bad.extend(rows_bad)
    return _iter_recbole_text(layout.text, mapping), interactions, bad


def _recbole_layout(root: Path) -> _RecboleLayout:
    texts = sorted(p for p in root.glob("*.text") if p.is_file())
    if len(texts) != 1:
        found = ", ".join(p.name for p in texts) or "none"
        raise SourceError(f"recbole folder {root} needs exactly one <name>.text file, found: {found}")
    name = texts[0].name[: -len(".text")]
    inters: list[tuple[str, Path]] = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name == f"{name}.inter":
            inters.append(("all", p))
        elif p.is_file() and p.name.startswith(f"{name}.") and p.name.endswith(".inter"):
            inters.append((p.name[len(name) + 1 : -len(".inter")], p))
    order = {"all": 0, "train": 1, "valid": 2, "test": 3}
    inters.sort(key=lambda sp: (order.get(sp[0], 4), sp[0]))
    item2index = root / f"{name}.item2index"
    return _RecboleLayout(texts[0], item2index if item2index.is_file() else None, inters)


def _load_item2index(path: Path) -> dict[str, str]:
    """ASIN -> integer index string; a broken mapping would silently split the id space, so it raises."""
    mapping: dict[str, str] = {}
    owners: dict[str, str] = {}
    for location, _raw, parts in _tsv_lines(path, start=1):
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise SourceError(f"{path}: line {location} is not 'item<TAB>index'")
        item, index = parts[0].strip(), parts[1].strip()
        if mapping.get(item, index) != index or owners.get(index, item) != item:
            raise SourceError(f"{path}: line {location} maps {item!r} -> {index!r} inconsistently")
        mapping[item] = index
        owners[index] = item
    return mapping


def _tsv_lines(path: Path, start: int) -> Iterator[tuple[str, str, list[str]]]:
    """(line number, line, fields) for non-blank lines from line `start`; raises on bytes that are not UTF-8."""
    for lineno, line in _byte_lines(path, start):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}:{lineno}: {_decode_error(line, exc)}") from exc
        yield str(lineno), text, text.split("\t")


def _byte_lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if lineno == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if lineno >= start and line.strip():
                yield lineno, line


def _tsv_header(path: Path, required: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """RecBole headers are `name:type`; columns are found by name so their order does not matter."""
    first = next(_byte_lines(path, 1), None)
    if first is None:
        raise SourceError(f"{path} is empty; expected a header with {', '.join(required)}")
    try:
        header = first[1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: header is not UTF-8") from exc
    names = header.split("\t")
    columns = {h.split(":", 1)[0].strip(): i for i, h in enumerate(names)}
    missing = [c for c in required if c not in columns]
    if missing:
        raise SourceError(f"{path} header lacks {', '.join(missing)}; found {header!r}")
    return columns, len(names)


def _tsv_rows(path: Path, n_fields: int) -> Iterator[tuple[str, str, list[str]] | BadRecord]:
    """Data rows after the header; undecodable or misshapen rows become BadRecords, not exceptions."""
    for lineno, line in _byte_lines(path, 2):
        location = f"{path.name}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield BadRecord(location, _decode_error(line, exc), None, line.decode("utf-8", "replace"))
            continue
        parts = text.split("\t")
        if len(parts) != n_fields:
            yield BadRecord(
                location, f"malformed_row: {len(parts)} fields, header has {n_fields}", None, text
            )
        else:
            yield location, text, parts


def _iter_recbole_text(path: Path, mapping: dict[str, str] | None) -> Iterator[Item]:
    cols, n_fields = _tsv_header(path, ("item_id", "text"))
    for row in _tsv_rows(path, n_fields):
        if isinstance(row, BadRecord):
            yield row
            continue
        location, raw, parts = row
        source_id = parts[cols["item_id"]].strip()
        title = parts[cols["title"]] if "title" in cols else None
        text = parts[cols["text"]]
        if mapping is None or not source_id:
            yield RawRecord(location, source_id, title, text, raw)
        elif source_id in mapping:
            yield RawRecord(location, mapping[source_id], title, text, raw, {"source_id": source_id})
        else:
            reason = f"unmapped_id: {source_id!r} has no entry in {path.stem}.item2index"
            yield BadRecord(location, reason, source_id, raw)


def _read_recbole_inter(path: Path, split: str) -> tuple[list[Interaction], list[BadRecord]]:
    cols, n_fields = _tsv_header(path, ("user_id", "item_id_list", "item_id"))
    interactions: list[Interaction] = []
    bad: list[BadRecord] = []
    for row in _tsv_rows(path, n_fields):
        if isinstance(row, BadRecord):
            bad.append(row)
            continue
        location, raw, parts = row
        user, target = parts[cols["user_id"]].strip(), parts[cols["item_id"]].strip()
        if not user or not target:
            bad.append(
                BadRecord(
                    location, f"malformed_row: missing {'user_id' if not user else 'item_id'}", None, raw
                )
            )
            continue
        history = tuple(parts[cols["item_id_list"]].split())
        interactions.append(Interaction(user, history, target, split))
    return interactions, bad


# --------------------------------------------------------------------------- LC-Rec


LCREC_TEXT_KEYS = ("title", "description", "brand", "categories")


def _read_lcrec(root: Path) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
    items = sorted(p for p in root.glob("*.item.json") if p.is_file())
    if len(items) != 1:
        found = ", ".join(p.name for p in items) or "none"
        raise SourceError(f"lcrec folder {root} needs exactly one <name>.item.json file, found: {found}")
    name = items[0].name[: -len(".item.json")]
    item_obj = _load_json_object(items[0])
    inter_path = root / f"{name}.inter.json"
    interactions, bad = _lcrec_interactions(inter_path) if inter_path.is_file() else ([], [])
    return _lcrec_items(item_obj, items[0].name), interactions, bad


def _load_json_object(path: Path) -> dict:
    """LC-Rec files are one JSON object each: if that does not parse, nothing in it can be trusted."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise SourceError(f"{path} is not valid JSON: {_json_error(exc)}") from exc
    if not isinstance(value, dict):
        raise SourceError(f"{path} must hold one JSON object, got {_json_type(value)}")
    return value


def _lcrec_items(obj: dict, name: str) -> Iterator[Item]:
    for key, value in obj.items():
        location = f"{name}[{key}]"
        raw = json.dumps(value, ensure_ascii=False)
        if not isinstance(value, dict):
            yield BadRecord(
                location, f"malformed_json: expected an object, got {_json_type(value)}", key, raw
            )
        else:
            yield RawRecord(location, key, value.get("title"), _lcrec_text(value), raw)


def _lcrec_text(item: dict) -> str:
    """Title, description, brand and categories, one per line, empty parts left out."""
    parts = (_flatten(item.get(k)) for k in LCREC_TEXT_KEYS)
    return "\n".join(p for p in parts if p)


def _flatten(value: Any) -> str:
    """Categories come as a string, a list, or a list of category paths; all become one line."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(s for s in (_flatten(v) for v in value) if s)
    return str(value).strip()


def _lcrec_interactions(path: Path) -> tuple[list[Interaction], list[BadRecord]]:
    interactions: list[Interaction] = []
    bad: list[BadRecord] = []
    for user, items in _load_json_object(path).items():
        location = f"{path.name}[{user}]"
        ok = isinstance(items, list) and all(
            isinstance(i, str | int) and not isinstance(i, bool) for i in items
        )
        if ok:
            interactions.append(Interaction(str(user), tuple(str(i).strip() for i in items), None, "all"))
        else:
            reason = "malformed_json: expected an array of item ids"
            bad.append(BadRecord(location, reason, None, json.dumps(items, ensure_ascii=False)))
    return interactions, bad
