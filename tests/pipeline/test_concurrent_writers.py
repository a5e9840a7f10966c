"""Concurrent writers of one domain lose nothing: two ingests with different inputs both land (the domain's
write lock), and a publish whose input is older than what CURRENT serves is refused (the documents'
generation). Each test pauses one writer inside its critical section to force the interleaving."""

from __future__ import annotations

import json
import threading

import sidestep.pipeline.ingest as ingest_module
from sidestep.config import SourceConfig
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.documents import DocumentStore


def _source(tmp_path, name: str, docs: list[tuple[str, str]]) -> SourceConfig:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    return SourceConfig(domain="shared", path=str(path), format="jsonl", snapshot=False)


def test_two_ingests_into_one_domain_both_land(data_root, settings, tmp_path, monkeypatch):
    a = _source(tmp_path, "a", [("a1", "Herons wait by the weir at dawn.")])
    b = _source(tmp_path, "b", [("b1", "Otters slide down the muddy bank.")])
    real_write, paused = ingest_module.rewrite_partition, threading.Event()
    b_done = threading.Event()

    def slow_first_write(*args, **kw):
        # writer A stops between reading the partition and writing it back, until B is done (or 3 s pass:
        # with the lock, B cannot finish while A holds it)
        if threading.current_thread().name == "A" and not paused.is_set():
            paused.set()
            b_done.wait(timeout=3)
        return real_write(*args, **kw)

    monkeypatch.setattr(ingest_module, "rewrite_partition", slow_first_write)
    limit = settings.ingest.max_text_bytes
    ta = threading.Thread(target=ingest_source, args=(data_root, a), kwargs={"max_text_bytes": limit}, name="A")
    ta.start()
    assert paused.wait(timeout=30)
    tb = threading.Thread(target=lambda: (ingest_source(data_root, b, max_text_bytes=limit), b_done.set()),
                          name="B")
    tb.start()
    ta.join(timeout=60)
    tb.join(timeout=60)
    docs = DocumentStore(data_root).read("shared")
    assert sorted(docs["doc_id"].to_pylist()) == ["a1", "b1"]
    assert DocumentStore(data_root).snapshot("shared")[1] == 2  # two rewrites, two generations


def test_a_publish_of_an_older_snapshot_is_refused(data_root, settings, encoder, tmp_path, monkeypatch):
    limit = settings.ingest.max_text_bytes
    old = _source(tmp_path, "v", [("d1", "The ferry leaves at nine."), ("d2", "Tickets are sold on board.")])
    ingest_source(data_root, old, max_text_bytes=limit)
    embed_domain(data_root, settings, "shared", show_progress=False)

    # a slow reindex: it reads the documents (generation 1), then stalls before publishing ...
    store = DocumentStore(data_root)
    real_snapshot, read, resume = store.snapshot, threading.Event(), threading.Event()

    def stalled_snapshot(self, domain, include_deleted=True):
        out = real_snapshot(domain, include_deleted)
        if threading.current_thread().name == "slow":
            read.set()
            resume.wait(timeout=120)
        return out

    monkeypatch.setattr(DocumentStore, "snapshot", stalled_snapshot)
    result = {}
    slow = threading.Thread(target=lambda: result.update(pub=publish_domain(data_root, settings, "shared")),
                            name="slow")
    slow.start()
    assert read.wait(timeout=60)
    # ... meanwhile a newer ingest (generation 2) is embedded and published
    new = _source(tmp_path, "v", [("d1", "The ferry leaves at ten."), ("d2", "Tickets are sold on board.")])
    ingest_source(data_root, new, max_text_bytes=limit)
    embed_domain(data_root, settings, "shared", show_progress=False)
    fresh = publish_domain(data_root, settings, "shared")
    assert fresh.published
    resume.set()
    slow.join(timeout=300)
    stale = result["pub"]
    assert not stale.published and "older" in stale.reason, stale
    current = IndexStore(data_root).current_manifest("shared")
    assert current["version"] == fresh.version and current["documents_generation"] == 2
