"""Pure planning of an incremental ingest: what is new, changed, unchanged or gone.

Storage applies the plan; keeping the decision here (no I/O) makes reruns
idempotent by construction and lets the rules be tested without a data root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sidestep.ingest.records import Document


@dataclass
class IngestPlan:
    """The outcome of comparing one source batch with what storage already holds."""

    new: list[Document] = field(default_factory=list)
    updated: list[Document] = field(default_factory=list)
    unchanged_ids: list[str] = field(default_factory=list)
    tombstoned_ids: list[str] = field(default_factory=list)
    revived: list[Document] = field(default_factory=list)  # ids that existed only as tombstones

    def counts(self) -> dict[str, int]:
        """Report counts; a revived document is new to every reader of the index, so it counts as new."""
        return {
            "new": len(self.new) + len(self.revived),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged_ids),
            "tombstoned": len(self.tombstoned_ids),
        }

    @property
    def to_write(self) -> list[Document]:
        """Documents whose rows must be (re)written; unchanged ones are skipped so they are not re-embedded."""
        return [*self.new, *self.revived, *self.updated]


def plan_ingest(
    existing: Mapping[str, tuple[str, bool]], incoming: Sequence[Document], *, snapshot: bool
) -> IngestPlan:
    """Classify `incoming` against `existing` (doc_id -> (content_hash, deleted)).

    With `snapshot` the source is the whole corpus, so live ids it lacks are
    tombstoned; without it (an append/update feed) nothing is tombstoned.
    Incoming ids must be unique: identical repeats are ignored, conflicting ones
    raise ValueError because the readers are expected to have quarantined them.
    """
    plan = IngestPlan()
    seen: dict[str, str] = {}
    for doc in incoming:
        if _already_seen(doc, seen):
            continue
        _classify(doc, existing.get(doc.doc_id), plan)
    if snapshot:
        plan.tombstoned_ids = sorted(
            i for i, (_h, deleted) in existing.items() if not deleted and i not in seen
        )
    return plan


def _already_seen(doc: Document, seen: dict[str, str]) -> bool:
    previous = seen.get(doc.doc_id)
    if previous is None:
        seen[doc.doc_id] = doc.content_hash
        return False
    if previous != doc.content_hash:
        raise ValueError(f"incoming batch has two different documents with id {doc.doc_id!r}")
    return True


def _classify(doc: Document, current: tuple[str, bool] | None, plan: IngestPlan) -> None:
    if current is None:
        plan.new.append(doc)
        return
    stored_hash, deleted = current
    if deleted:
        plan.revived.append(doc)
    elif stored_hash == doc.content_hash:
        plan.unchanged_ids.append(doc.doc_id)
    else:
        plan.updated.append(doc)
