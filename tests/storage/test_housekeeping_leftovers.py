"""Housekeeping and the ingest's own leftovers: a killed run's staging file is collected, a live run's is not;
a first ingest that fails leaves no phantom domain; a re-plan just before deleting keeps a shard that became
needed; the shards a backup copy's versions read are kept; deleted documents do not keep shards alive."""

from __future__ import annotations

import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidestep.ingest.records import Document
from sidestep.storage import housekeeping
from sidestep.storage.artifacts import MANIFEST, IndexStore
from sidestep.storage.documents import DocumentStore
from sidestep.storage.staging import Staging
from tests.storage.test_artifacts import _publish


def _shard(data_root, name: str, content_hash: str) -> None:
    emb = data_root.embeddings("enc")
    emb.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"content_hash": [content_hash]}), emb / f"{name}.parquet")
    (emb / f"{name}.tokens.npy").write_bytes(b"t" * 64)


def _references(store: IndexStore, domain: str, version: str, shards: list[str]) -> None:
    m = store.path(domain, version) / MANIFEST
    doc = json.loads(m.read_text())
    doc.update(encoder="enc", embeddings={"encoder": "enc", "shards": shards})
    m.write_text(json.dumps(doc))


def test_a_killed_ingests_staging_file_is_collected_and_a_live_ones_is_not(data_root):
    folder = data_root.documents("news")
    folder.mkdir(parents=True)
    dead = folder / ".staging-killed.parquet"
    dead.write_bytes(b"p" * 100)
    tmp = folder / ".part-0.parquet.123.tmp"
    tmp.write_bytes(b"x")
    os.utime(tmp, (time.time() - 7200,) * 2)
    with Staging(data_root, "news", "live") as live:
        live.add(Document(doc_id="a", text="alpha", location="x"))
        listed = {i.path: i for i in housekeeping.plan(data_root).items}
        assert set(listed) == {"documents/domain=news/.staging-killed.parquet",
                               "documents/domain=news/.part-0.parquet.123.tmp"}, sorted(listed)
        assert listed["documents/domain=news/.staging-killed.parquet"].kind == "staging"
        plan = housekeeping.apply(data_root, housekeeping.plan(data_root))
        assert not dead.exists() and not tmp.exists() and live.path.exists()
        assert sorted(plan.removed) == sorted(listed)


def test_a_first_ingest_that_fails_leaves_no_phantom_domain(data_root):
    with pytest.raises(RuntimeError), Staging(data_root, "fresh", "run1") as staged:
        staged.add(Document(doc_id="a", text="alpha", location="x"))
        raise RuntimeError("the source broke")
    assert not data_root.documents("fresh").exists()
    assert "fresh" not in data_root.domains_with_documents()


def test_apply_checks_shards_again_and_keeps_one_needed_since_the_plan(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _references(store, "news", "v1", [])
    doc = Document(doc_id="d", text="back again", location="x")
    _shard(data_root, "orphan", doc.content_hash)
    plan = housekeeping.plan(data_root)
    assert {i.path for i in plan.items} == {"embeddings/enc/orphan.parquet", "embeddings/enc/orphan.tokens.npy"}
    docs = DocumentStore(data_root)  # the document comes back between the dry run and --apply
    with docs.writer("news"):
        docs.apply("news", "src", [doc], [])
    housekeeping.apply(data_root, plan)
    assert plan.removed == [] and len(plan.skipped) == 2
    assert (data_root.embeddings("enc") / "orphan.parquet").exists()


def test_the_shards_a_backup_copy_reads_are_kept_and_deleted_documents_keep_none(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _references(store, "news", "v1", ["s-news"])
    shutil.copytree(store.base("news"), data_root.root / "indexes" / "News-BAK")
    _references(store, "news", "v1", [])  # the live domain moved on; only the backup still reads s-news
    gone = Document(doc_id="g", text="deleted since", location="x")
    _shard(data_root, "s-news", "h-news")
    _shard(data_root, "s-gone", gone.content_hash)
    docs = DocumentStore(data_root)
    with docs.writer("news"):
        docs.apply("news", "src", [gone], [])
    with docs.writer("news"):
        docs.apply("news", "src", [], ["g"])  # tombstoned: no live document needs its shard any more
    listed = {i.path for i in housekeeping.plan(data_root).items}
    assert listed == {"embeddings/enc/s-gone.parquet", "embeddings/enc/s-gone.tokens.npy"}, sorted(listed)
