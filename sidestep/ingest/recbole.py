"""RecBole's standard atomic files: `NAME.inter` (required) and `NAME.item` (the items' features).

Each is tab-separated with a typed header, one `name:type` per column, type one of token,
token_seq, float, float_seq; columns are found by name, so their order does not matter and
columns sidestep does not use are carried along unread. `.inter` needs user_id and item_id (a
timestamp orders each user's interactions; file order otherwise); `.item` needs item_id, and an
item's text is its textual (token and token_seq) columns, title first, one per line. Each user
becomes one chronological sequence, split leave-one-out like LC-Rec's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sidestep.ingest.recformats import _byte_lines, _tsv_rows
from sidestep.ingest.records import BadRecord, Interaction
from sidestep.ingest.validation import Item, RawRecord, SourceError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_TYPES = ("token", "token_seq")
HEADER_EXAMPLE = "user_id:token<TAB>item_id:token<TAB>timestamp:float"


@dataclass(frozen=True)
class Header:
    path: Path
    lineno: int  # line of the header; data rows follow it
    names: list[str]
    types: dict[str, str]

    def index(self, name: str) -> int:
        return self.names.index(name)


def has_atomic_header(path: Path) -> bool:
    """For detection only: does the first non-blank line look like `name:token` columns?"""
    first = next(_byte_lines(path, 1), None)
    return first is not None and b":token" in first[1]


def atomic_inter(root: Path) -> Path | None:
    """The folder's one `NAME.inter` (the one named after the folder when there are several)."""
    inters = sorted(p for p in root.glob("*.inter") if p.is_file())
    if len(inters) == 1:
        return inters[0]
    named = root / f"{root.name}.inter"
    return named if named in inters else None


def read_header(path: Path, required: tuple[str, ...]) -> Header:
    """A header that cannot be read makes every row meaningless: SourceError, naming the file and line."""
    first = next(_byte_lines(path, 1), None)
    if first is None:
        raise SourceError(f"{path} is empty; expected a typed header such as {HEADER_EXAMPLE}")
    lineno, line = first
    where = f"{path}:{lineno}"
    try:
        header = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{where}: header is not UTF-8 (invalid byte 0x{line[exc.start]:02x})") from exc
    names: list[str] = []
    types: dict[str, str] = {}
    for i, column in enumerate(header.split("\t"), 1):
        parts = column.strip().split(":")
        if len(parts) != 2 or not parts[0] or parts[1] not in ATOMIC_TYPES:
            raise SourceError(f"{where}: column {i} {column!r} is not name:type with a type of "
                              f"{', '.join(ATOMIC_TYPES)} (e.g. {HEADER_EXAMPLE})")
        if parts[0] in types:
            raise SourceError(f"{where}: column {parts[0]!r} appears twice")
        names.append(parts[0])
        types[parts[0]] = parts[1]
    missing = [c for c in required if c not in types]
    if missing:
        raise SourceError(f"{where}: header lacks {', '.join(missing)}; found {header!r}")
    return Header(path, lineno, names, types)


def read_recbole(root: Path) -> tuple[Iterable[Item], list[Interaction], list[BadRecord]]:
    inter = atomic_inter(root)
    if inter is None:
        found = ", ".join(p.name for p in sorted(root.glob("*.inter"))) or "none"
        hint = (" (a .text file: this looks like the UniSRec layout, --format unisrec)"
                if any(root.glob("*.text")) else "")
        raise SourceError(f"recbole folder {root} needs one <name>.inter file (or {root.name}.inter), "
                          f"found: {found}{hint}")
    inter_header = read_header(inter, ("user_id", "item_id"))
    item_path = inter.with_suffix(".item")
    item_header = read_header(item_path, ("item_id",)) if item_path.is_file() else None
    interactions, bad = _interactions(inter_header)
    items: Iterable[Item] = _items(item_header) if item_header else ()
    return items, interactions, bad


def _interactions(header: Header) -> tuple[list[Interaction], list[BadRecord]]:
    """One sequence per user, in order of first appearance; a stable sort on the timestamp keeps file
    order among equal timestamps."""
    user_col, item_col = header.index("user_id"), header.index("item_id")
    time_col = header.index("timestamp") if "timestamp" in header.types else None
    rows: dict[str, list[tuple[float, int, str]]] = {}
    bad: list[BadRecord] = []
    for n, row in enumerate(_tsv_rows(header.path, len(header.names), header.lineno + 1)):
        if isinstance(row, BadRecord):
            bad.append(row)
            continue
        location, raw, parts = row
        user, item = parts[user_col].strip(), parts[item_col].strip()
        if not user or not item:
            missing = "user_id" if not user else "item_id"
            bad.append(BadRecord(location, f"malformed_row: missing {missing}", None, raw))
            continue
        when = 0.0
        if time_col is not None:
            value = parts[time_col].strip()
            when = _number(value)
            if math.isnan(when):
                bad.append(BadRecord(location, f"invalid_timestamp: {value!r} is not a number", None, raw))
                continue
        rows.setdefault(user, []).append((when, n, item))
    interactions = [Interaction(user, tuple(item for *_, item in sorted(seq)), None, "all")
                    for user, seq in rows.items()]
    return interactions, bad


def _number(value: str) -> float:
    """A finite float, or NaN for anything else (empty, text, inf, nan)."""
    try:
        x = float(value)
    except ValueError:
        return math.nan
    return x if math.isfinite(x) else math.nan


def _items(header: Header) -> Iterator[Item]:
    """Item rows as raw records; an item whose textual columns are all empty fails validation (empty_text)."""
    id_col = header.index("item_id")
    title = _title_column(header)
    textual = [name for name in header.names if header.types[name] in TEXT_TYPES and name not in ("item_id", title)]
    text_cols = [header.index(name) for name in ([title] if title else []) + textual]
    title_col = header.index(title) if title else None
    for row in _tsv_rows(header.path, len(header.names), header.lineno + 1):
        if isinstance(row, BadRecord):
            yield row
            continue
        location, raw, parts = row
        text = "\n".join(v for v in (parts[c].strip() for c in text_cols) if v)
        item_title = parts[title_col].strip() if title_col is not None else None
        yield RawRecord(location, parts[id_col].strip(), item_title, text, raw)


def _title_column(header: Header) -> str | None:
    """`title`, else a column named like `movie_title`, else `name` (RecBole's datasets use all three)."""
    textual = [n for n in header.names if header.types[n] in TEXT_TYPES and n != "item_id"]
    for pick in (lambda n: n == "title", lambda n: n.endswith("title"), lambda n: n == "name"):
        found = next((n for n in textual if pick(n)), None)
        if found:
            return found
    return None
