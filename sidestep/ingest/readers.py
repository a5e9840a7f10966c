"""Pure source readers: every input format becomes validated Documents plus quarantined BadRecords.

Readers never write anything. Each format only parses (sidestep.ingest.formats
for files and text folders, sidestep.ingest.recbole for RecBole's atomic files,
sidestep.ingest.recformats for UniSRec and LC-Rec folders); one function (`validate_record`, in
sidestep.ingest.validation) decides what is a good document, and one pass (`_finalize`) handles duplicates,
so every format rejects bad input the same way and a bad record never stops the
batch. `SourceError` is reserved for problems with the source as a whole
(missing path, unknown format, unreadable layout), and since `read_source`
returns everything at once it is always raised before the caller writes anything.

Locations are "file:line" (1-based line of the record's first line) for line
formats, "file.parquet:row" (1-based) for Parquet, "file.json[key]" for JSON
objects and arrays, and the relative path for text folders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sidestep.config import FORMATS
from sidestep.ingest.formats import (
    TextDirScan,
    _iter_csv,
    _iter_json_records,
    _iter_parquet,
    _iter_textdir,
    _text_files,
    scan_textdir,
)
from sidestep.ingest.recbole import atomic_inter, has_atomic_header, read_recbole
from sidestep.ingest.recformats import _read_lcrec, _read_unisrec
from sidestep.ingest.records import RAW_PREVIEW_CHARS, BadRecord, Document, Interaction
from sidestep.ingest.validation import Item, SourceError, _Options, validate_record

__all__ = ["ReadResult", "SourceError", "SourceStream", "detect_format", "read_source", "stream_source",
           "validate_record"]

ACCEPTED_FORMATS = ", ".join(FORMATS)
FILE_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DIR_FORMATS = ("beir", "textdir", "recbole", "unisrec", "lcrec")
MAX_LOCATIONS_IN_REASON = 10


@dataclass
class SourceStream:
    """One source read lazily: `items` yields each record validated (Document or BadRecord) as it is read,
    before de-duplication, so a caller can write as it goes; interactions are small and come whole."""

    items: Iterator[Document | BadRecord]
    interactions: list[Interaction]
    bad_interactions: list[BadRecord]
    format: str
    skipped: int = 0  # files of a text folder not read (not .txt/.md)
    skipped_files: list[str] = field(default_factory=list)  # the first of them by path


@dataclass
class ReadResult:
    """Everything one source yielded; `bad` holds every rejected record, nothing is dropped silently."""

    documents: list[Document]  # validated and de-duplicated, in source order
    bad: list[BadRecord]  # every rejected record with reason + location
    interactions: list[Interaction]
    n_read: int  # document records seen (good + bad + duplicates), before dedupe
    n_duplicates: int  # exact duplicates (same id, same title+text) dropped but counted
    format: str


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
        return "unisrec"
    if any(n.endswith(".item.json") for n in names):
        return "lcrec"
    inter = atomic_inter(p)
    if inter is not None and has_atomic_header(inter):
        return "recbole"
    if next(_text_files(p), None) is not None:
        return "textdir"
    raise SourceError(
        f"cannot tell the format of folder {p}: it has no corpus.jsonl (beir), no .text + .inter "
        f"files (unisrec), no .item.json (lcrec), no <name>.inter with a typed header such as "
        f"user_id:token (recbole) and no .txt/.md files (textdir); "
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
    stream = stream_source(path, fmt, id_field=id_field, title_field=title_field, text_field=text_field,
                           max_text_bytes=max_text_bytes)
    documents, bad, n_read, n_duplicates = _finalize(stream.items)
    return ReadResult(documents, bad + stream.bad_interactions, stream.interactions, n_read, n_duplicates,
                      stream.format)


def stream_source(
    path: str | Path,
    fmt: str | None = None,
    *,
    id_field: str = "id",
    title_field: str | None = "title",
    text_field: str = "text",
    max_text_bytes: int = 1_000_000,
) -> SourceStream:
    """The source's records one at a time, validated; SourceError for a bad source is raised here, before
    any record is read. No record is held whole beyond `sidestep.ingest.bounded.record_limit`."""
    p = Path(path)
    fmt = _resolve_format(p, fmt)
    opts = _Options(id_field, title_field, text_field, max_text_bytes)
    scan = scan_textdir(p) if fmt == "textdir" else None  # one walk: what is read and what is not
    items, interactions, inter_bad = _dispatch(p, fmt, opts, scan)
    validated = (item if isinstance(item, BadRecord) else validate_record(item, max_text_bytes) for item in items)
    if scan is None:
        return SourceStream(validated, interactions, inter_bad, fmt)
    return SourceStream(validated, interactions, inter_bad, fmt, skipped=scan.skipped, skipped_files=scan.skipped_files)


def _dispatch(p: Path, fmt: str, opts: _Options, scan: TextDirScan | None = None
              ) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
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
        return _iter_textdir(p, opts, scan.entries if scan else None), [], []
    if fmt == "recbole":
        return read_recbole(p)
    if fmt == "unisrec":
        return _read_unisrec(p)
    return _read_lcrec(p)


# --------------------------------------------------------------------------- de-duplication


def _finalize(items: Iterable[Document | BadRecord]) -> tuple[list[Document], list[BadRecord], int, int]:
    """Validate, then resolve repeated ids: identical copies are counted, conflicting ones all quarantined.

    We cannot know which of two different versions of one id is right, so none of them is ingested.
    """
    first: dict[str, Document] = {}
    extra: dict[str, list[Document]] = {}
    bad: list[BadRecord] = []
    n_read = 0
    for item in items:
        n_read += 1
        result = item
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
    reason = conflict_reason(copies[0].doc_id, [c.location for c in copies])
    return [BadRecord(c.location, reason, c.doc_id, preview(c)) for c in copies]


def conflict_reason(doc_id: str, locations: list[str]) -> str:
    shown = ", ".join(locations[:MAX_LOCATIONS_IN_REASON])
    if len(locations) > MAX_LOCATIONS_IN_REASON:
        shown += f" and {len(locations) - MAX_LOCATIONS_IN_REASON} more"
    return f"conflicting_duplicate_id: {doc_id!r} seen at {shown}"


def preview(doc: Document) -> str:
    """A quarantined document's raw form; only its first RAW_PREVIEW_CHARS are kept (BadRecord)."""
    return json.dumps({"id": doc.doc_id, "title": doc.title[:RAW_PREVIEW_CHARS],
                       "text": doc.text[:RAW_PREVIEW_CHARS]}, ensure_ascii=False)
