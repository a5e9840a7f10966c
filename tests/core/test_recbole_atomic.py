"""RecBole's standard atomic files (`NAME.inter`, `NAME.item`, typed `name:type` headers) as `recbole`;
the UniSRec processed layout keeps its own reader as `unisrec`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sidestep.ingest.readers import SourceError, detect_format, read_source
from sidestep.rec.data import build_splits

from .test_readers import FIXTURES, UNISREC, assert_accounted, bad_pairs

ATOMIC = FIXTURES / "recbole_atomic"


def write(folder: Path, name: str, inter: list[str], item: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    if item is not None:
        (folder / f"{name}.item").write_text("\n".join(item) + "\n", encoding="utf-8")
    return folder


def chronological(path: Path) -> dict[str, list[str]]:
    """Each user's items by timestamp, computed here from the file, not by the reader under test."""
    lines = path.read_text(encoding="utf-8").splitlines()
    cols = [c.split(":")[0] for c in lines[0].split("\t")]
    rows = [dict(zip(cols, line.split("\t"), strict=True)) for line in lines[1:]]
    users: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        users.setdefault(r["user_id"], []).append((float(r["timestamp"]), r["item_id"]))
    return {u: [i for _, i in sorted(seq)] for u, seq in users.items()}


def test_the_sample_atomic_files_read_as_recbole() -> None:
    result = read_source(ATOMIC)
    assert detect_format(ATOMIC) == "recbole" and result.format == "recbole"
    assert result.bad == [] and len(result.documents) == 15
    doc = next(d for d in result.documents if d.doc_id == "1004")
    assert doc.title == "Tern fountain pen, fine nib"
    assert doc.text == "Tern fountain pen, fine nib\nOffice Products, Fountain Pens\nLarkspur"
    assert doc.location == "recbole_atomic.item:5"
    want = chronological(ATOMIC / "recbole_atomic.inter")
    assert {i.user_id: list(i.history) for i in result.interactions} == want
    assert len(want) == 30 and all(len(seq) == 6 for seq in want.values())
    assert all(i.target is None and i.split == "all" for i in result.interactions)
    # the rows are shuffled in the file: the timestamps, not the file, give the order
    file_order: dict[str, list[str]] = {}
    for line in (ATOMIC / "recbole_atomic.inter").read_text().splitlines()[1:]:
        user, item = line.split("\t")[:2]
        file_order.setdefault(user, []).append(item)
    assert file_order != want
    assert_accounted(result)


def test_the_sample_splits_leave_one_out_like_lcrec() -> None:
    result = read_source(ATOMIC)
    data = build_splits(result.interactions, [d.doc_id for d in result.documents])
    # 6 items: 3 training prefixes, 1 valid, 1 test
    assert (len(data.train), len(data.valid), len(data.test)) == (30 * 3, 30, 30)
    assert data.unknown == {}
    idx = data.index_of()
    seq = chronological(ATOMIC / "recbole_atomic.inter")[result.interactions[0].user_id]
    assert int(data.test.target[0]) == idx[seq[-1]] and int(data.valid.target[0]) == idx[seq[-2]]
    assert list(data.test.history[0, :5]) == [idx[i] for i in seq[:5]]


def test_typed_header_columns_are_found_by_name_in_any_order(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "shop",
        "shop",
        [
            "timestamp:float\tweight:float\titem_id:token\ttags:token_seq\tuser_id:token",
            "30\t1.0\tb\tx y\tu1",
            "10\t0.5\ta\tx\tu1",
            "20\t2.0\tc\t\tu1",
            "20\t2.0\ta\t\tu1",  # the same time as c: file order decides
            "5\t1.0\tc\tz\tu2",
        ],
        [
            "price:float\tcategories:token_seq\titem_id:token\tbrand:token\ttitle:token_seq\tsizes:float_seq",
            "1.5\tDesk, Pens\ta\tLarkspur\tTern pen\t1 2",
            "2\t\tb\t\tPlain notebook\t",
            "3\tLamps\tc\tPagecraft\t\t",
        ],
    )
    result = read_source(folder)
    assert result.format == "recbole" and result.bad == []
    docs = {d.doc_id: d for d in result.documents}
    assert (docs["a"].title, docs["a"].text) == ("Tern pen", "Tern pen\nDesk, Pens\nLarkspur")
    assert (docs["b"].title, docs["b"].text) == ("Plain notebook", "Plain notebook")
    assert (docs["c"].title, docs["c"].text) == ("", "Lamps\nPagecraft")
    assert [(i.user_id, i.history) for i in result.interactions] == [("u1", ("a", "c", "a", "b")), ("u2", ("c",))]


def test_without_timestamp_the_file_order_is_kept_and_other_title_names_are_found(tmp_path: Path) -> None:
    folder = write(tmp_path / "ml", "ml", ["user_id:token\titem_id:token\trating:float", "1\t9\t4", "1\t3\t5"],
                   ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                    "9\tToy Story\t1995\tAnimation Comedy", "3\tHeat\t1995\tAction"])
    result = read_source(folder)
    assert result.interactions[0].history == ("9", "3")
    assert {d.doc_id: (d.title, d.text) for d in result.documents} == {
        "9": ("Toy Story", "Toy Story\n1995\nAnimation Comedy"), "3": ("Heat", "Heat\n1995\nAction")}


def test_bad_rows_are_quarantined_with_their_reason(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "bad",
        "bad",
        [
            "user_id:token\titem_id:token\ttimestamp:float",
            "u1\ta\t1",
            "u1\tb",  # 3: a column short
            "\tb\t2",  # 4: no user
            "u1\t \t2",  # 5: no item
            "u1\tb\tyesterday",  # 6: not a number
            "u1\tb\t",  # 7: empty timestamp
            "u1\tb\tinf",  # 8: not finite
            "u1\tb\t3\textra",  # 9: a column too many
            "u1\tb\t4",
        ],
        [
            "item_id:token\ttitle:token_seq\tbrand:token",
            "a\tTern pen\tLarkspur",
            "b\t\t",  # 3: no text at all
            "c\tLamp",  # 4: a column short
            "\tNameless\tX",  # 5: no id
            "d\tInk\tLarkspur",
        ],
    )
    (folder / "bad.inter").write_bytes((folder / "bad.inter").read_bytes() + b"u2\tcaf\xe9\t5\n")
    result = read_source(folder)
    assert bad_pairs(result) == sorted([
        ("bad.inter:3", "malformed_row"), ("bad.inter:4", "malformed_row"), ("bad.inter:5", "malformed_row"),
        ("bad.inter:6", "invalid_timestamp"), ("bad.inter:7", "invalid_timestamp"),
        ("bad.inter:8", "invalid_timestamp"), ("bad.inter:9", "malformed_row"), ("bad.inter:11", "not_utf8"),
        ("bad.item:3", "empty_text"), ("bad.item:4", "malformed_row"), ("bad.item:5", "missing_id"),
    ])
    by_loc = {b.location: b for b in result.bad}
    assert by_loc["bad.inter:4"].reason == "malformed_row: missing user_id"
    assert by_loc["bad.inter:5"].reason == "malformed_row: missing item_id"
    assert by_loc["bad.inter:6"].reason == "invalid_timestamp: 'yesterday' is not a number"
    assert by_loc["bad.inter:3"].reason == "malformed_row: 2 fields, header has 3"
    assert by_loc["bad.inter:6"].raw == "u1\tb\tyesterday"
    assert by_loc["bad.item:3"].record_id == "b"
    assert [d.doc_id for d in result.documents] == ["a", "d"]
    assert [(i.user_id, i.history) for i in result.interactions] == [("u1", ("a", "b"))]
    assert_accounted(result)


@pytest.mark.parametrize(
    ("header", "line", "message"),
    [
        ("user_id\titem_id:token", 1, "column 1 'user_id' is not name:type"),
        ("user_id:token\titem_id:string", 1, "column 2 'item_id:string'"),
        ("user_id:token\ttimestamp:float", 1, "lacks item_id"),
        ("user_id:token\titem_id:token\tuser_id:token", 1, "'user_id' appears twice"),
        ("\nuser_id:token\titem_id:token:x", 2, "column 2"),
    ],
)
def test_an_unreadable_inter_header_is_a_source_error_naming_file_and_line(
    tmp_path: Path, header: str, line: int, message: str
) -> None:
    folder = write(tmp_path / "h", "h", [header, "1\t2"])
    with pytest.raises(SourceError, match=f"h.inter:{line}: .*{message}"):
        read_source(folder, "recbole")


def test_an_unreadable_item_header_or_bytes_is_a_source_error(tmp_path: Path) -> None:
    folder = write(tmp_path / "h", "h", ["user_id:token\titem_id:token", "1\t2"], ["title:token_seq", "x"])
    with pytest.raises(SourceError, match=r"h.item:1: header lacks item_id"):
        read_source(folder)
    (folder / "h.item").write_bytes(b"item_id:token\tt\xe9tle:token_seq\n")
    with pytest.raises(SourceError, match=r"h.item:1: header is not UTF-8"):
        read_source(folder)


def test_interactions_without_an_item_file_are_read(tmp_path: Path) -> None:
    folder = write(tmp_path / "only", "only", ["user_id:token\titem_id:token\ttimestamp:float", "1\tb\t2", "1\ta\t1"])
    result = read_source(folder)
    assert result.format == "recbole" and result.documents == [] and result.interactions[0].history == ("a", "b")


def test_detection_and_explicit_formats_tell_the_two_layouts_apart(tmp_path: Path) -> None:
    assert detect_format(UNISREC) == "unisrec" and detect_format(ATOMIC) == "recbole"
    with pytest.raises(SourceError, match=r"needs one <name>\.inter.*--format unisrec"):
        read_source(UNISREC, "recbole")
    with pytest.raises(SourceError, match=r"needs exactly one <name>\.text"):
        read_source(ATOMIC, "unisrec")
    # several .inter files: the one named after the folder is the dataset's
    folder = tmp_path / "ds"
    shutil.copytree(ATOMIC, folder)
    (folder / "recbole_atomic.inter").rename(folder / "ds.inter")
    (folder / "recbole_atomic.item").rename(folder / "ds.item")
    (folder / "old.inter").write_text("user_id:token\titem_id:token\n9\t9\n")
    result = read_source(folder)
    assert result.format == "recbole" and len(result.documents) == 15 and len(result.interactions) == 30
    (folder / "ds.inter").unlink()
    (folder / "more.inter").write_text("user_id:token\titem_id:token\n9\t9\n")
    with pytest.raises(SourceError, match="old.inter"):
        read_source(folder, "recbole")


def test_untyped_tsv_inter_is_not_taken_for_recbole(tmp_path: Path) -> None:
    folder = write(tmp_path / "plain", "plain", ["user\titem", "1\t2"])
    with pytest.raises(SourceError, match="cannot tell the format of folder"):
        detect_format(folder)
