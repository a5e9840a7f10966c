"""plan_ingest: the pure rules behind idempotent, incremental ingest."""

from __future__ import annotations

import pytest

from sidestep.ingest.planning import plan_ingest
from sidestep.ingest.records import Document


def doc(doc_id: str, text: str, title: str = "") -> Document:
    return Document(doc_id=doc_id, text=text, title=title)


def stored(*docs: Document, deleted: bool = False) -> dict[str, tuple[str, bool]]:
    return {d.doc_id: (d.content_hash, deleted) for d in docs}


@pytest.fixture
def existing() -> dict[str, tuple[str, bool]]:
    return {
        **stored(doc("same", "unchanged text"), doc("edit", "old text"), doc("gone", "bye")),
        **stored(doc("dead", "was deleted"), doc("dead-gone", "still deleted"), deleted=True),
    }


@pytest.fixture
def incoming() -> list[Document]:
    return [
        doc("same", "unchanged text"),
        doc("edit", "new text"),
        doc("fresh", "brand new"),
        doc("dead", "back"),
    ]


def test_snapshot_classifies_everything(existing, incoming) -> None:
    plan = plan_ingest(existing, incoming, snapshot=True)
    assert [d.doc_id for d in plan.new] == ["fresh"]
    assert [d.doc_id for d in plan.updated] == ["edit"]
    assert plan.unchanged_ids == ["same"]
    assert [d.doc_id for d in plan.revived] == ["dead"]
    assert plan.tombstoned_ids == ["gone"]
    assert plan.counts() == {"new": 2, "updated": 1, "unchanged": 1, "tombstoned": 1}
    assert {d.doc_id for d in plan.to_write} == {"fresh", "dead", "edit"}


def test_without_snapshot_nothing_is_tombstoned(existing, incoming) -> None:
    plan = plan_ingest(existing, incoming, snapshot=False)
    assert plan.tombstoned_ids == []
    assert plan.counts() == {"new": 2, "updated": 1, "unchanged": 1, "tombstoned": 0}


def test_title_change_is_an_update() -> None:
    old = doc("a", "same text", title="Old")
    plan = plan_ingest(stored(old), [doc("a", "same text", title="New")], snapshot=True)
    assert [d.title for d in plan.updated] == ["New"] and plan.unchanged_ids == []


def test_revived_with_identical_content_is_still_revived() -> None:
    d = doc("a", "text")
    plan = plan_ingest(stored(d, deleted=True), [d], snapshot=True)
    assert plan.revived == [d] and plan.unchanged_ids == [] and plan.new == []
    assert plan.counts()["new"] == 1


def test_empty_snapshot_tombstones_every_live_document(existing) -> None:
    plan = plan_ingest(existing, [], snapshot=True)
    assert plan.tombstoned_ids == ["edit", "gone", "same"]
    assert plan_ingest(existing, [], snapshot=False).counts() == {
        "new": 0,
        "updated": 0,
        "unchanged": 0,
        "tombstoned": 0,
    }


def test_rerun_of_the_same_batch_changes_nothing() -> None:
    batch = [doc("a", "x"), doc("b", "y")]
    plan = plan_ingest(stored(*batch), batch, snapshot=True)
    assert plan.counts() == {"new": 0, "updated": 0, "unchanged": 2, "tombstoned": 0}
    assert plan.to_write == []


def test_incoming_duplicates() -> None:
    plan = plan_ingest({}, [doc("a", "x"), doc("a", "x")], snapshot=True)
    assert [d.doc_id for d in plan.new] == ["a"]
    with pytest.raises(ValueError, match="'a'"):
        plan_ingest({}, [doc("a", "x"), doc("a", "y")], snapshot=True)
