"""A document map and its parts: the parameters it is built with, its sections, and the error
raised when one cannot be built. Built by sidestep.docmaps.maps, stored by storage.maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class MapError(Exception):
    """A document's map could not be built; the caller quarantines the map, not the document."""

    def __init__(self, reason: str, content_hash: str | None = None):
        super().__init__(reason if content_hash is None else f"{content_hash}: {reason}")
        self.reason = reason
        self.content_hash = content_hash


# ----------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class MapParams:
    """Sizes of a map. Defaults: a section is a few chunks (a chunk is ~900 chars), its summary
    two or three sentences; the global summary fits with a query in one encoder window."""

    section_budget_chars: int = 300
    global_budget_chars: int = 600
    min_section_chars: int = 1000
    max_section_chars: int = 6000
    max_sentence_chars: int = 500
    tiling_window: int = 3  # sentences on each side of a gap
    tiling_std: float = 0.5  # a topic boundary needs depth > mean + tiling_std * std


@dataclass(frozen=True)
class Section:
    idx: int
    title: str
    char_start: int
    char_end: int
    summary: str


@dataclass
class DocMap:
    """The map of one document: its sections (a partition of the text) and a global summary."""

    content_hash: str
    title: str
    sections: list[Section]
    global_summary: str
    summarizer: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DocMap:
        secs = [Section(**s) for s in d["sections"]]
        return cls(d["content_hash"], d["title"], secs, d["global_summary"], d["summarizer"],
                   dict(d.get("params") or {}))

    def global_text(self) -> str:
        """What represents the whole document to the encoder: its title, then its global summary."""
        return join_title(self.title, self.global_summary)

    def section_texts(self) -> list[str]:
        """What represents each section: its heading path, then its summary."""
        return [join_title(s.title, s.summary) for s in self.sections]


def join_title(title: str, body: str) -> str:
    return f"{title}: {body}" if title and body else (title or body)
