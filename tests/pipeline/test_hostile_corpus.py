"""A hostile-input corpus, ingested whole: links in and out of the source root, a FIFO, a link to /dev/zero,
600-deep nesting, a 200 MB single line, a zip-bomb Parquet, invalid UTF-8 in every field, NUL bytes and a
10,000-level JSON array, beside good records. Ingest runs in a child process under a deadline (a hang
fails the test) and reports its peak RSS; every hostile record must be in quarantine/ with its reason and
every good record must be found by the in-process search path (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidestep.config import default_settings
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.serving.core import SearchService
from sidestep.storage.documents import QuarantineStore
from sidestep.storage.paths import DataRoot

DEEP = 600
LINE_MB = 200
BOMB_MB = 100
PEAK_RSS_MB = 400  # a 200 MB line or a 100 MB bomb held whole would pass this on its own

GOOD = {  # id -> text; each is searched for by its own words
    "good.md": "# Lighthouse keepers\nThe lighthouse keeper trims the lamp wick every evening at dusk.",
    "sub/also.txt": "Glaciers carve deep valleys as they creep slowly toward the sea.",
    "j-good": "The ferry to the island leaves from pier four every morning at seven.",
    "j-good-2": "Beekeepers smoke the hive gently before lifting out the honey frames.",
    "a-good": "Volcanic soil on the slopes makes the vineyards unusually fertile.",
    "c-good": "The orchestra tunes to the oboe's A before every rehearsal begins.",
    "p-good": "Sourdough starter needs feeding with flour and water twice a day.",
    "p-good-2": "Migrating cranes rest on the marshes for a week each autumn.",
}


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def build_corpus(base: Path) -> list[dict]:
    """The sources to ingest into one domain, in order, and what each must quarantine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = base / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "good.md").write_text(GOOD["good.md"] + "\n")
    (docs / "sub" / "also.txt").write_text(GOOD["sub/also.txt"] + "\n")
    (base / "secret.txt").write_text("a secret outside the source root\n")
    (docs / "leak.txt").symlink_to(base / "secret.txt")
    (docs / "inner.txt").symlink_to(docs / "good.md")
    (base / "elsewhere").mkdir()
    (base / "elsewhere" / "hidden.md").write_text("# Hidden\nonly through a linked folder\n")
    (docs / "linked").symlink_to(base / "elsewhere", target_is_directory=True)
    (docs / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(docs / "pipe.txt")
    (docs / "latin1.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    (docs / "nul.txt").write_bytes(b"text with a \x00 NUL byte\n")

    jsonl = base / "records.jsonl"
    with jsonl.open("wb") as f:
        f.write(json.dumps({"id": "j-good", "title": "Ferry", "text": GOOD["j-good"]}).encode() + b"\n")
        f.write(b'{"id": "j-huge", "text": "')
        block = b"a" * (1 << 20)
        for _ in range(LINE_MB):
            f.write(block)
        f.write(b'"}\n')
        f.write(b'{"id": "j-deep", "text": "x", "tags": ' + deep_json(DEEP).encode() + b"}\n")
        f.write(b'{"id": "j-bad-\xff", "title": "t\xfe", "text": "caf\xe9"}\n')
        f.write(json.dumps({"id": "j-nul", "text": "a NUL \u0000 inside"}).encode() + b"\n")
        f.write(json.dumps({"id": "j-good-2", "text": GOOD["j-good-2"]}).encode() + b"\n")

    array = base / "array.json"
    array.write_text("[" + json.dumps({"id": "a-good", "text": GOOD["a-good"]}) + ",\n"
                     + deep_json(10_000) + "\n]\n")

    table = base / "table.csv"
    table.write_bytes(b"id,title,text\nc-good,Orchestra," + GOOD["c-good"].encode()
                      + b"\nc-bad-\xff,T\xfe,caf\xe9\nc-nul,NUL,a \x00 here\n")

    bomb = base / "bomb.parquet"
    schema = pa.schema([("id", pa.binary()), ("title", pa.binary()), ("text", pa.binary())])
    w = pq.ParquetWriter(bomb, schema, compression="zstd")
    w.write_table(pa.table({"id": [b"p-good", b"p-good-2"], "title": [b"Bread", b"Cranes"],
                            "text": [GOOD["p-good"].encode(), GOOD["p-good-2"].encode()]}, schema=schema))
    w.write_table(pa.table({"id": [b"p-bomb"], "title": [b"boom"], "text": [b"0" * (BOMB_MB << 20)]},
                           schema=schema))
    w.write_table(pa.table({"id": [b"p-bad-\xff"], "title": [b"t\xfe"], "text": [b"caf\xe9"]}, schema=schema))
    w.close()

    return [
        {"path": docs, "format": "textdir", "bad": {
            "leak.txt": "symlink", "inner.txt": "symlink", "linked": "symlink", "zero.txt": "symlink",
            "pipe.txt": "not_a_regular_file", "latin1.txt": "not_utf8", "nul.txt": "nul_byte"}},
        {"path": jsonl, "format": "jsonl", "bad": {
            "records.jsonl:2": "record_too_long", "records.jsonl:3": "nested_too_deep",
            "records.jsonl:4": "not_utf8", "records.jsonl:5": "nul_byte"}},
        {"path": array, "format": "jsonl", "bad": {"array.json[1]": "nested_too_deep"}},
        {"path": table, "format": "csv", "bad": {"table.csv:3": "not_utf8", "table.csv:4": "nul_byte"}},
        {"path": bomb, "format": "parquet", "bad": {"bomb.parquet:3-3": "compression_bomb",
                                                    "bomb.parquet:4": "not_utf8"}},
    ]


CHILD = textwrap.dedent("""
    def peak_mb():  # this process's own peak (VmHWM); ru_maxrss would carry the parent's over exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import json, sys
    from sidestep.config import SourceConfig
    from sidestep.pipeline.ingest import ingest_source
    from sidestep.storage.paths import DataRoot
    from pathlib import Path
    root, sources = DataRoot(Path(sys.argv[1])), json.loads(sys.argv[2])
    reports = [ingest_source(root, SourceConfig(domain="hostile", path=s["path"], format=s["format"]),
                             max_text_bytes=1_000_000).as_dict() for s in sources]
    print(json.dumps({"reports": reports,
                      "peak_rss_mb": peak_mb()}))
""")


def test_a_hostile_corpus_is_ingested_quarantined_and_the_good_records_are_searchable(tmp_path, encoder):
    sources = build_corpus(tmp_path / "corpus")
    root = DataRoot(tmp_path / "root")
    arg = json.dumps([{"path": str(s["path"]), "format": s["format"]} for s in sources])
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(root.root), arg], capture_output=True, text=True,
                             timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("ingest of the hostile corpus did not finish in 180 s (blocked on a FIFO or /dev/zero?)")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nhostile corpus ingest: peak RSS {result['peak_rss_mb']:.0f} MiB (bound {PEAK_RSS_MB} MiB)")
    assert result["peak_rss_mb"] < PEAK_RSS_MB

    q = QuarantineStore(root).read("hostile").to_pylist()
    got = {(r["source"], r["location"]): r["reason"].split(":")[0] for r in q}
    want = {(str(s["path"]), loc): reason for s in sources for loc, reason in s["bad"].items()}
    assert got == want
    assert all(r["reason"] for r in q)
    assert [r["quarantined"] for r in result["reports"]] == [len(s["bad"]) for s in sources]

    settings = default_settings().model_copy(deep=True)
    settings.maps.enabled = False
    embed_domain(root, settings, "hostile", show_progress=False)
    assert publish_domain(root, settings, "hostile").published
    svc = SearchService(settings, root, encoder=encoder, verifier=None)
    live = {r["doc_id"] for r in svc.search("anything", k=50, domain="hostile", verify=False)["results"]}
    assert live == set(GOOD)  # nothing hostile became a document
    for doc_id, text in GOOD.items():
        top = [r["doc_id"] for r in svc.search(text, k=3, domain="hostile", verify=False)["results"]]
        assert doc_id in top, (doc_id, top)
