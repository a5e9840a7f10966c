"""Repeated ids, decided while a source streams past: what `read_source` does on a list, done on a stream
that is written out as it is read, holding only ids and hashes (never the documents).

An identical copy (same id, same title and text) is counted and dropped; an id seen with two different
contents is a conflict: we cannot know which version is right, so every copy is quarantined, the first
one included (the caller fetches it back from where it wrote it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidestep.ingest.readers import conflict_reason, preview
from sidestep.ingest.records import BadRecord, Document

MAX_HELD_PREVIEWS = 10_000  # previews kept for repeated copies; later ones are quarantined without one


@dataclass(frozen=True)
class DocRef:
    """What ingest planning needs of a document: its id and content hash."""

    doc_id: str
    content_hash: str


@dataclass
class _Repeat:
    copies: list[tuple[str, str, str]] = field(default_factory=list)  # (location, content hash, preview)


class StreamDedupe:
    def __init__(self) -> None:
        self.first: dict[str, tuple[str, str]] = {}  # doc_id -> (content hash, location)
        self.repeats: dict[str, _Repeat] = {}
        self.held = 0

    def add(self, doc: Document) -> bool:
        """True for the first copy of an id (the caller writes it); later copies are remembered here."""
        seen = self.first.get(doc.doc_id)
        if seen is None:
            self.first[doc.doc_id] = (doc.content_hash, doc.location)
            return True
        shown = preview(doc) if self.held < MAX_HELD_PREVIEWS else ""
        self.held += 1
        self.repeats.setdefault(doc.doc_id, _Repeat()).copies.append((doc.location, doc.content_hash, shown))
        return False

    def conflicting_ids(self) -> set[str]:
        return {d for d, r in self.repeats.items() if any(h != self.first[d][0] for _loc, h, _p in r.copies)}

    @property
    def n_duplicates(self) -> int:
        conflicts = self.conflicting_ids()
        return sum(len(r.copies) for d, r in self.repeats.items() if d not in conflicts)

    def unique(self) -> list[DocRef]:
        """First copies of every id that is not in conflict, in source order."""
        conflicts = self.conflicting_ids()
        return [DocRef(d, h) for d, (h, _loc) in self.first.items() if d not in conflicts]

    def conflicts(self, heads: dict[str, Document]) -> list[BadRecord]:
        """Every copy of every conflicting id; `heads` holds the first copies (as written)."""
        out: list[BadRecord] = []
        conflicts = self.conflicting_ids()
        for doc_id in (d for d in self.repeats if d in conflicts):  # in the order the lists did (first repeat)
            head_loc = self.first[doc_id][1]
            copies = self.repeats[doc_id].copies
            reason = conflict_reason(doc_id, [head_loc, *(loc for loc, _h, _p in copies)])
            head = heads.get(doc_id)
            out.append(BadRecord(head_loc, reason, doc_id, preview(head) if head is not None else ""))
            out.extend(BadRecord(loc, reason, doc_id, shown) for loc, _h, shown in copies)
        return out
