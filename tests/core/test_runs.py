"""TREC / ranx runs, qrels files, measures by name and the paired comparison (sidestep.eval.runs)."""

from __future__ import annotations

import json
import random

import ir_measures
import pytest
from scipy import stats

from sidestep.eval.runs import (
    RunFormatError,
    compare_runs,
    format_trec,
    paired,
    parse_measures,
    read_qrels,
    read_trec,
    to_ranx,
    write_run,
)


def _random_run(seed: int, queries: int = 30, docs: int = 40, depth: int = 15) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for q in range(queries):
        picked = rng.sample(range(docs), depth)
        scores = sorted((rng.random() for _ in picked), reverse=True)
        rows += [(f"q{q}", f"d{d}", r, s) for r, (d, s) in enumerate(zip(picked, scores, strict=True), 1)]
    return rows


def _qrels(seed: int = 7, queries: int = 30, docs: int = 40) -> dict[str, dict[str, int]]:
    rng = random.Random(seed)
    return {f"q{q}": {f"d{d}": rng.choice([1, 2]) for d in rng.sample(range(docs), 4)} for q in range(queries)}


def test_trec_lines_have_six_columns_ranks_from_one_and_scores_that_rank_as_the_run():
    rows = [("q1", "b", 2, 0.5), ("q1", "a", 1, 0.5), ("q1", "c", 3, 0.7), ("q2", "x", 1, -1.0)]
    lines = format_trec(rows, "mytag").splitlines()
    parts = [ln.split() for ln in lines]
    assert all(len(p) == 6 and p[1] == "Q0" and p[5] == "mytag" for p in parts)
    assert [(p[0], p[2], int(p[3])) for p in parts] == [("q1", "a", 1), ("q1", "b", 2), ("q1", "c", 3),
                                                        ("q2", "x", 1)]
    # a tie and an inversion are written below the score above them, so score order == rank order
    s = [float(p[4]) for p in parts[:3]]
    assert s[0] == 0.5 and s[0] > s[1] > s[2] and s[1] == pytest.approx(0.5, rel=1e-5)
    # ir_measures (trec_eval underneath) therefore sees the run's ranking: a is first, not b or c
    qrels = {"q1": {"a": 1}}
    assert ir_measures.calc_aggregate([ir_measures.RR], qrels, to_ranx(rows))[ir_measures.RR] == 1.0


def test_trec_and_ranx_round_trip(tmp_path):
    rows = _random_run(1)
    write_run(rows, tmp_path / "r.trec", "trec", tag="t")
    write_run(rows, tmp_path / "r.json", "ranx")
    back = read_trec(tmp_path / "r.trec")
    assert sorted((q, d, r) for q, d, r, _ in back) == sorted((q, d, r) for q, d, r, _ in rows)
    assert {(q, d): s for q, d, _, s in back} == {(q, d): s for q, d, _, s in rows}
    ranx = json.loads((tmp_path / "r.json").read_text())
    assert ranx == to_ranx(rows)
    assert (sorted((q, d, r) for q, d, r, _ in read_trec(tmp_path / "r.json"))
            == sorted((q, d, r) for q, d, r, _ in rows))


def test_a_bad_trec_line_and_an_unknown_format_are_clear_errors(tmp_path):
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(RunFormatError, match=r"bad.trec:1: .*6 columns"):
        read_trec(tmp_path / "bad.trec")
    with pytest.raises(RunFormatError, match="unknown run format"):
        write_run([], tmp_path / "x", "csv")
    with pytest.raises(RunFormatError, match="whitespace"):
        format_trec([("q 1", "d", 1, 1.0)], "t")


def test_qrels_files_trec_and_beir(tmp_path):
    (tmp_path / "q.trec").write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")
    want = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    assert read_qrels(tmp_path / "q.trec") == want == read_qrels(tmp_path / "q.tsv")


def test_measures_by_ir_measures_or_trec_eval_name_and_an_unknown_one_is_an_error():
    got = parse_measures(["nDCG@10", "AP", "ndcg_cut_20"])
    assert [str(m) for m in got.values()] == ["nDCG@10", "AP", "nDCG@20"]
    with pytest.raises(RunFormatError, match="unknown measure 'nDGC@10'"):
        parse_measures(["nDGC@10"])


def test_compare_matches_ir_measures_and_scipy_and_counts_every_query():
    a, b, qrels = _random_run(1), _random_run(2), _qrels()
    names = ["nDCG@10", "RR@10", "R@100", "AP", "P@5"]
    res, n = compare_runs(a, b, qrels, names)
    assert n == len(qrels) == 30
    parsed = parse_measures(names)
    agg_a = ir_measures.calc_aggregate(list(parsed.values()), qrels, to_ranx(a))
    agg_b = ir_measures.calc_aggregate(list(parsed.values()), qrels, to_ranx(b))
    for name, m in parsed.items():
        r = res[name]
        assert r.a == pytest.approx(agg_a[m], abs=1e-9) and r.b == pytest.approx(agg_b[m], abs=1e-9)
        assert r.delta == pytest.approx(r.b - r.a)
        per_a = {x.query_id: x.value for x in ir_measures.iter_calc([m], qrels, to_ranx(a))}
        per_b = {x.query_id: x.value for x in ir_measures.iter_calc([m], qrels, to_ranx(b))}
        qs = sorted(qrels)
        va, vb = [per_a.get(q, 0.0) for q in qs], [per_b.get(q, 0.0) for q in qs]
        assert r.p_value == pytest.approx(stats.ttest_rel(va, vb).pvalue, rel=1e-9)
        assert r.wins == sum(y > x for x, y in zip(va, vb, strict=True))
        assert r.losses == sum(y < x for x, y in zip(va, vb, strict=True))
        assert r.wins + r.ties + r.losses == n
    assert res["nDCG@10"].wins > 0 and res["nDCG@10"].losses > 0  # two random runs: the test can tell


def test_a_run_compared_with_itself_differs_nowhere():
    a, qrels = _random_run(3), _qrels()
    res, n = compare_runs(a, list(a), qrels)
    for r in res.values():
        assert r.delta == 0 and r.wins == r.losses == 0 and r.ties == n and r.p_value == 1.0


def test_a_judged_query_the_run_misses_counts_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    res, n = compare_runs([("q1", "a", 1, 1.0)], [("q1", "a", 1, 1.0), ("q2", "b", 1, 1.0)], qrels, ["RR@10"])
    assert n == 2 and res["RR@10"].a == 0.5 and res["RR@10"].b == 1.0
    assert (res["RR@10"].wins, res["RR@10"].ties, res["RR@10"].losses) == (1, 1, 0)


def test_paired_needs_two_queries_for_a_p_value():
    assert paired([0.1], [0.3]).p_value is None


def test_the_comparison_report_reads_back_its_json_shape():
    from sidestep.results import MeasureComparison, RunComparison

    a, b, qrels = _random_run(1), _random_run(2), _qrels()
    res, n = compare_runs(a, b, qrels)
    rep = RunComparison(runs=["A", "B"], measures=res, queries=n)
    d = json.loads(json.dumps(rep.as_dict()))
    assert list(d) == ["runs", "measures", "queries", "test"] and d["test"] == "paired t-test"
    assert set(d["measures"]["nDCG@10"]) == {"a", "b", "delta", "p_value", "wins", "ties", "losses"}
    back = RunComparison.from_dict(d)
    assert isinstance(back.measures["RR@10"], MeasureComparison) and back.as_dict() == d
