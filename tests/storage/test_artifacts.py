from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

from sidestep.retrieval.index import build_index
from sidestep.storage.artifacts import CorruptArtifact, IndexStore, PublishBusy
from sidestep.storage.atomic import write_parquet
from sidestep.storage.indexes import load_version, validate_folder, write_version_files


def _publish(store: IndexStore, domain: str, n: int, version: str) -> dict:
    rng = np.random.default_rng(n)
    vecs = rng.normal(size=(n, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index, params = build_index(vecs, exact_max_vectors=1000)
    chunks = pa.table({
        "doc_id": [f"d{i}" for i in range(n)], "title": [""] * n, "content_hash": ["h"] * n,
        "chunk_idx": [0] * n, "char_start": [0] * n, "char_end": [1] * n, "shard": ["s"] * n,
        "token_offset": [0] * n, "n_tokens": [1] * n, "snippet": ["x"] * n})
    with store.staging(domain) as staged:
        write_version_files(staged, index, chunks)
        return store.publish(domain, staged, version, {"counts": {"documents": n}, "index": params.as_dict()})


def test_publish_points_current_at_a_verified_version(data_root):
    store = IndexStore(data_root)
    assert store.current("news") is None
    m1 = _publish(store, "news", 5, "v1")
    assert store.current("news") == "v1" and m1["parent"] is None
    m2 = _publish(store, "news", 7, "v2")
    assert store.current("news") == "v2" and m2["parent"] == "v1"
    assert store.versions("news") == ["v1", "v2"]
    corpus = load_version(store, "news", "v2")
    assert corpus.n_docs == 7 and corpus.version == "v2"
    assert set(m2["files"]) == {"index.faiss", "chunks.parquet", "golden.parquet"}


def test_published_versions_are_immutable(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    with pytest.raises(FileExistsError):
        _publish(store, "news", 6, "v1")
    assert store.current("news") == "v1"
    assert not list(store.root.indexes("news").glob(".staging-*"))  # the failed build left nothing behind


def test_corruption_is_detected_and_never_becomes_current(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    _publish(store, "news", 6, "v2")
    f = store.path("news", "v2") / "index.faiss"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact):
        store.verify("news", "v2")
    with pytest.raises(CorruptArtifact):
        load_version(store, "news", "v2")
    store.set_current("news", "v1")  # rollback to a good version works
    with pytest.raises(CorruptArtifact):
        store.set_current("news", "v2")
    assert store.current("news") == "v1"


def _chunks(n: int) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(n)], "title": [""] * n, "content_hash": ["h"] * n,
                     "chunk_idx": [0] * n, "char_start": [0] * n, "char_end": [1] * n, "shard": ["s"] * n,
                     "token_offset": [0] * n, "n_tokens": [1] * n, "snippet": ["x"] * n})


def _unit(rng, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_sealed_version_whose_index_does_not_match_its_chunks_is_refused_at_load(data_root):
    """Checksums cannot catch a version built from the wrong vectors; counts and golden queries do."""
    import faiss

    store = IndexStore(data_root)
    _publish(store, "news", 40, "v1")
    assert load_version(store, "news", "v1").searcher.index.ntotal == 40
    rng = np.random.default_rng(7)
    for name, counts in (("v2", 40), ("v3", 41)):
        with store.staging("news") as staged:
            write_version_files(staged, build_index(_unit(rng, 40), exact_max_vectors=1000)[0], _chunks(40))
            if name == "v2":  # same size, other vectors, written after the golden queries were taken
                faiss.write_index(build_index(_unit(rng, 40), exact_max_vectors=1000)[0], str(staged / "index.faiss"))
            store.publish("news", staged, name, {"counts": {"documents": 40, "chunks": counts}})
        store.verify("news", name)  # the checksums pass ...
        with pytest.raises(CorruptArtifact, match="golden query" if name == "v2" else "manifest counts 41"):
            load_version(store, "news", name)  # ... the load does not
        # and a publisher with the gate never makes it current
        with pytest.raises(CorruptArtifact), store.staging("news") as staged:
            shutil.copytree(store.path("news", name), staged, dirs_exist_ok=True)
            (staged / "manifest.json").unlink()
            store.publish("news", staged, name + "-gated", {"counts": {"documents": 40, "chunks": counts}},
                          validate=validate_folder)
        assert store.current("news") == name and name + "-gated" not in store.versions("news")
        assert not store.path("news", name + "-gated").exists()


def test_an_index_whose_rows_do_not_line_up_with_its_chunk_table_is_refused_at_build(data_root):
    rng = np.random.default_rng(3)
    vecs = _unit(rng, 60)
    index = build_index(vecs, exact_max_vectors=1000)[0]
    shuffled = np.roll(np.arange(60), 7)  # the chunk table's row r says document d{r}; the index holds d{r+7}
    store = IndexStore(data_root)
    with store.staging("news") as staged:
        write_version_files(staged, index, _chunks(60), golden_vector=lambda r: vecs[r])  # aligned: fine
        with pytest.raises(CorruptArtifact, match="do not line up"):
            write_version_files(staged, index, _chunks(60), golden_vector=lambda r: vecs[shuffled[r]])


def test_names_cannot_escape_the_data_root(data_root):
    store = IndexStore(data_root)
    for bad in ["../etc", "/abs", "a/b", "..", "UPPER", ""]:
        with pytest.raises(ValueError):
            store.path(bad, "v1")
        with pytest.raises(ValueError):
            store.path("news", bad)


def test_publish_lock_admits_one_publisher(data_root):
    store = IndexStore(data_root)
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sidestep.storage.artifacts import IndexStore
        from sidestep.storage.paths import DataRoot
        with IndexStore(DataRoot(Path({str(data_root.root)!r}))).lock("news"):
            print("locked", flush=True)
            time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(PublishBusy), store.lock("news", wait=False):
            pass
    finally:
        p.kill()
        p.wait()
    with store.lock("news", wait=False):  # released when its holder died
        pass


def test_atomic_parquet_write_survives_a_crash_mid_write(data_root, tmp_path):
    """kill -9 while a new version of a file is being written: the old file is intact."""
    target = tmp_path / "docs.parquet"
    write_parquet(target, pa.table({"x": list(range(10))}))
    code = textwrap.dedent(f"""
        import os, pyarrow as pa, pyarrow.parquet as pq
        from pathlib import Path
        import sidestep.storage.atomic as a
        real = pq.write_table
        def slow(table, where, **kw):
            real(table.slice(0, 5), where, **kw)
            Path({str(tmp_path / "marker")!r}).write_text("mid-write")
            import time; time.sleep(60)
        a.pq.write_table = slow
        a.write_parquet(Path({str(target)!r}), pa.table({{"x": list(range(1000))}}))
    """)
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not (tmp_path / "marker").exists():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    os.kill(p.pid, 9)
    p.wait()
    import pyarrow.parquet as pq

    assert pq.read_table(target)["x"].to_pylist() == list(range(10))


def test_rollback_goes_to_the_previous_version_or_a_named_one(data_root):
    store = IndexStore(data_root)
    for i, v in enumerate(("v1", "v2", "v3")):
        _publish(store, "d", 5 + i, v)
    assert store.rollback("d") == ("v3", "v2") and store.current("d") == "v2"
    assert store.rollback("d", to="v3") == ("v2", "v3")
    with pytest.raises(ValueError, match="no complete version"):
        store.rollback("d", to="v9")
    store.set_current("d", "v1")
    with pytest.raises(ValueError, match="no version older"):
        store.rollback("d")


def test_gc_keeps_the_newest_versions_and_never_the_current_one(data_root):
    store = IndexStore(data_root)
    for i, v in enumerate(("v1", "v2", "v3", "v4")):
        _publish(store, "d", 5 + i, v)
    store.set_current("d", "v1")  # rolled back to the oldest: it must survive
    assert store.gc("d", keep=2) == ["v2"]
    assert store.versions("d") == ["v1", "v3", "v4"] and store.current("d") == "v1"
    assert load_version(store, "d", "v1").version == "v1"


def test_tables_and_codebooks_live_in_their_own_folders(data_root):
    from sidestep.storage.paths import SHARED

    assert IndexStore(data_root, "tables").base("shop") == data_root.root / "tables" / "shop"
    assert IndexStore(data_root, "codebooks").base(SHARED) == data_root.root / "codebooks"
    with pytest.raises(ValueError):
        IndexStore(data_root, "codebooks").base("shop")
    with pytest.raises(ValueError):
        IndexStore(data_root, "tables").base("../etc")


def test_sweep_removes_staging_left_by_killed_runs_except_where_a_publisher_works(data_root):
    store = IndexStore(data_root)
    _publish(store, "news", 5, "v1")
    for d in ("news", "first-publish-killed", "busy"):  # the second never got a CURRENT
        (store.base(d) / ".staging-deadbeef0000").mkdir(parents=True)
    (data_root.root / "indexes" / "lost+found" / ".staging-x").mkdir(parents=True)  # not a domain: left alone
    with store.lock("busy"):  # a publisher is at work there: its staging folder is not garbage
        assert store.sweep_staging() == 2
    assert not list(store.base("news").glob(".staging-*"))
    assert not list(store.base("first-publish-killed").glob(".staging-*"))
    assert list(store.base("busy").glob(".staging-*"))
    assert store.current("news") == "v1" and load_version(store, "news", "v1").n_docs == 5
