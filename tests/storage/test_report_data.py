"""Warehouse.report_data picks what the report draws (main runs, the two latest per domain, the latest
verifier, eval-rec, lab and eval-longdoc runs), and the report's core draws a figure from each."""

from __future__ import annotations

import re
import time

import pyarrow as pa
import pytest

from sidestep.eval.report import render_report
from sidestep.storage.warehouse import Warehouse

QRELS = {f"q{i}": {f"d{i}": 1} for i in range(6)}


def _run(wh: Warehouse, group: str, name: str, hits: dict[str, str], label: str, domain: str = "tiny") -> None:
    t = pa.table({"query_id": list(hits), "doc_id": list(hits.values()), "rank": [1] * len(hits),
                  "score": [1.0] * len(hits)})
    wh.record_run(run_id=f"{group}-{name}", dataset="x", domain=domain, index_version=f"v-{group}",
                  config={"variant": name}, results=t, qrels=QRELS, label=label, group_id=group)
    time.sleep(0.002)  # started_at orders the runs


@pytest.fixture
def wh(tmp_path):
    with Warehouse(tmp_path / "eval.duckdb") as w:
        right = {q: next(iter(d)) for q, d in QRELS.items()}
        _run(w, "g1", "pooled_cosine", right, "main")
        _run(w, "g1", "bm25", right, "bm25")
        _run(w, "g2", "verifier", {**right, "q0": "dx", "q1": "dx"}, "main")  # loses q0, q1
        _run(w, "g2", "bm25", right, "bm25")
        _run(w, "g3", "verifier", {**right, "q0": "dx", "q2": "dx"}, "nightly")  # wins q1 back, loses q2
        _run(w, "g3", "bm25", {}, "bm25")
        _run(w, "o1", "pooled_cosine", right, "main", domain="other")
        w.record_verifier_curve("tiny", "v-old", [{"epoch": 0, "loss": 9.0}])
        time.sleep(0.002)
        w.record_verifier_curve("tiny", "v-new", [{"epoch": e, "loss": 1 / (e + 1), "val_ndcg10": 0.5} for e in
                                                  range(3)] + [{"epoch": 1, "adapter_val_ndcg10": 0.4}])
        for group in ("r-old", "r-new"):
            for variant in ("sidestep", "popularity"):
                w.record_rec_run(run_id=f"{group}-{variant}-full", group_id=group, variant=variant, protocol="full",
                                 split="test", dataset="s", domain="shop", ranks=[0, 5, 30], config={},
                                 curve=[{"epoch": e, "loss": 2.0 - e} for e in range(2)] if variant == "sidestep"
                                 else ())
            time.sleep(0.002)
        w.record_lab(run_id="lab-1", task="planted", config={}, rows=[
            {"section": "headline", "estimator": e, "metric": m, "value": v} for e in ("sidestep", "reinforce")
            for m, v in (("bias", 0.1), ("variance", 0.01), ("cosine", 0.9))] + [
            {"section": "curve", "estimator": "sidestep", "step": s, "metric": "expected_loss", "value": 1.0 / (s + 1)}
            for s in range(3)])
        time.sleep(0.002)
        # a retrieval lab run after the planted one: the planted figures still come from lab-1
        w.record_lab(run_id="lab-2", task="retrieval", config={}, rows=[
            {"section": "result", "estimator": e, "metric": f"sf/{m}", "value": v} for e in ("sidestep", "reinforce")
            for m, v in (("ndcg@10_mean", 0.7), ("ndcg@10_std", 0.01), ("no_overlap_ndcg@10_mean", 0.68))] + [
            {"section": "result", "estimator": "sidestep", "seed": 0, "metric": "sf/ndcg@10", "value": 0.71}] + [
            {"section": "control", "estimator": c, "metric": f"sf/{m}", "value": v}
            for c in ("identity", "best_untrained") for m, v in (("ndcg@10", 0.65), ("val_ndcg@10", 0.66))] + [
            {"section": "curve", "estimator": e, "seed": seed, "step": s, "metric": "sf/val_ndcg@10",
             "value": 0.6 + 0.01 * s + 0.01 * seed} for e in ("sidestep", "reinforce") for seed in (0, 1)
            for s in (0, 10, 20)])
        time.sleep(0.002)
        w.record_lab(run_id="lab-3", task="rec", config={}, rows=[
            {"section": "result", "estimator": a, "metric": f"{st}/sci/{m}", "value": v}
            for a in ("frozen", "learned") for st in ("in_domain", "transfer")
            for m, v in (("ndcg@10_mean", 0.05), ("ndcg@10_std", 0.01))] + [
            {"section": "result", "estimator": "frozen", "seed": 0, "metric": "in_domain/sci/ndcg@10", "value": 0.05},
            {"section": "control", "estimator": "popularity", "metric": "in_domain/sci/ndcg@10", "value": 0.02},
            {"section": "delta", "estimator": "learned-frozen", "metric": "in_domain/sci/ndcg@10_mean", "value": 0.0}])
        w.record_longdoc(run_id="ld-1", dataset="l", config={}, report={
            "bag_of_chunks": {"recall@1": 0.3, "recall@3": 0.5}, "map_conditioned": {"recall@1": 0.4},
            "per_document": [{"recall@1": 0.9}]})
        yield w


def test_report_data_picks_the_main_runs_and_the_latest_of_everything(wh):
    data = wh.report_data()
    tiny = [r for r in data["eval_runs"] if r["domain"] == "tiny"]
    assert [r["run_id"] for r in tiny] == ["g1-pooled_cosine", "g2-verifier", "g3-verifier"]  # no baseline
    assert tiny[0]["ndcg_10"] == pytest.approx(1.0) and tiny[1]["ndcg_10"] == pytest.approx(4 / 6)
    deltas = {d["domain"]: d for d in data["query_deltas"]}
    assert set(deltas) == {"tiny"}  # "other" has one run: nothing to compare
    d = deltas["tiny"]
    assert (d["before"], d["after"]) == ("g2-verifier", "g3-verifier")
    got = {r["query_id"]: r["delta"] for r in d["rows"]}
    assert got == pytest.approx({"q0": 0.0, "q1": 1.0, "q2": -1.0, "q3": 0.0, "q4": 0.0, "q5": 0.0})
    assert {r["verifier_version"] for r in data["verifier_curves"]} == {"v-new"}
    assert {r["metric"] for r in data["verifier_curves"]} == {"loss", "val_ndcg10", "adapter_val_ndcg10"}
    assert {r["group_id"] for r in data["rec_metrics"]} == {"r-new"}
    assert {r["variant"] for r in data["rec_metrics"]} == {"sidestep", "popularity"}
    assert {(r["group_id"], r["variant"]) for r in data["rec_curves"]} == {("r-new", "sidestep")}
    assert data["lab"]["run_id"] == "lab-1" and len(data["lab"]["headline"]) == 6 and len(data["lab"]["curve"]) == 3
    assert data["longdoc"]["run_id"] == "ld-1"
    ret = data["lab_retrieval"]
    assert ret["run_id"] == "lab-2" and len(ret["results"]) == 10  # per-seed rows are left out: means only
    sidestep = {r["step"]: r for r in ret["curve"] if r["estimator"] == "sidestep"}
    assert sidestep[10]["value"] == pytest.approx(0.705) and sidestep[10]["std"] == pytest.approx(0.005)
    rec = data["lab_rec"]
    assert rec["run_id"] == "lab-3" and len(rec["results"]) == 10  # means, controls and deltas; no per-seed rows
    assert data["lab_retrieval"]["run_id"] == "lab-2" and data["lab"]["run_id"] == "lab-1"
    only = wh.report_data("other")
    assert {r["domain"] for r in only["eval_runs"]} == {"other"} and only["verifier_curves"] == []
    assert only["rec_metrics"] == [] and only["lab"] is not None  # the lab belongs to no domain


def test_the_report_draws_a_figure_for_each_section_with_data(wh):
    data = {**wh.report_data(), "codebook": {"version": "v1", "positions": 3, "codewords": 4, "diagnostics": {
        "shop": {"items": 9, "entropy_per_position": [1.0, 2.0, 0.5], "entropy_bits_max": 2.0}}},
        "latency": {"source": "b.json", "series": {"http_k10": [30.0, 31.0, 40.0]}}}
    page, figures, notes = render_report(data, domain=None)
    assert figures == ["eval-metrics-other", "eval-metrics-tiny", "query-deltas-tiny", "verifier-curve-tiny",
                       "rec-curve-shop-sidestep", "codebook-usage", "rec-metrics-shop", "lab-bias-variance",
                       "lab-curves", "lab-retrieval-curves-sf", "lab-retrieval-test-sf", "lab-rec", "longdoc",
                       "latency"]
    assert notes == {}
    assert page.count("<svg") == len(figures) and page.count("<figure") == len(figures)
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across figures"
    assert "g2-verifier" in page and "g3-verifier" in page


def test_a_section_that_cannot_be_drawn_says_so_and_the_others_still_are():
    page, figures, notes = render_report({"eval_runs": [{"domain": "x"}],  # a row without its columns
                                          "latency": {"series": {"a": [1.0, 2.0]}}})
    assert figures == ["latency"]
    assert notes["eval"][0].startswith("Could not draw this section: KeyError")
    assert "Could not draw this section" in page
