"""The warehouse's SQL metrics must equal ir_measures' (pytrec_eval conventions).

Users read these numbers straight from the views, so the views themselves are
what is checked: per query and mean, for min_rel 1 and 2, on hand-built edge
cases and on random runs.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import duckdb
import ir_measures
import pyarrow as pa
import pytest
from ir_measures import RR, R, nDCG

from sidestep.storage.warehouse import Warehouse

Run = dict[str, list[str]]
Qrels = dict[str, dict[str, int]]

QRELS: Qrels = {
    "q1": {"d1": 1, "d2": 2, "d3": 0, "d5": 1},  # graded, one judged non-relevant
    "q2": {"d4": 1},  # its only relevant doc sits at rank 15
    "q3": {"d6": 2, "d7": 1},  # no results at all
    "q4": {"d8": 0},  # judged, nothing relevant
    "q5": {"d9": 1, "d10": 2},  # one relevant doc per grade
}
RUN: Run = {
    "q1": ["d3", "d2", "dx", "d1", "dy"],
    "q2": [f"n{i}" for i in range(14)] + ["d4", "n99"],
    "q4": ["d8", "dz"],
    "q5": ["d9", "n1", "d10"],
    "q9": ["d1", "d2"],  # not in the qrels: ignored by both sides
}


def results_table(run: Run) -> pa.Table:
    """Ranked lists as the warehouse's results table (rank 1-based, score = -rank)."""
    rows = [(q, d, r) for q, docs in run.items() for r, d in enumerate(docs, start=1)]
    return pa.table({
        "query_id": pa.array([q for q, _, _ in rows], pa.string()),
        "doc_id": pa.array([d for _, d, _ in rows], pa.string()),
        "rank": pa.array([r for _, _, r in rows], pa.int32()),
        "score": pa.array([-float(r) for _, _, r in rows], pa.float32()),
    })


def reference(run: Run, qrels: Qrels, min_rel: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """ir_measures per query and mean, keyed like the warehouse's columns."""
    names = {"ndcg_10": nDCG @ 10, "mrr_10": RR(rel=min_rel) @ 10, "recall_100": R(rel=min_rel) @ 100}
    scored = {q: {d: -float(r) for r, d in enumerate(docs, start=1)} for q, docs in run.items()}
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(list(names.values()), qrels, scored):
        column = next(k for k, v in names.items() if v == m.measure)
        per_query.setdefault(m.query_id, {})[column] = m.value
    agg = ir_measures.calc_aggregate(list(names.values()), qrels, scored)
    return per_query, {k: agg[v] for k, v in names.items()}


def assert_matches(wh: Warehouse, run_id: str, run: Run, qrels: Qrels, min_rel: int) -> None:
    """Every query of the qrels, and the means, within 1e-6 of ir_measures."""
    expected_q, expected_mean = reference(run, qrels, min_rel)
    got = {row["query_id"]: row for row in wh.per_query(run_id).to_pylist()}
    assert set(got) == set(qrels) == set(expected_q)
    for qid, values in expected_q.items():
        for column, value in values.items():
            assert got[qid][column] == pytest.approx(value, abs=1e-6), (qid, column, min_rel)
    means = wh.metrics(run_id)
    for key, column in {"ndcg@10": "ndcg_10", "mrr@10": "mrr_10", "recall@100": "recall_100"}.items():
        assert means[key] == pytest.approx(expected_mean[column], abs=1e-6), (key, min_rel)


def record(wh: Warehouse, run_id: str, run: Run, qrels: Qrels, min_rel: int = 1, **kw: object) -> None:
    """Record with fixed metadata; tests vary only what they check."""
    wh.record_run(run_id=run_id, dataset="toy", domain=kw.pop("domain", "d"), index_version="v1",
                  config={"k": 100}, results=results_table(run), qrels=qrels, min_rel=min_rel, **kw)


@pytest.fixture
def wh(tmp_path: Path):
    with Warehouse(tmp_path / "eval.duckdb") as warehouse:
        yield warehouse


@pytest.mark.parametrize("min_rel", [1, 2])
def test_inline_cases_match_ir_measures(wh: Warehouse, min_rel: int) -> None:
    record(wh, "r", RUN, QRELS, min_rel=min_rel)
    assert_matches(wh, "r", RUN, QRELS, min_rel)


def test_inline_values_by_hand(wh: Warehouse) -> None:
    """Independent of ir_measures: linear gain, rank past 10, empty and unjudged queries."""
    record(wh, "r", RUN, QRELS)
    got = {row["query_id"]: row for row in wh.per_query("r").to_pylist()}
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["q1"]["ndcg_10"] == pytest.approx(dcg / idcg)
    assert got["q1"]["mrr_10"] == pytest.approx(0.5)
    assert got["q1"]["recall_100"] == pytest.approx(2 / 3)
    assert (got["q2"]["ndcg_10"], got["q2"]["mrr_10"], got["q2"]["recall_100"]) == (0.0, 0.0, 1.0)
    assert got["q3"] == {"run_id": "r", "query_id": "q3", "ndcg_10": 0.0, "mrr_10": 0.0, "recall_100": 0.0}
    assert got["q4"]["ndcg_10"] == 0.0 and got["q4"]["recall_100"] == 0.0
    assert wh.query("SELECT n_queries FROM runs").column(0).to_pylist() == [5]


def random_case(seed: int) -> tuple[Run, Qrels]:
    """~50 queries with random graded qrels and random ranked lists (some empty, some long)."""
    rng = random.Random(seed)
    pool = [f"d{i}" for i in range(300)]
    run: Run = {}
    qrels: Qrels = {}
    for i in range(50):
        qid = f"q{i}"
        qrels[qid] = {d: rng.choice([0, 0, 1, 1, 2, 3]) for d in rng.sample(pool, rng.randint(1, 25))}
        length = rng.choice([0, rng.randint(1, 15), rng.randint(15, 150)])
        candidates = list(qrels[qid]) + rng.sample(pool, 120)
        run[qid] = list(dict.fromkeys(rng.sample(candidates, min(length, len(candidates)))))
    return run, qrels


@pytest.mark.parametrize("min_rel", [1, 2])
def test_random_runs_match_ir_measures(wh: Warehouse, min_rel: int) -> None:
    run, qrels = random_case(seed=1234)
    record(wh, "rand", run, qrels, min_rel=min_rel)
    assert_matches(wh, "rand", run, qrels, min_rel)



@pytest.mark.parametrize("seed", [0, 1])
def test_rec_metrics_view_matches_ir_measures(wh: Warehouse, seed: int) -> None:
    """The rec_metrics view (one held-out item per user, 0-based rank) against ir_measures on the same
    rankings written out: `rank` other items above the target."""
    rng = random.Random(seed)
    ranks = [rng.choice([0, 1, 2, 9, 10, 11, 49, 50, 200, rng.randint(0, 300)]) for _ in range(150)]
    got = wh.record_rec_run(run_id="rec", group_id="g", variant="v", protocol="full", split="test",
                            dataset="toy", domain="d", ranks=ranks, config={})
    run = {f"u{u}": {f"other{i}": float(-i) for i in range(r)} | {"target": float(-r)} for u, r in enumerate(ranks)}
    qrels = {f"u{u}": {"target": 1} for u in range(len(ranks))}
    names = {"recall@10": R @ 10, "ndcg@10": nDCG @ 10, "recall@50": R @ 50, "ndcg@50": nDCG @ 50}
    ref = ir_measures.calc_aggregate(list(names.values()), qrels, run)
    for key, measure in names.items():
        assert got[key] == pytest.approx(ref[measure], abs=1e-9), key


def test_rerecord_replaces_and_runs_coexist(wh: Warehouse) -> None:
    record(wh, "a", RUN, QRELS, label="main", group_id="eval1")
    record(wh, "b", {"q1": ["d2"]}, QRELS, label="baseline:bm25", group_id="eval1")
    worse = {"q1": ["n1", "n2"]}
    record(wh, "a", worse, QRELS, label="main", group_id="eval1")

    counts = wh.query("SELECT run_id, count(*) AS n FROM run_results GROUP BY run_id ORDER BY run_id")
    assert counts.to_pylist() == [{"run_id": "a", "n": 2}, {"run_id": "b", "n": 1}]
    assert wh.metrics("a") == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0}
    assert wh.query("SELECT count(*) FROM run_qrels WHERE run_id = 'a'").column(0)[0].as_py() == 10
    listed = wh.runs().to_pylist()
    assert [r["run_id"] for r in listed] == ["a", "b"]  # newest first
    assert {r["group_id"] for r in listed} == {"eval1"}
    assert listed[1]["label"] == "baseline:bm25" and listed[1]["ndcg_10"] > 0


def test_group_id_defaults_to_run_id_and_queries_subset(wh: Warehouse) -> None:
    record(wh, "only-q1", RUN, QRELS, queries=["q1", "q3"])
    row = wh.runs().to_pylist()[0]
    assert row["group_id"] == "only-q1" and row["n_queries"] == 2
    assert wh.per_query("only-q1").column("query_id").to_pylist() == ["q1", "q3"]


def test_bad_results_roll_back(wh: Warehouse) -> None:
    record(wh, "a", RUN, QRELS)
    before = wh.metrics("a")
    with pytest.raises(ValueError, match="doc 'd2' 2 time"):
        record(wh, "a", {"q1": ["d2", "d2"]}, QRELS)
    assert wh.metrics("a") == before
    with pytest.raises(ValueError, match="lacks columns"):
        wh.record_run(run_id="x", dataset="t", domain="d", index_version="v", config={},
                      results=pa.table({"query_id": ["q1"]}), qrels=QRELS)
    with pytest.raises(KeyError):
        wh.metrics("missing")


def test_views_survive_reopen_and_read_only(tmp_path: Path) -> None:
    path = tmp_path / "eval.duckdb"
    with Warehouse(path) as wh:
        record(wh, "a", RUN, QRELS, domain="scifact")
        expected = wh.metrics("a")
    with Warehouse(path, read_only=True) as ro:  # creates nothing: the views are in the file
        assert ro.metrics("a") == expected
        assert ro.per_query("a").num_rows == len(QRELS)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.sql("SELECT domain, ndcg_10 FROM run_metrics").fetchall()
    finally:
        con.close()
    assert rows == [("scifact", pytest.approx(expected["ndcg@10"]))]
    with pytest.raises(FileNotFoundError):
        Warehouse(tmp_path / "absent.duckdb", read_only=True)
