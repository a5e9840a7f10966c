"""Readers: every format, detection, and quarantine of every kind of bad record."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sidestep.ingest.readers import ReadResult, SourceError, detect_format, read_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD = FIXTURES / "bad_input"
EXPECTED = json.loads((BAD / "expected.json").read_text(encoding="utf-8"))
UNISREC = FIXTURES / "unisrec_tiny"
LCREC = FIXTURES / "lcrec_tiny"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SCIENTIFIC = SHARED / "amazon-scientific"
OFFICE = SHARED / "amazon-office"
REASON = re.compile(r"^[a-z][a-z0-9_]*(: .+)?$", re.DOTALL)


def code(reason: str) -> str:
    return reason.split(":", 1)[0]


def bad_pairs(result: ReadResult) -> list[tuple[str, str]]:
    return sorted((b.location, code(b.reason)) for b in result.bad)


def expected_pairs(entries: list[dict]) -> list[tuple[str, str]]:
    return sorted((e["location"], e["reason"]) for e in entries)


def assert_accounted(result: ReadResult) -> None:
    """Nothing is dropped silently: every record read is a document, a bad record or a counted duplicate."""
    doc_bad = [b for b in result.bad if ".inter" not in b.location]
    assert result.n_read == len(result.documents) + len(doc_bad) + result.n_duplicates
    assert len({d.doc_id for d in result.documents}) == len(result.documents)
    for b in result.bad:
        assert REASON.match(b.reason), b.reason


# --------------------------------------------------------------------------- bad-input corpus (JSONL)


@pytest.fixture(scope="module")
def bad_jsonl() -> ReadResult:
    return read_source(BAD / "corpus.jsonl", max_text_bytes=EXPECTED["max_text_bytes"])


def test_every_bad_line_is_quarantined_with_its_reason_and_location(bad_jsonl: ReadResult) -> None:
    assert bad_pairs(bad_jsonl) == expected_pairs(EXPECTED["bad"])


def test_every_good_line_becomes_a_document_in_source_order(bad_jsonl: ReadResult) -> None:
    assert [d.doc_id for d in bad_jsonl.documents] == EXPECTED["good_ids"]
    assert bad_jsonl.format == "jsonl"
    assert bad_jsonl.interactions == []


def test_counts_cover_every_record(bad_jsonl: ReadResult) -> None:
    assert bad_jsonl.n_read == EXPECTED["n_read"]
    assert bad_jsonl.n_duplicates == EXPECTED["n_duplicates"]
    assert_accounted(bad_jsonl)


def test_conflicting_duplicate_names_all_locations(bad_jsonl: ReadResult) -> None:
    clashes = [b for b in bad_jsonl.bad if code(b.reason) == "conflicting_duplicate_id"]
    assert {b.location for b in clashes} == {"corpus.jsonl:12", "corpus.jsonl:15"}
    for b in clashes:
        assert b.record_id == "clash-1"
        assert "corpus.jsonl:12" in b.reason and "corpus.jsonl:15" in b.reason
        assert "noon" in b.raw or "midnight" in b.raw


def test_bad_records_keep_raw_text_and_ids(bad_jsonl: ReadResult) -> None:
    by_loc = {b.location: b for b in bad_jsonl.bad}
    latin = by_loc["corpus.jsonl:9"]
    assert latin.reason.startswith("not_utf8: invalid byte 0xe9")
    assert latin.record_id == "latin-1" and "\ufffd" in latin.raw
    assert by_loc["corpus.jsonl:10"].reason == "text_too_long: 2002 bytes > 2000"
    assert by_loc["corpus.jsonl:3"].raw.startswith('{"id": "broken-1"')
    assert "array" in by_loc["corpus.jsonl:4"].reason
    assert by_loc["corpus.jsonl:5"].reason == "missing_id"
    assert by_loc["corpus.jsonl:7"].record_id == "empty-1"


def test_document_fields(bad_jsonl: ReadResult) -> None:
    docs = {d.doc_id: d for d in bad_jsonl.documents}
    assert docs["good-1"].title == "Tide pools" and docs["good-1"].location == "corpus.jsonl:1"
    assert docs["42"].title == "" and docs["42"].text == "Numeric ids become strings."
    assert docs["crlf-1"].text == "Windows line endings are tolerated."
    assert len(docs["edge-1"].text.encode()) == 2000


def test_text_limit_counts_bytes_and_defaults_to_a_megabyte() -> None:
    result = read_source(BAD / "corpus.jsonl")
    assert "long-1" in {d.doc_id for d in result.documents}
    tight = read_source(BAD / "corpus.jsonl", max_text_bytes=1999)
    assert "edge-1" not in {d.doc_id for d in tight.documents}


def test_beir_folder_reads_only_the_corpus(tmp_path: Path) -> None:
    rows = [{"_id": "d1", "title": "T1", "text": "first"}, {"_id": "d2", "title": "", "text": "second"}]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    result = read_source(tmp_path)
    assert result.format == "beir"
    assert [(d.doc_id, d.title, d.text) for d in result.documents] == [
        ("d1", "T1", "first"),
        ("d2", "", "second"),
    ]
    assert result.bad == []


def test_jsonl_configurable_fields(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"key": "k1", "body": "hello", "title": "ignored"}) + "\n")
    result = read_source(path, "jsonl", id_field="key", title_field=None, text_field="body")
    assert [(d.doc_id, d.title, d.text) for d in result.documents] == [("k1", "", "hello")]


def test_a_malformed_json_line_says_where_it_breaks(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "broken", "title": "cut off\n{"id" 1}\n')
    reasons = sorted(b.reason for b in read_source(path).bad)
    assert reasons == ["malformed_json: expecting ':' delimiter at column 7",
                       "malformed_json: unterminated string starting at column 27"]


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"id": "a", "text": "x"}, 3, {"id": "b", "text": "y"}]))
    result = read_source(path)
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert bad_pairs(result) == [("docs.json[1]", "malformed_json")]


# --------------------------------------------------------------------------- CSV


def test_csv_bad_rows_and_multiline_fields() -> None:
    result = read_source(BAD / "csv" / "docs.csv")
    assert result.format == "csv"
    assert [d.doc_id for d in result.documents] == EXPECTED["csv"]["good_ids"]
    assert bad_pairs(result) == expected_pairs(EXPECTED["csv"]["bad"])
    docs = {d.doc_id: d for d in result.documents}
    assert "two-line" in docs["c1"].text and "\n" in docs["c1"].text and docs["c1"].location == "docs.csv:2"
    assert docs["c5"].title == "Quoted, title" and '"quotes"' in docs["c5"].text
    bytes_row = next(b for b in result.bad if b.location == "docs.csv:6")
    assert bytes_row.reason == "not_utf8: invalid byte 0xe9 in text" and "\ufffd" in bytes_row.raw
    assert_accounted(result)


def test_csv_configurable_columns_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("doc,body\nx1,some body\n", encoding="utf-8")
    result = read_source(path, id_field="doc", text_field="body")
    assert [(d.doc_id, d.title, d.text) for d in result.documents] == [("x1", "", "some body")]
    with pytest.raises(SourceError, match="no column 'text'"):
        read_source(path, id_field="doc")


# --------------------------------------------------------------------------- Parquet


def test_parquet_columns_binary_and_nulls(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "pid": pa.array([1, 2, 3, 4]),
            "name": pa.array(["One", None, "Three", "Four"]),
            "body": pa.array([b"caf\xc3\xa9", b"ok text", b"bad \xff byte", None], type=pa.binary()),
        }
    )
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path)
    result = read_source(path, id_field="pid", title_field="name", text_field="body")
    assert result.format == "parquet"
    assert [(d.doc_id, d.title, d.text) for d in result.documents] == [
        ("1", "One", "café"),
        ("2", "", "ok text"),
    ]
    assert bad_pairs(result) == [("docs.parquet:3", "not_utf8"), ("docs.parquet:4", "missing_text")]
    assert_accounted(result)


# --------------------------------------------------------------------------- text folders


def test_textdir_ids_titles_and_bad_files() -> None:
    result = read_source(BAD / "textdir")
    assert result.format == "textdir"
    expected = EXPECTED["textdir"]
    assert {d.doc_id: d.title for d in result.documents} == expected["good"]
    assert [d.doc_id for d in result.documents] == sorted(expected["good"])
    assert bad_pairs(result) == expected_pairs(expected["bad"])
    alpha = next(d for d in result.documents if d.doc_id == "alpha.md")
    assert alpha.text == (BAD / "textdir" / "alpha.md").read_text(encoding="utf-8")
    assert not any(
        "skip.rst" in x for x in [d.doc_id for d in result.documents] + [b.location for b in result.bad]
    )


# --------------------------------------------------------------------------- UniSRec (RecBole-processed)


def test_unisrec_maps_asins_to_item_indexes() -> None:
    result = read_source(UNISREC)
    assert result.format == "unisrec"
    docs = {d.doc_id: d for d in result.documents}
    assert sorted(docs) == ["0", "1", "2", "3"]
    assert docs["0"].text.startswith("Folding brass ruler") and docs["0"].metadata == {
        "source_id": "AS0000003"
    }
    assert docs["3"].text.startswith("Waxed canvas") and docs["3"].title == ""
    assert bad_pairs(result) == [("Tiny.text:6", "unmapped_id")]
    assert result.bad[0].record_id == "AS0000099"
    assert_accounted(result)


def test_unisrec_interactions_share_the_document_id_space() -> None:
    result = read_source(UNISREC)
    assert len(result.interactions) == 6
    assert {i.split for i in result.interactions} == {"train", "valid", "test"}
    test_rows = {i.user_id: i for i in result.interactions if i.split == "test"}
    assert test_rows["0"].history == ("2", "0", "1") and test_rows["0"].target == "3"
    ids = {d.doc_id for d in result.documents}
    assert all(set(i.history) | {i.target} <= ids for i in result.interactions)


def test_unisrec_without_item2index_keeps_source_ids(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    shutil.copytree(UNISREC, folder)
    (folder / "Tiny.item2index").unlink()
    (folder / "Tiny.test.inter").unlink()
    (folder / "Tiny.train.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t2\n")
    result = read_source(folder)
    assert len(result.documents) == 5 and "AS0000099" in {d.doc_id for d in result.documents}
    assert bad_pairs(result) == [("Tiny.train.inter:2", "malformed_row")]
    assert {i.split for i in result.interactions} == {"valid"}


# --------------------------------------------------------------------------- LC-Rec


def test_lcrec_items_and_sequences() -> None:
    result = read_source(LCREC)
    assert result.format == "lcrec" and result.bad == []
    docs = {d.doc_id: d for d in result.documents}
    assert list(docs) == ["0", "1", "2", "3"]
    assert docs["1"].title == "Recycled kraft envelopes"
    assert docs["1"].text == "Recycled kraft envelopes\nFoldwell\nOffice Products, Mailing Supplies"
    assert docs["2"].text.endswith("Office Products, Boards")
    assert docs["3"].title == "" and docs["3"].text.startswith("Unlabelled box")
    by_user = {i.user_id: i for i in result.interactions}
    assert by_user["1"].history == ("2", "3", "0", "1")
    assert all(i.target is None and i.split == "all" for i in result.interactions)


def test_lcrec_broken_json_is_a_source_error(tmp_path: Path) -> None:
    folder = tmp_path / "lc"
    shutil.copytree(LCREC, folder)
    (folder / "Tiny.inter.json").write_text("{not json")
    with pytest.raises(SourceError, match="Tiny.inter.json"):
        read_source(folder)


# --------------------------------------------------------------------------- detection and source errors


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (BAD, "beir"),
        (BAD / "corpus.jsonl", "jsonl"),
        (BAD / "csv" / "docs.csv", "csv"),
        (BAD / "textdir", "textdir"),
        (UNISREC, "unisrec"),
        (LCREC, "lcrec"),
    ],
)
def test_detect_format(path: Path, fmt: str) -> None:
    assert detect_format(path) == fmt
    assert detect_format(str(path)) == fmt


def test_detect_parquet_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"")
    assert detect_format(path) == "parquet"


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError, match="accepted formats") as info:
        read_source(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(SourceError):
        read_source(missing, "jsonl")


def test_unknown_format_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "docs.xml"
    path.write_text("<docs/>")
    with pytest.raises(SourceError, match="docs.xml"):
        detect_format(path)
    with pytest.raises(SourceError, match="unknown format 'xml'"):
        read_source(BAD / "corpus.jsonl", "xml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="cannot tell the format of folder"):
        read_source(tmp_path / "empty")


def test_format_that_does_not_fit_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="needs a file"):
        read_source(BAD / "textdir", "csv")
    with pytest.raises(SourceError, match="needs a folder"):
        read_source(BAD / "corpus.jsonl", "recbole")
    with pytest.raises(SourceError, match="needs a folder"):
        read_source(BAD / "corpus.jsonl", "unisrec")
    with pytest.raises(SourceError, match="corpus.jsonl"):
        read_source(LCREC, "beir")


# --------------------------------------------------------------------------- real datasets (optional)


@pytest.mark.skipif(not SCIENTIFIC.is_dir(), reason="shared amazon-scientific data not present")
def test_real_amazon_scientific() -> None:
    result = read_source(SCIENTIFIC)
    assert result.format == "unisrec"
    assert len(result.documents) == 4385 and result.bad == [] and result.n_duplicates == 0
    assert {i.user_id for i in result.interactions if i.split == "test"} == {str(u) for u in range(8442)}
    ids = {d.doc_id for d in result.documents}
    assert ids == {str(i) for i in range(4385)}
    assert all(i.target in ids and set(i.history) <= ids for i in result.interactions)


@pytest.mark.skipif(not OFFICE.is_dir(), reason="shared amazon-office data not present")
def test_real_amazon_office() -> None:
    result = read_source(OFFICE)
    assert result.format == "lcrec"
    assert len(result.documents) == 2420 and result.bad == []
    assert len(result.interactions) == 4905
    assert sum(len(i.history) for i in result.interactions) == 53258
