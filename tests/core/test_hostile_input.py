"""Hostile input: links, special files and deep nesting are quarantined with a reason, never followed,
never opened, never allowed to crash the reader; the good records beside them are read."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from sidestep.ingest.readers import ReadResult, read_source

from .test_readers import LCREC, REASON, assert_accounted, code


def reasons(result: ReadResult) -> dict[str, str]:
    return {b.location: code(b.reason) for b in result.bad}


def read_with_deadline(path: Path, fifo: Path | None = None, seconds: float = 20.0) -> ReadResult:
    """Read in a thread; a reader that blocks (e.g. on a FIFO) fails the test instead of hanging it."""
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = read_source(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:  # release the blocked reader so that it does not outlive the test
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            t.join(5)
        pytest.fail(f"reading {path} did not finish in {seconds} s (blocked on a special file?)")
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------- text folders


def tmp_outside(root: Path) -> Path:
    return root.parent / "secret.txt"


@pytest.fixture
def hostile_textdir(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "good.md").write_text("# Good\nA regular file.\n")
    (root / "sub" / "also.txt").write_text("Another regular file.\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("a secret outside the source root\n")
    (root / "leak.txt").symlink_to(outside)  # a link out of the root
    (root / "inner.txt").symlink_to(root / "good.md")  # a link to a file inside the root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "hidden.md").write_text("# Hidden\nOnly reachable through a linked folder.\n")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "zero.txt").symlink_to("/dev/zero")
    fifo = root / "pipe.txt"
    os.mkfifo(fifo)
    os.mkfifo(root / "pipe.rst")  # not a text file name: neither read nor reported
    return root, fifo


def test_textdir_reads_only_regular_files_inside_the_root(hostile_textdir: tuple[Path, Path]) -> None:
    root, fifo = hostile_textdir
    result = read_with_deadline(root, fifo)
    assert result.format == "textdir"
    assert [d.doc_id for d in result.documents] == ["good.md", "sub/also.txt"]
    assert reasons(result) == {
        "inner.txt": "symlink",
        "leak.txt": "symlink",
        "linked": "symlink",
        "zero.txt": "symlink",
        "pipe.txt": "not_a_regular_file",
    }
    assert next(b for b in result.bad if b.location == "pipe.txt").reason == "not_a_regular_file: fifo (never opened)"
    assert str(tmp_outside(root)) in next(b for b in result.bad if b.location == "leak.txt").reason
    texts = " ".join(d.text for d in result.documents) + " ".join(b.raw for b in result.bad)
    assert "secret" not in texts and "Hidden" not in texts
    for b in result.bad:
        assert REASON.match(b.reason), b.reason
        assert b.record_id == b.location


def test_a_textdir_with_only_a_fifo_finishes(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    fifo = root / "only.md"
    os.mkfifo(fifo)
    result = read_with_deadline(root, fifo)
    assert result.documents == [] and reasons(result) == {"only.md": "not_a_regular_file"}


# --------------------------------------------------------------------------- deep nesting


def nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    """Written as text: json.dumps itself cannot write what is too deep to read back."""
    return "[" * depth + '"x"' + "]" * depth


def test_lcrec_quarantines_a_record_nested_600_deep_and_reads_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "lc"
    folder.mkdir()
    items = json.loads((LCREC / "Tiny.item.json").read_text())
    body = json.dumps(items)[:-1] + ', "deep": {"title": "Deep", "categories": ' + deep_json(600) + "}}"
    (folder / "Tiny.item.json").write_text(body)
    (folder / "Tiny.inter.json").write_text((LCREC / "Tiny.inter.json").read_text())
    result = read_source(folder)
    assert sorted(d.doc_id for d in result.documents) == sorted(items)
    assert reasons(result) == {"Tiny.item.json[deep]": "nested_too_deep"}
    assert result.bad[0].record_id == "deep"
    assert len(result.interactions) == len(json.loads((LCREC / "Tiny.inter.json").read_text()))
    assert_accounted(result)


def test_lcrec_quarantines_a_record_too_deep_for_the_json_parser(tmp_path: Path) -> None:
    folder = tmp_path / "lc"
    folder.mkdir()
    items = json.loads((LCREC / "Tiny.item.json").read_text())
    head = json.dumps(dict(list(items.items())[:2]))[:-1]
    tail = json.dumps(dict(list(items.items())[2:]))[1:]
    body = head + ', "deep": {"title": "Deep", "categories": ' + deep_json(10_000) + "}, " + tail
    (folder / "Tiny.item.json").write_text(body)
    inter = json.loads((LCREC / "Tiny.inter.json").read_text())
    inter_body = json.dumps(inter)[:-1] + ', "u-deep": ' + deep_json(10_000) + "}"
    (folder / "Tiny.inter.json").write_text(inter_body)
    result = read_source(folder)
    assert [d.doc_id for d in result.documents] == list(items)
    assert reasons(result) == {"Tiny.item.json[deep]": "nested_too_deep", "Tiny.inter.json[u-deep]": "nested_too_deep"}
    assert len(result.interactions) == len(inter)
    assert_accounted(result)


def test_lcrec_interactions_nested_600_deep_are_quarantined(tmp_path: Path) -> None:
    folder = tmp_path / "lc"
    folder.mkdir()
    (folder / "Tiny.item.json").write_text((LCREC / "Tiny.item.json").read_text())
    inter = json.loads((LCREC / "Tiny.inter.json").read_text())
    (folder / "Tiny.inter.json").write_text(json.dumps(inter)[:-1] + ', "u-deep": ' + deep_json(600) + "}")
    result = read_source(folder)
    assert reasons(result) == {"Tiny.inter.json[u-deep]": "nested_too_deep"}
    assert len(result.interactions) == len(inter)


def test_jsonl_quarantines_a_line_nested_10000_deep(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "first"}),
        deep_json(10_000),
        '{"id": "deep-obj", "text": "x", "extra": ' + deep_json(600) + "}",
        json.dumps({"id": "b", "text": "last"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = read_source(path)
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.jsonl:2": "nested_too_deep", "docs.jsonl:3": "nested_too_deep"}
    assert next(b for b in result.bad if b.location == "docs.jsonl:3").record_id == "deep-obj"
    assert_accounted(result)


@pytest.mark.parametrize("depth", [600, 10_000])
def test_json_array_quarantines_one_deep_element_and_reads_the_rest(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "docs.json"
    good = [{"id": "a", "text": "first"}, {"id": "b", "text": "second"}]
    deep = '{"id": "deep", "text": ' + deep_json(depth) + "}"
    path.write_text("[\n  " + json.dumps(good[0]) + ",\n  " + deep + ",\n  " + json.dumps(good[1]) + "\n]\n")
    result = read_source(path)
    assert [d.doc_id for d in result.documents] == ["a", "b"]
    assert reasons(result) == {"docs.json[1]": "nested_too_deep"}
    assert_accounted(result)
