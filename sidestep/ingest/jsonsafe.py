"""JSON that cannot crash a reader: nesting is measured without recursion, and a file holding one
object or array whose members nest too deep is split into its members, so that only the deep ones
are rejected and the rest are read.

`json.loads` raises RecursionError somewhere near a thousand levels, and any recursive walk over what
it returns (flattening categories, `json.dumps` for a preview) fails earlier. A record nested deeper
than MAX_DEPTH is therefore never handed to the code after the reader: its member becomes `TooDeep`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 100  # levels of arrays/objects in one record (a record object itself is level 1)
TOO_DEEP = f"nested_too_deep: more than {MAX_DEPTH} levels of arrays or objects"

# strings (with escapes) first, so that brackets, commas and colons inside them are skipped
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)
_CLOSE = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class TooDeep:
    """Stands for a member nested deeper than MAX_DEPTH; `raw` is its JSON text."""

    raw: str


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when `value` nests arrays/objects more than `limit` levels deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads_guarded(text: str) -> Any:
    """`json.loads`, except that a top-level object's or array's member nested deeper than MAX_DEPTH
    becomes TooDeep instead of raising RecursionError (or reaching code that would). ValueError as
    json.loads for text that is not JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        return _split(text)
    members = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    if any(too_deep(m) for m in members):
        return _split(text)
    return value


def _split(text: str) -> Any:
    """The top-level container rebuilt member by member; members deeper than MAX_DEPTH are not parsed."""
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] not in _CLOSE:
        raise ValueError("nesting too deep outside an object or array")
    is_object = text[start] == "{"
    out: dict[str, Any] | list[Any] = {} if is_object else []
    for key, value_text, depth in _members(text, start, is_object):
        value = TooDeep(value_text.strip()) if depth > MAX_DEPTH else json.loads(value_text)
        if isinstance(out, dict):
            out[key] = value
        else:
            out.append(value)
    return out


def _members(text: str, start: int, is_object: bool) -> Iterator[tuple[str, str, int]]:
    """(key or "", value text, nesting depth of the value: 0 for a scalar) of each top-level member."""
    stack: list[str] = []
    begin = colon = None
    depth = count = 0
    for m in _TOKEN.finditer(text, start):
        tok = m.group()
        if tok in _CLOSE:
            stack.append(_CLOSE[tok])
            if len(stack) == 1:
                begin, colon, depth = m.end(), None, 0
            depth = max(depth, len(stack) - 1)
        elif tok in ("]", "}"):
            if not stack or stack.pop() != tok:
                raise ValueError(f"unbalanced {tok!r} at character {m.start()}")
            if not stack:
                body = text[begin : m.start()]
                if body.strip() or count:
                    yield _member(body, begin, colon, depth, is_object)
                if text[m.end() :].strip():
                    raise ValueError(f"extra data at character {m.end()}")
                return
        elif len(stack) == 1 and tok == ",":
            yield _member(text[begin : m.start()], begin, colon, depth, is_object)
            begin, colon, depth, count = m.end(), None, 0, count + 1
        elif len(stack) == 1 and tok == ":" and colon is None:
            colon = m.start()
    raise ValueError("unterminated object or array")


def _member(body: str, begin: int, colon: int | None, depth: int, is_object: bool) -> tuple[str, str, int]:
    if not body.strip():
        raise ValueError(f"expected a value at character {begin}")
    if not is_object:
        return "", body, depth
    if colon is None:
        raise ValueError(f"expected ':' after the key at character {begin}")
    key = json.loads(body[: colon - begin])
    if not isinstance(key, str):
        raise ValueError(f"object key is not a string at character {begin}")
    return key, body[colon - begin + 1 :], depth
