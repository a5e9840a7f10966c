"""Plain records passed between readers, ingest planning and storage.

They carry no paths and no I/O: readers build them, storage persists them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

RAW_PREVIEW_CHARS = 2000


def content_hash(title: str, text: str) -> str:
    """Stable hash of what the encoder sees; the key of every content-addressed cache."""
    h = hashlib.sha256()
    h.update(title.encode("utf-8", "surrogateescape"))
    h.update(b"\x1f")
    h.update(text.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""
    location: str = ""  # where it came from: "corpus.jsonl:12", "notes/a.md"
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.text)


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be ingested, with the reason and where it was found."""

    location: str
    reason: str
    record_id: str | None = None
    raw: str = ""

    def __post_init__(self) -> None:
        if len(self.raw) > RAW_PREVIEW_CHARS:
            object.__setattr__(self, "raw", self.raw[:RAW_PREVIEW_CHARS])


@dataclass(frozen=True)
class Interaction:
    """One row of a user's interaction sequence, as the source gives it.

    UniSRec rows are (history, target) pairs per split; LC-Rec and RecBole atomic files give one
    full sequence per user (target None, split "all").
    """

    user_id: str
    history: tuple[str, ...]
    target: str | None = None
    split: str = "all"
