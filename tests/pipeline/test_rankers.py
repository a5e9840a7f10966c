"""A domain without a verifier of its own is served by the best untrained ranker on its held-out
self-supervised queries, not dense recall alone: on a corpus where every document shares one topic and only
an invented part name tells them apart (dense pooled cosine blurs them; BM25 and MaxSim read the name), the
choice made at index time is not dense, is published as a versioned artifact, and search follows it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sidestep.config import SourceConfig
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.pipeline.rankers import choose_ranker
from sidestep.pipeline.summarize import summarize_domain
from sidestep.storage.rankers import load_choice, ranker_store
from sidestep.storage.status import domain_status
from sidestep.text.lexical import BM25, rrf

SYLLABLES = ["qor", "vex", "tal", "mir", "zon", "bek", "lu", "dra", "fen", "sko", "py", "wat"]


def _name(i: int) -> str:
    return SYLLABLES[i % 12] + SYLLABLES[i // 12 + 3] + SYLLABLES[(i * 7 + 1) % 12]


def _docs(n: int = 30) -> list[dict]:
    out = []
    for i in range(n):
        p = _name(i)
        out.append({"id": f"d{i}", "title": "", "text": (
            f"The pump station is inspected every week by the maintenance crew. "
            f"The {p} valve on the pump leaks when its seal wears out. "
            f"Technicians replace the {p} seal every spring before the busy season starts. "
            f"A spare {p} gasket is kept in the store room beside the pump.")})
    return out


@pytest.fixture(scope="module")
def jargon(tmp_path_factory, settings, encoder):
    from sidestep.storage.paths import DataRoot

    base = tmp_path_factory.mktemp("jargon")
    root = DataRoot(base / "root")
    corpus = base / "jargon.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _docs()))
    ingest_source(root, SourceConfig(domain="jargon", path=str(corpus), format="jsonl"),
                  max_text_bytes=settings.ingest.max_text_bytes)
    embed_domain(root, settings, "jargon", show_progress=False)
    summarize_domain(root, settings, "jargon")
    publish_domain(root, settings, "jargon")
    return root


def test_the_chosen_ranker_beats_dense_on_held_out_crops_and_is_a_versioned_artifact(jargon, settings):
    res = choose_ranker(jargon, settings, "jargon", log=lambda *_: None)
    assert res["published"] and res["queries"] == 30 and res["kinds"] == {"title": 0, "heading": 0, "crop": 30}
    n = res["ndcg10"]
    assert res["ranker"] in ("maxsim", "fusion") and res["ranker"] == res["best_untrained"]
    assert n[res["ranker"]] == max(n.values()) > n["pooled_cosine"] + 0.1
    assert res["over_dense_ci95"][0] > 0 and res["verifier"] is None
    stored = load_choice(jargon, "jargon")
    assert stored["ranker"] == res["ranker"] and stored["version"] == ranker_store(jargon).current("jargon")
    again = choose_ranker(jargon, settings, "jargon", log=lambda *_: None)  # unchanged inputs: kept
    assert again["unchanged"] and not again["published"] and again["version"] == res["version"]
    shown = domain_status(jargon)["domains"]["jargon"]["ranker"]  # `sidestep status` reports it
    assert shown["ranker"] == res["ranker"] and shown["ndcg10"] == n and shown["version"] == res["version"]


def test_search_follows_the_chosen_ranker(jargon, settings):
    from sidestep.retrieval.search import maxsim_rerank, search_vectors
    from sidestep.serving.core import SearchService
    from sidestep.storage.documents import DocumentStore
    from sidestep.storage.rankers import publish_choice

    svc = SearchService(settings, jargon)
    q = f"which seal of the pump wears out on the {_name(7)} valve"
    dense = svc.search(q, 5, "jargon", verify=False)["results"]
    for ranker in ("maxsim", "fusion", "pooled_cosine"):
        publish_choice(jargon, "jargon", f"v-test-{ranker}", {"ranker": ranker, "reason": f"{ranker} test",
                                                             "verifier": None}, keep=5)
        out = svc.search(q, 5, "jargon", verify=True)
        got = [h["doc_id"] for h in out["results"]]
        if ranker == "pooled_cosine":
            assert got == [h["doc_id"] for h in dense] and not out["verify"]["applied"]
            assert "pooled cosine chosen: pooled_cosine test" in out["verify"]["reason"]
            continue
        assert out["verify"]["ranker"] == ranker and not out["verify"]["applied"]
        assert f"{ranker} serves" in out["verify"]["reason"] and got[0] == "d7"
        if ranker == "maxsim":
            cands = svc.recall_stage(q, 5, "jargon", True).request
            assert cands.ranker == "maxsim"
            ms, _ = maxsim_rerank(svc.verifier.view("jargon", cands.index_version), cands.qtok, cands.doc_ids,
                                  settings.verify.max_doc_tokens)
            assert got == [cands.doc_ids[i] for i in np.argsort(-ms, kind="stable")[:5]]
        else:
            stored = DocumentStore(jargon).read("jargon")  # the store's order breaks BM25's ties, as served
            lex = BM25(stored["doc_id"].to_pylist(), stored["text"].to_pylist()).search([q], 100)[0]
            recall = search_vectors(svc.get("jargon"), svc.encoder.encode_queries([q]), 100)[0]
            fused = rrf([[d for d, _ in lex], [h.doc_id for h in recall]], 100)
            assert got == [d for d, _ in fused[:5]]
            assert [h["score"] for h in out["results"]] == pytest.approx([s for _, s in fused[:5]])
