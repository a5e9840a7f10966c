"""A bad entry on disk costs only its own domain; a replica with nothing loaded falls back to the newest
verified version; pins and live replicas protect versions from GC; housekeeping never removes what a
version references."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from sidestep.serving.versions import VersionedDomains
from sidestep.storage import housekeeping
from sidestep.storage.artifacts import MANIFEST, IndexStore
from sidestep.storage.indexes import load_version
from sidestep.storage.pins import active_pin, read_pin
from sidestep.storage.replicas import Heartbeat, read_heartbeats, served_versions, write_heartbeat
from tests.storage.test_artifacts import _publish


class Indexes(VersionedDomains):
    """The serving replicas' version logic over real index versions, without an encoder."""

    def load(self, domain, version):
        return load_version(self.store, domain, version)

    def version_of(self, loaded):
        return loaded.version


def _damage(store: IndexStore, domain: str, version: str) -> None:
    f = store.path(domain, version) / "index.faiss"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_a_badly_named_copy_costs_nothing_but_is_reported(data_root):
    store = IndexStore(data_root)
    _publish(store, "handbook", 5, "v1")
    _publish(store, "news", 6, "v1")
    shutil.copytree(store.base("handbook"), data_root.root / "indexes" / "Handbook-BAK")
    assert data_root.domains_with_indexes() == ["handbook", "news"]
    assert store.domains() == ["handbook", "news"]
    svc = Indexes(store)
    svc.refresh()  # raised ValueError (invalid domain name) before: no domain loaded at all
    assert sorted(svc.loaded) == ["handbook", "news"]
    assert "indexes/Handbook-BAK" in svc.bad_entries
    assert "not a valid domain name" in svc.bad_entries["indexes/Handbook-BAK"]
    # hot reload of the other domains goes on
    _publish(store, "news", 7, "v2")
    assert svc.refresh() == {"news": "v2"}


def test_a_current_with_an_invalid_name_costs_only_its_domain(data_root):
    store = IndexStore(data_root)
    _publish(store, "handbook", 5, "v1")
    _publish(store, "news", 6, "v1")
    svc = Indexes(store)
    svc.refresh()
    (store.base("handbook") / "CURRENT").write_text("../../etc\n")
    _publish(store, "news", 7, "v2")
    assert svc.refresh() == {"news": "v2"}  # the poller went on past the bad domain
    assert "CURRENT unusable" in svc.errors["handbook"]
    assert svc.served()["handbook"] == "v1"  # a running replica keeps what it served
    fresh = Indexes(store)
    fresh.refresh()  # a fresh replica falls back to the newest complete version
    assert fresh.served() == {"handbook": "v1", "news": "v2"}
    assert fresh.fallback["handbook"]["serving"] == "v1" and fresh.fallback["handbook"]["current"] is None


def test_a_fresh_replica_falls_back_to_the_newest_verified_version(data_root):
    store = IndexStore(data_root)
    for i, v in enumerate(["v1", "v2", "v3", "v4"]):
        _publish(store, "news", 5 + i, v)
    _damage(store, "news", "v4")  # CURRENT
    _damage(store, "news", "v3")  # and the one before it
    svc = Indexes(store)
    svc.refresh()
    assert svc.served() == {"news": "v2"}  # read from disk: this replica never saw v2 serve
    fb = svc.fallback["news"]
    assert fb["serving"] == "v2" and fb["current"] == "v4" and "checksum mismatch" in fb["reason"]
    assert svc.unavailable() == {}
    # CURRENT moves to a good version: served, the fallback note is gone
    _publish(store, "news", 20, "v5")
    assert svc.refresh() == {"news": "v5"} and svc.fallback == {}


def test_nothing_to_fall_back_to_leaves_the_domain_unavailable_with_its_reason(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _publish(store, "solo", 5, "v1")
    _damage(store, "solo", "v1")
    svc = Indexes(store)
    svc.refresh()
    assert svc.served() == {"news": "v1"}
    assert "checksum mismatch" in svc.unavailable()["solo"]


def test_rollback_pins_and_a_newer_ingest_clears_the_pin(data_root):
    from sidestep.ingest.records import Document
    from sidestep.storage.documents import DocumentStore

    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _publish(store, "news", 6, "v2")
    assert store.rollback("news") == ("v2", "v1")
    pin = read_pin(store, "news")
    assert pin["version"] == "v1" and pin["reason"] == "rollback" and pin["previous_version"] == "v2"
    assert active_pin(store, "news") is not None
    docs = DocumentStore(data_root)
    with docs.writer("news"):
        docs.apply("news", "src", [Document(doc_id="d", text="new text", location="x")], [])
    assert active_pin(store, "news") is None and read_pin(store, "news") is None


def test_gc_keeps_pinned_current_and_served_versions_and_forgets_a_dead_replica(data_root):
    store = IndexStore(data_root)
    for i, v in enumerate(["v1", "v2", "v3", "v4", "v5"]):
        _publish(store, "news", 5 + i, v)
    store.rollback("news", "v2")  # CURRENT v2, pinned
    write_heartbeat(data_root, Heartbeat("search-a", {"indexes": {"news": "v3"}}))
    write_heartbeat(data_root, Heartbeat("search-dead", {"indexes": {"news": "v1"}},
                                         written_at=time.time() - 120, ttl_s=60))
    assert served_versions(data_root, "indexes", "news") == {"v3"}
    (store.base("news") / "CURRENT").write_text("v4\n")  # an operator repoints by hand; the pin still stands
    removed = store.gc("news", keep=1)
    assert removed == ["v1"]  # the crashed replica's record expired
    assert store.versions("news") == ["v2", "v3", "v4", "v5"]


def _leftovers(data_root, store):
    """A folder without a manifest, an old staging folder, an interrupted write, old quarantine, a stale
    replica record."""
    old = time.time() - 7200
    partial = store.base("news") / "v9-partial"
    shutil.copytree(store.path("news", "v1"), partial)
    (partial / MANIFEST).unlink()
    staging = store.base("news") / ".staging-abc"
    staging.mkdir()
    (staging / "index.faiss").write_bytes(b"x" * 100)
    tmp = store.base("news") / ".CURRENT.1234.tmp"
    tmp.write_text("v1")
    q = data_root.quarantine("news")
    q.mkdir(parents=True)
    (q / "old-run.parquet").write_bytes(b"q" * 10)
    (q / "new-run.parquet").write_bytes(b"q" * 10)
    for p in (staging, tmp, q / "old-run.parquet"):
        os.utime(p, (old, old))
    os.utime(q / "old-run.parquet", (time.time() - 40 * 86400,) * 2)
    write_heartbeat(data_root, Heartbeat("gone", {"indexes": {"news": "v1"}}, written_at=old, ttl_s=60))
    return partial, staging, tmp, q


def test_housekeeping_is_a_dry_run_until_apply_and_never_touches_a_version(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _publish(store, "news", 6, "v2")
    partial, staging, tmp, q = _leftovers(data_root, store)
    # embedding shards: one an index version references, one a live document needs, one nothing needs
    emb = data_root.embeddings("enc")
    emb.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sidestep.ingest.records import Document
    from sidestep.storage.documents import DocumentStore

    live = Document(doc_id="d", text="t", location="x")
    for shard, h in (("used", "h-used"), ("live", live.content_hash), ("orphan", "h-gone")):
        pq.write_table(pa.table({"content_hash": [h]}), emb / f"{shard}.parquet")
        (emb / f"{shard}.tokens.npy").write_bytes(b"t" * 64)
    (emb / "torn.tokens.npy").write_bytes(b"t" * 64)
    os.utime(emb / "torn.tokens.npy", (time.time() - 7200,) * 2)
    m = store.path("news", "v2") / MANIFEST  # the version's manifest names its encoder and shards
    doc = json.loads(m.read_text())
    doc.update(encoder="enc", embeddings={"encoder": "enc", "shards": ["used"]})
    m.write_text(json.dumps(doc))
    m1 = store.path("news", "v1") / MANIFEST
    d1 = json.loads(m1.read_text())
    d1.update(encoder="enc", embeddings={"encoder": "enc", "shards": []})
    m1.write_text(json.dumps(d1))
    docs = DocumentStore(data_root)
    with docs.writer("news"):
        docs.apply("news", "src", [live], [])

    plan = housekeeping.plan(data_root)
    listed = {i.path: i for i in plan.items}
    want = {str(p.relative_to(data_root.root)) for p in (partial, staging, tmp, q / "old-run.parquet")}
    want |= {f"embeddings/enc/orphan.{x}" for x in ("parquet", "tokens.npy")} | {"embeddings/enc/torn.tokens.npy",
                                                                               "replicas/gone.json"}
    assert set(listed) == want, sorted(listed)
    assert all(i.bytes > 0 and i.reason for i in plan.items)
    assert listed["quarantine/domain=news/old-run.parquet"].kind == "quarantine"
    assert plan.as_dict()["dry_run"] and all(p.exists() for p in (partial, staging, tmp))  # nothing removed yet
    housekeeping.apply(data_root, plan)
    assert sorted(plan.removed) == sorted(want) and not plan.skipped
    assert not any((data_root.root / p).exists() for p in want)
    for v in store.versions("news"):  # every published version still verifies
        store.verify("news", v)
    assert (emb / "used.parquet").exists() and (emb / "live.parquet").exists() and (q / "new-run.parquet").exists()
    assert read_heartbeats(data_root) == []
    assert housekeeping.plan(data_root).items == []


def test_the_gc_command_keeps_its_domain_form_and_types_its_dry_run(data_root):
    from typer.testing import CliRunner

    from sidestep.cli import app

    store = IndexStore(data_root)
    for i, v in enumerate(["v1", "v2", "v3"]):
        _publish(store, "news", 5 + i, v)
    partial, *_ = _leftovers(data_root, store)
    runner = CliRunner()
    r = runner.invoke(app, ["gc", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["dry_run"] is True and res["removed"] == [] and res["bytes"] == sum(i["bytes"] for i in res["items"])
    assert {"path", "kind", "reason", "bytes"} <= set(res["items"][0]) and partial.exists()
    r = runner.invoke(app, ["gc", "--apply", "--json"])
    assert r.exit_code == 0 and not partial.exists() and json.loads(r.stdout)["removed"]
    r = runner.invoke(app, ["gc", "--domain", "news", "--keep", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"domain": "news", "kind": "indexes", "removed": ["v1", "v2"]}


def test_rollback_unpin_and_status_from_the_command_line(data_root):
    from typer.testing import CliRunner

    from sidestep.cli import app

    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _publish(store, "news", 6, "v2")
    runner = CliRunner()
    r = runner.invoke(app, ["rollback", "--domain", "news", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pinned"] == "v1"
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st["domains"]["news"]["pin"]["version"] == "v1"
    assert "pinned to v1" in runner.invoke(app, ["status"]).stdout
    r = runner.invoke(app, ["unpin", "--domain", "news", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unpinned"]["indexes"]["version"] == "v1"
    assert read_pin(store, "news") is None
    shutil.copytree(store.base("news"), data_root.root / "indexes" / "News-BAK")
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)  # a stray copy does not break status
    assert "indexes/News-BAK" in st["bad_entries"] and list(st["domains"]) == ["news"]


@pytest.mark.parametrize("content", ["", "not json", "[1]"])
def test_an_unreadable_pin_still_pins(data_root, content):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    (store.base("news") / "PIN").write_text(content)
    assert active_pin(store, "news") is not None
