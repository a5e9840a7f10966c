from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from sidestep.config import SAMPLES_DIR, Settings, load_settings
from sidestep.ingest.records import BadRecord, Document, Interaction
from sidestep.storage import schemas
from sidestep.storage.documents import DocumentStore, QuarantineStore
from sidestep.storage.paths import DataRoot, resolve_root


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
    # the embedded defaults serve a user's own corpus too (eval, index): nothing in them is sized for the
    # sample's small domains, whose ranker choice is bounded by their document counts anyway
    assert s.verify == Settings().verify and s.index == Settings().index and s.encoder == Settings().encoder


class _Tokens:
    """Token vectors per document, in memory: what write_pq_tokens reads from the embedding shards."""

    def __init__(self, docs: dict[str, np.ndarray]):
        self.docs_ = docs

    def doc_ids(self) -> list[str]:
        return list(self.docs_)

    def doc(self, d: str) -> np.ndarray:
        return self.docs_[d]


def test_pq_tokens_of_unchanged_documents_are_copied_and_the_codec_kept(tmp_path):
    from sidestep.storage.tokens import PQTokenSource, write_pq_tokens

    rng = np.random.default_rng(0)
    docs = {f"d{i}": rng.normal(size=(int(rng.integers(5, 30)), 32)).astype(np.float32) for i in range(60)}
    (v1 := tmp_path / "v1").mkdir()
    first = write_pq_tokens(v1, _Tokens(docs), m=8, sample_tokens=2000)
    assert not first["codec_reused"] and first["docs_copied"] == 0
    changed = {**docs, "d3": rng.normal(size=(12, 32)).astype(np.float32), "new": rng.normal(size=(9, 32))}
    (v2 := tmp_path / "v2").mkdir()
    unchanged = set(docs) - {"d3"}
    second = write_pq_tokens(v2, _Tokens(changed), m=8, sample_tokens=2000, parent=v1, unchanged=unchanged)
    assert second["codec_reused"] and second["docs_copied"] == 59 and second["tokens"] == sum(
        len(v) for v in changed.values())
    a, b = PQTokenSource(v1), PQTokenSource(v2)
    assert all(np.array_equal(a.doc(d), b.doc(d)) for d in unchanged)
    flat = b.flat(["d3", "new", "d0"], 10)  # one flat run, each document cut at 10 tokens
    assert flat.lengths.tolist() == [10, 9, min(10, len(docs["d0"]))]
    # a tiny sample gives fewer than 256 codewords, bit-packed codes: those are decoded; bytes are not
    assert (flat.codes is not None) == (b.codec.pq.nbits == 8)
    np.testing.assert_array_equal(flat.vectors(), np.concatenate([b.doc(d)[:10] for d in ("d3", "new", "d0")]))
    for d in ("d3", "new"):  # encoded afresh with the kept codec: close to the new vectors
        x = changed[d] / np.linalg.norm(changed[d], axis=1, keepdims=True)
        y = b.doc(d)
        cos = (x * y).sum(1) / np.linalg.norm(y, axis=1)
        assert cos.mean() > 0.6, cos.mean()
    (v3 := tmp_path / "v3").mkdir()  # half the corpus changed: past retrain_fraction, the codec is refit
    third = write_pq_tokens(v3, _Tokens(changed), m=8, sample_tokens=2000, parent=v1, unchanged=set(list(docs)[:30]))
    assert not third["codec_reused"] and third["docs_copied"] == 0
    # slow churn adds up: 2 documents encoded at v2 plus 11 now pass a fifth of 61, so the codec is refit
    (v4 := tmp_path / "v4").mkdir()
    keep = set(list(changed)[11:])
    fourth = write_pq_tokens(v4, _Tokens(changed), m=8, sample_tokens=2000, parent=v2, unchanged=keep,
                             parent_stats=second)
    assert second["docs_encoded_since_fit"] == 2 and not fourth["codec_reused"]
    (v5 := tmp_path / "v5").mkdir()
    fifth = write_pq_tokens(v5, _Tokens(changed), m=8, sample_tokens=2000, parent=v2, unchanged=set(list(changed)[5:]),
                            parent_stats=second)
    assert fifth["codec_reused"] and fifth["docs_encoded_since_fit"] == 7


def test_token_codes_are_faiss_codes_whether_documents_are_quantized_together_or_one_by_one(tmp_path, monkeypatch):
    """write_pq_tokens quantizes many documents per call, through a BLAS nearest-centroid search: its codes are
    faiss's own encoder's (IndexPQ.sa_encode, one document at a time), with spans that cut them per document."""
    import faiss

    from sidestep.storage import tokens
    from sidestep.storage.tokens import PQTokenSource, pad, write_pq_tokens

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32)).astype(np.float32)  # clustered, as token vectors are
    docs = {f"d{i}": (centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
            for i, n in enumerate(rng.integers(20, 120, 90))}
    monkeypatch.setattr(tokens, "ENCODE_BLOCK", 1500)  # several blocks, each cutting between documents
    stats = write_pq_tokens(tmp_path, _Tokens(docs), m=7, sample_tokens=4000)
    src = PQTokenSource(tmp_path)
    assert src.codec.pq.nbits == 8 and stats["tokens"] == sum(map(len, docs.values())) > 3 * 1500
    ours, theirs = [], []
    for d, v in docs.items():
        x = v / np.linalg.norm(v, axis=1, keepdims=True)
        theirs.append(src.codec.sa_encode(pad(x, src.codec.d)))
        s, e = src._span[d]
        ours.append(np.asarray(src.codes[s:e]))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    assert ours.shape == theirs.shape and (ours == theirs).mean() > 0.9999, (ours == theirs).mean()
    x = pad(np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True) for v in docs.values()]), src.codec.d)
    err = [float(((src.codec.sa_decode(c) - x) ** 2).sum(1).mean()) for c in (ours, theirs)]
    assert err[0] == pytest.approx(err[1], rel=1e-6)
    # the BLAS path itself, on more vectors than its small-input cut-off, against faiss's encoder
    many = np.ascontiguousarray(x[:3000])
    faiss.normalize_L2(many)
    assert (tokens.pq_encode(src.codec, many) == src.codec.sa_encode(many)).mean() > 0.9999
    assert src.codec.pq.assign_index is None  # nothing left pointing at the temporary flat index


def test_a_pq_size_that_does_not_divide_the_dimension_pads_it_and_scores_like_the_decoded_vectors(tmp_path):
    """7 bytes for 32-d tokens: 7 sub-spaces of 5, the last 3 dimensions zero. The store hands out 32-d
    vectors, and scoring its codes through lookup tables equals scoring those vectors."""
    import torch

    from sidestep.storage.tokens import PQTokenSource, padded_dim, write_pq_tokens
    from sidestep.verify.features import flat_maxsim

    assert padded_dim(32, 7) == 35 and padded_dim(384, 43) == 387 and padded_dim(384, 48) == 384
    with pytest.raises(ValueError, match="padding only"):
        padded_dim(384, 40)  # 40 sub-spaces of 10 would leave the 40th all padding
    rng = np.random.default_rng(1)
    docs = {f"d{i}": rng.normal(size=(int(rng.integers(5, 40)), 32)).astype(np.float32) for i in range(120)}
    write_pq_tokens(tmp_path, _Tokens(docs), m=7, sample_tokens=3000)
    src = PQTokenSource(tmp_path)
    assert src.codec.d == 35 and src.dim == 32 and src.bytes_per_doc() == pytest.approx(
        7 * sum(map(len, docs.values())) / len(docs))
    assert src.doc("d5").shape == (len(docs["d5"]), 32)
    flat = src.flat(["d1", "d7", "d9"], 30)
    assert flat.codes is not None and flat.vectors().shape[1] == 32
    q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(4, 32)).astype(np.float32)), dim=-1)
    decoded = type(flat)(flat.vectors(), flat.lengths)
    torch.testing.assert_close(flat.cosines(q), decoded.cosines(q), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat_maxsim(q, flat), flat_maxsim(q, decoded), atol=1e-5, rtol=1e-5)
    x = docs["d1"] / np.linalg.norm(docs["d1"], axis=1, keepdims=True)  # close to what was encoded
    y = src.doc("d1")
    assert ((x * y).sum(1) / np.linalg.norm(y, axis=1)).mean() > 0.6
