"""Parsers for recommendation folders: UniSRec / VQ-Rec processed RecBole data (.text +
.{train,valid,test}.inter, optional .item2index) and LC-Rec (.item.json + .inter.json), plus the
tab-separated helpers RecBole's atomic files (sidestep.ingest.recbole) share. Each yields item
records plus the users' interaction sequences.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidestep.ingest.formats import _json_error
from sidestep.ingest.jsonsafe import TOO_DEEP, TooDeep, loads_guarded
from sidestep.ingest.records import BadRecord, Interaction
from sidestep.ingest.validation import Item, RawRecord, SourceError, _decode_error, _json_type

# --------------------------------------------------------------------------- UniSRec (RecBole-processed)


@dataclass(frozen=True)
class _UnisrecLayout:
    text: Path
    item2index: Path | None
    inters: list[tuple[str, Path]]  # (split, path)


def _read_unisrec(root: Path) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
    layout = _unisrec_layout(root)
    mapping = _load_item2index(layout.item2index) if layout.item2index else None
    interactions: list[Interaction] = []
    bad: list[BadRecord] = []
    for split, path in layout.inters:
        rows, rows_bad = _read_unisrec_inter(path, split)
        interactions.extend(rows)
        bad.extend(rows_bad)
    return _iter_unisrec_text(layout.text, mapping), interactions, bad


def _unisrec_layout(root: Path) -> _UnisrecLayout:
    texts = sorted(p for p in root.glob("*.text") if p.is_file())
    if len(texts) != 1:
        found = ", ".join(p.name for p in texts) or "none"
        raise SourceError(f"unisrec folder {root} needs exactly one <name>.text file, found: {found}")
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
    return _UnisrecLayout(texts[0], item2index if item2index.is_file() else None, inters)


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


def _tsv_rows(path: Path, n_fields: int, start: int = 2) -> Iterator[tuple[str, str, list[str]] | BadRecord]:
    """Data rows from line `start` (after the header); undecodable or misshapen rows become BadRecords."""
    for lineno, line in _byte_lines(path, start):
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


def _iter_unisrec_text(path: Path, mapping: dict[str, str] | None) -> Iterator[Item]:
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


def _read_unisrec_inter(path: Path, split: str) -> tuple[list[Interaction], list[BadRecord]]:
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
    """LC-Rec files are one JSON object each: if that does not parse, nothing in it can be trusted.
    A member nested too deep is only that member's problem: it comes back as TooDeep."""
    try:
        value = loads_guarded(path.read_bytes().decode("utf-8-sig"))
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
        if isinstance(value, TooDeep):
            yield BadRecord(location, TOO_DEEP, key, value.raw)
            continue
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
        if isinstance(items, TooDeep):
            bad.append(BadRecord(location, TOO_DEEP, None, items.raw))
            continue
        ok = isinstance(items, list) and all(
            isinstance(i, str | int) and not isinstance(i, bool) for i in items
        )
        if ok:
            interactions.append(Interaction(str(user), tuple(str(i).strip() for i in items), None, "all"))
        else:
            reason = "malformed_json: expected an array of item ids"
            bad.append(BadRecord(location, reason, None, json.dumps(items, ensure_ascii=False)))
    return interactions, bad
