from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sidestep.config import SAMPLES_DIR, Settings, load_settings
from sidestep.records import BadRecord, Document, Interaction
from storage import schemas
from storage.documents import DocumentStore, QuarantineStore
from storage.paths import DataRoot, resolve_root


def test_data_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SIDESTEP_HOME", raising=False)
    assert resolve_root(Settings()) == (tmp_path.cwd() / "var").resolve()
    assert resolve_root(Settings(data_root=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.setenv("SIDESTEP_HOME", str(tmp_path / "env"))
    assert resolve_root(Settings(data_root=str(tmp_path / "cfg"))) == tmp_path / "env"
    assert resolve_root(Settings(), override=tmp_path / "arg") == tmp_path / "arg"


def test_documents_are_upserted_and_tombstoned_in_a_domain_partition(data_root):
    docs = DocumentStore(data_root)
    a, b = Document("a", "alpha text", "A"), Document("b", "beta text")
    assert docs.apply("news", "src", [a, b], []) == 2
    path = data_root.root / "documents" / "domain=news" / "part-0.parquet"
    assert path.is_file()
    meta = pq.read_schema(path).metadata
    assert meta[b"sidestep.schema"] == b"documents" and meta[b"sidestep.schema_version"] == schemas.SCHEMA_VERSION
    first_seen = docs.read("news").to_pylist()[0]["first_seen"]
    a2 = Document("a", "alpha text, revised", "A")
    assert docs.apply("news", "src", [a2], ["b"]) == 1
    rows = {r["doc_id"]: r for r in docs.read("news").to_pylist()}
    assert rows["a"]["text"] == "alpha text, revised" and rows["a"]["first_seen"] == first_seen
    assert rows["b"]["deleted"] is True
    assert docs.state("news") == {"a": (a2.content_hash, False), "b": (b.content_hash, True)}
    assert docs.ids_from_source("news", "src") == {"a", "b"}


def test_interactions_of_a_source_are_replaced_as_a_snapshot(data_root):
    docs = DocumentStore(data_root)
    docs.replace_interactions("shop", "s1", [Interaction("u1", ("1", "2"), "3", "train")])
    docs.replace_interactions("shop", "s2", [Interaction("u2", ("4",), None)])
    docs.replace_interactions("shop", "s1", [Interaction("u1", ("1",), "2", "train")])
    rows = sorted(docs.read_interactions("shop").to_pylist(), key=lambda r: r["user_id"])
    assert [(r["user_id"], r["history"], r["target"]) for r in rows] == [("u1", ["1"], "2"), ("u2", ["4"], None)]


def test_quarantine_keeps_reason_and_location_and_counts_distinct_records(data_root):
    q = QuarantineStore(data_root)
    bad = [BadRecord("f.jsonl:3", "malformed_json: x", None, "{"), BadRecord("f.jsonl:9", "empty_text", "7", "")]
    q.write("news", "run1", "f.jsonl", bad)
    q.write("news", "run2", "f.jsonl", bad)  # a rerun meets the same bad records
    assert q.read("news").num_rows == 4 and q.count("news") == 2 and q.count() == 2
    assert q.write("news", "run3", "f.jsonl", []) is None


def test_a_file_from_a_newer_schema_is_refused(data_root):
    import pyarrow as pa

    path = data_root.root / "documents" / "domain=news" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    t = schemas.DOCUMENTS.empty_table()
    t = t.replace_schema_metadata({b"sidestep.schema_version": b"99"})
    pq.write_table(pa.table(t), path)
    with pytest.raises(ValueError, match="newer"):
        DocumentStore(data_root).read("news")


def test_embedded_defaults_name_the_sample_corpus():
    s = load_settings(SAMPLES_DIR / "sidestep.toml")
    assert s.domains() == ["handbook", "recipes", "field-notes", "shop"]
    assert all(DataRoot(SAMPLES_DIR).root.joinpath(src.path).exists() for src in s.sources)
    with pytest.raises(ValueError):
        Settings.model_validate({"sources": [{"domain": "../x", "path": "p"}]})
