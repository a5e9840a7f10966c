"""Real Prefect flows on real Parquet, FAISS and DuckDB, in temporary data roots."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import ir_measures
import numpy as np
import pyarrow.parquet as pq
import pytest
from ir_measures import RR, R, nDCG

from sidestep.config import SAMPLES_DIR
from sidestep.eval.beir import load_qrels
from sidestep.flows.evaluate import evaluate_flow
from sidestep.flows.ingest import ingest_flow
from sidestep.flows.reindex import nightly_reindex
from sidestep.ingest.readers import SourceError
from sidestep.retrieval.search import search_texts
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.documents import DocumentStore, QuarantineStore
from sidestep.storage.indexes import load_current, read_chunks
from sidestep.storage.status import domain_status
from sidestep.storage.warehouse import Warehouse

from ..conftest import FIXTURES, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def recipes_source(path) -> str:
    """The recipes sample as a config source (it uses non-default field names)."""
    return (f'[[sources]]\ndomain = "recipes"\npath = "{path}"\nformat = "jsonl"\n'
            'id_field = "recipe_id"\ntitle_field = "name"\ntext_field = "body"\n')


def test_nightly_reindex_publishes_every_configured_domain(sample, settings):
    s = sample.summary
    assert sorted(p["domain"] for p in s["published"]) == sorted(settings.domains())
    assert s["encoded"] == sum(DocumentStore(sample.root).live_count(d) for d in settings.domains())
    store = IndexStore(sample.root)
    for d in settings.domains():
        m = store.verify(d, store.current(d))
        assert m["counts"]["chunks"] >= m["counts"]["documents"] > 0
        assert m["index"]["kind"] == "flat_ip"
    # handbook has long documents: they were split into several chunks
    assert store.current_manifest("handbook")["counts"]["chunks"] > 60
    # interactions of the recommendation domain are stored too
    status = domain_status(sample.root)
    assert status["domains"]["shop"]["interactions"] == 25
    # status knows the last nightly run's outcome and the recommendation artifacts
    last = status["last_nightly"]
    assert last["outcome"] == "completed" and last["encoded"] == s["encoded"] and last["run"]
    assert status["domains"]["shop"]["tables_version"] and status["codebook_version"]
    # every document of at least maps.min_chunks chunks got a map, the index versions carry them; the shorter
    # ones have none (their chunks hold their whole text)
    long_docs = {}
    for d in settings.domains():
        n = Counter(read_chunks(store, d, store.current(d))["doc_id"].to_pylist())
        long_docs[d] = {x for x, c in n.items() if c >= settings.maps.min_chunks}
    assert settings.maps.min_chunks == 3 and 0 < len(long_docs["handbook"]) < 60
    assert s["summarized"] == sum(map(len, long_docs.values())) and s["maps_failed"] == 0
    assert s["unmapped_short"] == s["encoded"] - s["summarized"]
    m = store.current_manifest("handbook")
    assert m["maps"]["documents_with_map"] == len(long_docs["handbook"]) and "maps.parquet" in m["files"]


def test_map_search_routes_by_maps_and_conditions_the_query(sample, encoder):
    corpus = load_current(IndexStore(sample.root), "handbook")
    assert corpus.maps is not None
    chunks = np.bincount(corpus.maps.chunk_doc, minlength=len(corpus.maps.doc_ids))
    assert (corpus.maps.has_map == (chunks >= 3)).all() and corpus.maps.has_map.any()
    hits, timings = search_texts(encoder, corpus, ["how do I undo a bad deploy"], 5, mode="map")
    assert hits[0][0].doc_id == "hb-029" and len({h.doc_id for h in hits[0]}) == 5
    assert "map_search" in timings
    within, _ = search_texts(encoder, corpus, ["how long to watch metrics before rolling back"], 3, mode="map",
                             doc_id="hb-029")
    assert {h.doc_id for h in within[0]} == {"hb-029"} and len({h.chunk for h in within[0]}) == 3
    with pytest.raises(ValueError):
        search_texts(encoder, corpus, ["x"], 3, mode="nope")


def _reindex_recipes_with_llm(endpoint: str, tmp_path, monkeypatch) -> dict:
    """The nightly flow over the sample recipes with the LLM summarizer pointed at `endpoint`."""
    write_config(tmp_path / "c.toml", f"""
[maps]
min_chunks = 1
summarizer = "llm"
llm_endpoint = "{endpoint}"
llm_model = "fake"
{recipes_source(SAMPLES_DIR / "recipes" / "recipes.jsonl")}""")
    monkeypatch.setenv("SIDESTEP_CONFIG", str(tmp_path / "c.toml"))
    return nightly_reindex()


class _PickyLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible fake that fails (500) for one document's text and summarizes the rest."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        ok = "garam masala" not in body
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A short summary."}}]}).encode()
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if ok else 4))
        self.end_headers()
        self.wfile.write(data if ok else b"boom")

    def log_message(self, *args):
        pass


def test_a_summarizer_failure_on_one_document_quarantines_only_its_map(data_root, tmp_path, monkeypatch, encoder):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = HTTPServer(("127.0.0.1", 0), _PickyLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary = _reindex_recipes_with_llm(f"http://127.0.0.1:{server.server_port}", tmp_path, monkeypatch)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["maps_failed"] == 1 and summary["summarized"] == 29 and summary["published"]
    q = QuarantineStore(data_root).read("recipes").to_pylist()
    assert len(q) == 1 and q[0]["reason"].startswith("map_failed:") and "500" in q[0]["reason"]
    corpus = load_current(IndexStore(data_root), "recipes")
    failed = corpus.maps.doc_ids.index("r06")  # the curry: the only text with "garam masala"
    assert not corpus.maps.has_map[failed] and corpus.maps.has_map.sum() == 29
    for mode in ("chunks", "map"):  # searchable without its map, in both modes
        hits, _ = search_texts(encoder, corpus, ["chickpea and spinach curry with garam masala"], 3, mode=mode)
        assert hits[0][0].doc_id == "r06", mode


def test_a_failing_summarizer_quarantines_maps_and_documents_stay_searchable(data_root, tmp_path, monkeypatch,
                                                                            encoder):
    summary = _reindex_recipes_with_llm("http://127.0.0.1:9", tmp_path, monkeypatch)  # nothing listens there
    assert summary["maps_failed"] == 30 and summary["summarized"] == 0 and summary["published"]
    q = QuarantineStore(data_root).read("recipes").to_pylist()
    assert len(q) == 30 and all(r["reason"].startswith("map_failed:") for r in q)
    corpus = load_current(IndexStore(data_root), "recipes")
    hits, _ = search_texts(encoder, corpus, ["chickpea curry"], 3)
    assert hits[0][0].doc_id == "r06"
    routed, _ = search_texts(encoder, corpus, ["chickpea curry"], 3, mode="map")  # falls back to chunks
    assert routed[0][0].doc_id == "r06" and not corpus.maps.has_map.any()


def test_rerun_on_an_unchanged_corpus_reencodes_and_publishes_nothing(sample, monkeypatch):
    monkeypatch.setenv("SIDESTEP_HOME", str(sample.root.root))
    store = IndexStore(sample.root)
    before = {d: store.current(d) for d in sample.root.domains_with_indexes()}
    again = nightly_reindex()
    assert again["encoded"] == 0 and again["published"] == []
    assert all(r["ingest"][0]["unchanged"] == r["embed"]["documents"] for r in again["domains"].values())
    assert {d: store.current(d) for d in before} == before


def test_incremental_reindex_encodes_only_what_changed(data_root, tmp_path, monkeypatch):
    src = tmp_path / "recipes.jsonl"
    shutil.copy(SAMPLES_DIR / "recipes" / "recipes.jsonl", src)
    cfg = write_config(tmp_path / "c.toml", f"""
{recipes_source(src)}""")
    monkeypatch.setenv("SIDESTEP_CONFIG", str(tmp_path / "c.toml"))
    first = nightly_reindex()
    v1 = first["published"][0]["version"]
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    rows[0]["body"] += " Finish with a squeeze of lime."
    removed = rows.pop(1)["recipe_id"]
    rows.append({"recipe_id": "r-new", "name": "Plain rice", "body": "Rinse the rice, simmer it covered."})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    second = nightly_reindex()
    ing = second["domains"]["recipes"]["ingest"][0]
    assert (ing["new"], ing["updated"], ing["tombstoned"]) == (1, 1, 1)
    assert second["encoded"] == 2
    v2 = second["published"][0]["version"]
    assert IndexStore(data_root).manifest("recipes", v2)["parent"] == v1
    corpus = load_current(IndexStore(data_root), "recipes")
    assert removed not in set(corpus.searcher.doc_ids) and "r-new" in set(corpus.searcher.doc_ids)
    assert cfg.domains() == ["recipes"]


def test_bad_input_is_quarantined_with_reasons_and_good_records_are_searchable(data_root, tmp_path, monkeypatch,
                                                                              encoder):
    expected = json.loads((FIXTURES / "bad_input" / "expected.json").read_text())
    write_config(tmp_path / "c.toml", f"""
[ingest]
max_text_bytes = {expected["max_text_bytes"]}
[[sources]]
domain = "bad"
path = "{FIXTURES / "bad_input" / "corpus.jsonl"}"
format = "jsonl"
""")
    monkeypatch.setenv("SIDESTEP_CONFIG", str(tmp_path / "c.toml"))
    summary = nightly_reindex()
    assert summary["quarantined"] == len(expected["bad"])
    q = QuarantineStore(data_root).read("bad").to_pylist()
    got = sorted((r["location"], r["reason"].split(":")[0]) for r in q)
    assert got == sorted((b["location"], b["reason"]) for b in expected["bad"])
    assert all(r["raw"] is not None and r["run_id"] for r in q)
    corpus = load_current(IndexStore(data_root), "bad")
    docs = DocumentStore(data_root).read("bad", include_deleted=False).to_pylist()
    assert sorted(d["doc_id"] for d in docs) == sorted(expected["good_ids"])
    hits, _ = search_texts(encoder, corpus, [f"{d['title']} {d['text']}".strip() for d in docs], k=1)
    assert [h[0].doc_id for h in hits] == [d["doc_id"] for d in docs]


def test_an_unreadable_source_fails_before_anything_is_written(data_root):
    with pytest.raises(SourceError, match="source not found"):
        ingest_flow(path=str(data_root.root / "nope.jsonl"), domain="x")
    with pytest.raises(SourceError):
        ingest_flow(path=str(FIXTURES / "bad_input" / "expected.json"), domain="x", format="csv")
    assert not (data_root.root / "documents").exists()


def test_evaluate_flow_stores_the_run_and_sql_metrics_match_ir_measures(data_root, tmp_path):
    folder = SAMPLES_DIR / "handbook"
    out = tmp_path / "run.parquet"
    res = evaluate_flow(dataset_dir=str(folder), domain="handbook", k=20, out=str(out))
    assert set(res["metrics"]) == {"ndcg@10", "mrr@10", "recall@100"}
    assert res["queries"] == 24
    # no train qrels, so no verifier: the ranker chosen at index time on the domain's held-out self-supervised
    # queries (the best untrained one), with the other untrained rankers of the same run beside it
    assert not res["verify"]["applied"] and "no verifier" in res["verify"]["reason"]
    chosen = res["verify"]["ranker_choice"]["ranker"]
    main = {"maxsim": "maxsim", "fusion": "rrf_bm25_dense"}.get(chosen, "pooled_cosine")
    assert res["verify"]["ranker"] == main and f"{chosen} serves" in res["verify"]["reason"]
    assert set(res["baselines"]) == {"pooled_cosine", "maxsim", "bm25", "rrf_bm25_dense"} - {main}
    run = pq.read_table(out)
    assert run.column_names == ["query_id", "doc_id", "rank", "score"]
    assert run.num_rows == 24 * 20
    qrels = load_qrels(folder, "test")
    ref = ir_measures.calc_aggregate(
        [nDCG @ 10, RR @ 10, R @ 100],
        [ir_measures.Qrel(q, d, r) for q, ds in qrels.items() for d, r in ds.items()],
        [ir_measures.ScoredDoc(q, d, -float(rk)) for q, d, rk in
         zip(*(run[c].to_pylist() for c in ("query_id", "doc_id", "rank")), strict=True)])
    m = res["metrics"]
    assert m["ndcg@10"] == pytest.approx(ref[nDCG @ 10], abs=1e-6)
    assert m["mrr@10"] == pytest.approx(ref[RR @ 10], abs=1e-6)
    assert m["recall@100"] == pytest.approx(ref[R @ 100], abs=1e-6)
    # the sample queries are answerable: dense recall finds most of them
    assert m["recall@100"] > 0.8
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        assert wh.runs().num_rows == 4  # main + three baselines, one group
