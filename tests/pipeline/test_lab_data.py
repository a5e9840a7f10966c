"""The retrieval lab's query splits and its no-overlap test queries, on a tiny BEIR folder."""

from __future__ import annotations

import json
from pathlib import Path

from sidestep.pipeline.lab import no_overlap, split_queries


def _beir(folder: Path, train: list[tuple[str, str]] | None, test: list[tuple[str, str, int]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    ids = sorted({q for q, *_ in (train or [])} | {q for q, *_ in test})
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"claim {q}"}) + "\n" for q in ids))
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d0", "title": "", "text": "x"}) + "\n")
    if train is not None:
        (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                                   "".join(f"{q}\t{d}\t1\n" for q, d in train))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                              "".join(f"{q}\t{d}\t{g}\n" for q, d, g in test))
    return folder


def test_train_qrels_split_into_train_and_validation_and_test_stays_test(tmp_path):
    train = [(f"t{i}", f"d{i}") for i in range(10)]
    test = [("x1", "d1", 1), ("x2", "d99", 1), ("x3", "d98", 1), ("x3", "d2", 1)]
    texts, qrels, split, how = split_queries(str(_beir(tmp_path / "b", train, test)), val_fraction=0.2)
    assert sorted(q for q, s in split.items() if s == "test") == ["x1", "x2", "x3"]
    assert sum(s == "val" for s in split.values()) == 2 and sum(s == "train" for s in split.values()) == 8
    assert "validation" in how and set(texts) == set(split)
    again = split_queries(str(tmp_path / "b"), val_fraction=0.2)[2]
    assert again == split  # the split is fixed (seeded), so every run and estimator shares it
    # x1 cites d1 (a training claim's), x3 cites d2 too: only x2 has no overlap
    flags = no_overlap(qrels, split, 1)
    assert [q for q, f in flags.items() if f] == ["x2"]


def test_without_train_qrels_the_judged_queries_are_split_and_it_says_so(tmp_path):
    test = [(f"q{i}", f"d{i}", 1 + i % 3) for i in range(20)] + [("q20", "d0", 0)]  # q20: nothing relevant
    texts, qrels, split, how = split_queries(str(_beir(tmp_path / "m", None, test)), test_fraction=0.5)
    assert "q20" not in split and len(split) == 20
    assert sum(s == "test" for s in split.values()) == 10 and "20 judged queries" in how
