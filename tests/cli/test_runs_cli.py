"""eval --trec-out, export and compare on a tiny BEIR folder, checked against ir_measures and scipy."""

from __future__ import annotations

import json
from pathlib import Path

import ir_measures
import pytest
from scipy import stats
from typer.testing import CliRunner

from sidestep.cli import app

runner = CliRunner()

DOCS = {
    "d1": "Herons stand still in shallow water waiting for fish.",
    "d2": "Kestrels hover over roadside verges looking for voles.",
    "d3": "Oak leaves turn brown and fall in late autumn.",
    "d4": "Sourdough bread needs a lively starter and a long rise.",
    "d5": "A bicycle chain should be cleaned and oiled every month.",
    "d6": "Tomatoes ripen faster in a paper bag with a banana.",
    "d7": "Owls hunt at night using their sharp hearing.",
    "d8": "Maple trees are tapped for sap in early spring.",
    "d9": "Flat tyres are fixed by patching the inner tube.",
    "d10": "Yeast dough rises best in a warm kitchen.",
    "d11": "Swifts spend almost their whole lives flying.",
    "d12": "Pine needles stay green through the winter.",
}
QUERIES = {"q1": "birds that hunt small animals", "q2": "how to bake bread",
           "q3": "trees in autumn and winter", "q4": "repairing a bike", "q5": "wading bird catching fish"}
QRELS = {"q1": {"d2": 2, "d7": 1}, "q2": {"d4": 2, "d10": 1}, "q3": {"d3": 2, "d12": 1, "d8": 1},
         "q4": {"d9": 2, "d5": 1}, "q5": {"d1": 2}}


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                 for d, t in DOCS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, ds in QRELS.items() for d, r in ds.items()))
    return folder


def _json(args: list[str], code: int = 0) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cmd", ["export", "compare"])
def test_the_run_commands_have_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


@pytest.mark.slow
@pytest.mark.integration
def test_trec_out_export_and_compare(data_root, tmp_path, encoder):
    folder = _beir(tmp_path / "tiny")
    trec = tmp_path / "run.trec"
    res = _json(["eval", str(folder), "--domain", "tiny", "--k", "10", "--trec-out", str(trec)])
    assert res["trec_out"] == str(trec.resolve()) and res["queries"] == 5
    run_id = res["run_id"]
    assert res["run_ids"][("verifier" if res["verify"]["applied"] else "pooled_cosine")] == run_id

    # (1) a standard six-column TREC run of the configuration that ran; ir_measures agrees with --json
    lines = [ln.split() for ln in trec.read_text().splitlines()]
    assert lines and all(len(p) == 6 and p[1] == "Q0" and p[5] == run_id for p in lines)
    for q in QUERIES:
        ranks = [int(p[3]) for p in lines if p[0] == q]
        scores = [float(p[4]) for p in lines if p[0] == q]
        assert ranks == list(range(1, 11)) and scores == sorted(scores, reverse=True)
    file_run = list(ir_measures.read_trec_run(str(trec)))
    qrels = [ir_measures.Qrel(q, d, r) for q, ds in QRELS.items() for d, r in ds.items()]
    from ir_measures import RR, R, nDCG
    agg = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 100], qrels, file_run)
    assert abs(agg[nDCG @ 10] - res["metrics"]["ndcg@10"]) < 1e-4
    assert abs(agg[RR @ 10] - res["metrics"]["mrr@10"]) < 1e-4
    assert abs(agg[R @ 100] - res["metrics"]["recall@100"]) < 1e-4

    # (2) export: the same file from the stored run; ranx JSON round-trip; a baseline is exportable too
    again = tmp_path / "again.trec"
    ex = _json(["export", run_id, "--format", "trec", "--out", str(again)])
    assert (ex["documents"], ex["queries"]) == (50, 5) and again.read_text() == trec.read_text()
    ranx = _json(["export", run_id, "--format", "ranx"])["content"]
    assert ranx == {q: {p[2]: float(p[4]) for p in lines if p[0] == q} for q in QUERIES}
    r = runner.invoke(app, ["export", run_id, "--format", "ranx"])
    assert r.exit_code == 0 and json.loads(r.stdout) == ranx
    bm25 = res["run_ids"]["bm25"]
    bm25_file = tmp_path / "bm25.trec"
    _json(["export", bm25, "--out", str(bm25_file)])
    bm25_run = list(ir_measures.read_trec_run(str(bm25_file)))
    assert abs(ir_measures.calc_aggregate([nDCG @ 10], qrels, bm25_run)[nDCG @ 10]
               - res["baselines"]["bm25"]["ndcg@10"]) < 1e-4

    # (3) compare: measures equal ir_measures' own, p_value scipy's, every query a win, tie or loss
    cmp = _json(["compare", bm25, run_id, "--measures", "nDCG@10", "--measures", "RR@10", "--measures", "AP"])
    assert cmp["runs"] == [bm25, run_id] and cmp["queries"] == 5 and cmp["test"] == "paired t-test"
    assert set(cmp["measures"]) == {"nDCG@10", "RR@10", "AP"}
    for name, m in cmp["measures"].items():
        measure = ir_measures.parse_measure(name)
        per = [{x.query_id: x.value for x in ir_measures.iter_calc([measure], qrels, run)}
               for run in (bm25_run, file_run)]
        va, vb = [per[0].get(q, 0.0) for q in sorted(QRELS)], [per[1].get(q, 0.0) for q in sorted(QRELS)]
        assert m["a"] == pytest.approx(sum(va) / 5, abs=1e-9) and m["b"] == pytest.approx(sum(vb) / 5, abs=1e-9)
        assert m["delta"] == pytest.approx(m["b"] - m["a"], abs=1e-12)
        assert m["wins"] + m["ties"] + m["losses"] == 5
        assert m["wins"] == sum(y > x for x, y in zip(va, vb, strict=True))
        if va == vb:
            assert m["p_value"] == 1.0
        else:
            want = stats.ttest_rel(va, vb).pvalue
            assert m["p_value"] == pytest.approx(want, rel=1e-9) if want == want else m["p_value"] is None
    # the default measures; a stored run against a TREC file (qrels from the stored run)
    cmp = _json(["compare", run_id, str(bm25_file)])
    assert set(cmp["measures"]) == {"nDCG@10", "RR@10", "R@100"}
    assert cmp["measures"]["nDCG@10"]["a"] == pytest.approx(res["metrics"]["ndcg@10"], abs=1e-4)
    # a run compared with itself: delta 0, no wins, no losses
    same = _json(["compare", run_id, run_id])
    for m in same["measures"].values():
        assert m["delta"] == 0 and m["wins"] == m["losses"] == 0 and m["ties"] == 5 and m["p_value"] == 1.0
    # two files need qrels: from --qrels (BEIR tsv here)
    files = _json(["compare", str(trec), str(bm25_file), "--qrels", str(folder / "qrels" / "test.tsv")])
    assert files["measures"]["nDCG@10"]["a"] == pytest.approx(res["metrics"]["ndcg@10"], abs=1e-4)
    assert "--qrels" in _json(["compare", str(trec), str(bm25_file)], code=1)["error"]
    # the human output is a table
    r = runner.invoke(app, ["compare", bm25, run_id])
    assert r.exit_code == 0 and "nDCG@10" in r.stdout and "p-value" in r.stdout

    # clear errors: an unknown run id, an unknown measure, an unknown format
    assert "unknown run 'nope'" in _json(["compare", "nope", run_id], code=1)["error"]
    assert "unknown run 'nope'" in _json(["export", "nope"], code=1)["error"]
    assert "unknown measure 'nDGC@10'" in _json(["compare", run_id, bm25, "--measures", "nDGC@10"], code=1)["error"]
    assert "unknown format 'csv'" in _json(["export", run_id, "--format", "csv"], code=1)["error"]
