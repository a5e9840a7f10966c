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

QUERY = "which seal of the pump wears out on the {} valve"
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
    folder = base / "jargon"  # a BEIR folder: judged test queries, no train split
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d["id"], "title": "", "text": d["text"]}) + "\n"
                                                 for d in _docs()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": QUERY.format(_name(i))}) + "\n"
                                                  for i in range(0, 30, 3)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(0, 30, 3)))
    ingest_source(root, SourceConfig(domain="jargon", path=str(folder), format="beir"),
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
    q = QUERY.format(_name(7))
    dense = svc.search(q, 5, "jargon", verify=False)["results"]
    for ranker in ("maxsim", "fusion", "pooled_cosine"):
        publish_choice(jargon, "jargon", f"v-test-{ranker}", {"ranker": ranker, "reason": f"{ranker} test",
                                                             "verifier": None}, keep=5)
        out = svc.search(q, 5, "jargon", verify=True)
        got = [h["doc_id"] for h in out["results"]]
        if ranker == "pooled_cosine":
            assert got == [h["doc_id"] for h in dense] and not out["verify"]["applied"]
            assert out["verify"]["ranker"] == "pooled_cosine" and "pooled_cosine serves" in out["verify"]["reason"]
            assert "(pooled_cosine test)" in out["verify"]["reason"]
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
    # a damaged choice costs only itself: the last good one keeps serving and /healthz says why
    current = ranker_store(jargon).base("jargon") / "CURRENT"
    good = current.read_text()
    current.write_text("../../etc\n")
    try:
        out = svc.search(q, 5, "jargon", verify=True)
        assert [h["doc_id"] for h in out["results"]] == [h["doc_id"] for h in dense]  # pooled cosine, as before
        assert "ranker choice unusable" in svc.health()["ranker_errors"]["jargon"]
    finally:
        current.write_text(good)
    svc.search(q, 5, "jargon", verify=True)
    assert "jargon" not in svc.health()["ranker_errors"]
    # the Ray app's search replica (its verifier is a separate deployment) ranks a pooled-cosine choice as the
    # command line does: recall order, no request to the verifier deployment
    replica = SearchService(settings, jargon, encoder=svc.encoder, verifier=None)
    stage = replica.recall_stage(q, 5, "jargon", True)
    assert stage.request is None and "pooled_cosine serves" in stage.reason
    assert [h["doc_id"] for h in replica.finish(stage, None)["results"]] == [h["doc_id"] for h in dense]


def test_the_general_verifier_is_offered_through_the_gate_served_evaluated_and_adapted(jargon, settings):
    """train-verifier --general's pipeline on the tiny corpus: published as verifiers/general-verifier, offered to
    the domain's ranker choice on held-out queries it never trained on; where chosen, search and eval apply it and
    say so; the domain's adaptation from it is published only past its gate."""
    from sidestep.pipeline.adapt import ADAPTED, GENERAL, adapt_domain
    from sidestep.pipeline.evaluate import evaluate_domain
    from sidestep.pipeline.general import LabelledSet, train_general_verifier
    from sidestep.serving.core import SearchService
    from sidestep.storage.rankers import GENERAL_DOMAIN, publish_choice
    from sidestep.storage.verifiers import load_verifier, publish_verifier

    fast = settings.model_copy(update={"verify": settings.verify.model_copy(update={
        "epochs": 1, "near_misses": 1, "ranker_queries": 10, "general_per_domain": 12})})
    quiet = lambda *_: None  # noqa: E731
    folder = str(jargon.root.parent / "jargon")
    judged = LabelledSet(folder, "jargon", "test")
    res = train_general_verifier(jargon, fast, labelled=[judged], domains=["jargon"], log=quiet)  # 12 a domain
    g = load_verifier(jargon, GENERAL_DOMAIN)
    assert g.version == res["version"] and g.manifest["general"] and g.manifest["leave_out"] is None
    lab, = g.manifest["sources"]["labelled"]
    assert lab["split"] == "test" and lab["lists"] > 0 and sum(lab["near_misses"].values()) > 0
    ss = g.manifest["sources"]["self_supervised"]["jargon"]
    assert ss["queries"] == 12 and ss["kinds"]["crop"] == 12 and ss["lists"] > 0
    trained = set(g.manifest["self_supervised_positives"]["jargon"])
    assert trained
    choice = choose_ranker(jargon, fast, "jargon", log=quiet)  # a new general verifier: chosen again
    assert choice["published"] and choice["learned_offered"] == {GENERAL: g.version} and GENERAL in choice["ndcg10"]
    assert choice["ranker"] != GENERAL or (choice["ndcg10"][GENERAL] > max(
        choice["ndcg10"][k] for k in ("pooled_cosine", "maxsim", "fusion")) and choice["learned_ci95"][0] > 0)
    # where the general verifier is the choice, search and eval apply it and say which and why
    publish_choice(jargon, "jargon", "v-test-general", {**choice, "ranker": GENERAL, "reason": "general test",
                                                       "verifier": {"domain": GENERAL_DOMAIN, "version": g.version}},
                   keep=5)
    out = SearchService(fast, jargon).search(QUERY.format(_name(4)), 5, "jargon", verify=True)
    assert out["verify"]["applied"] and out["verify"]["ranker"] == GENERAL
    assert out["verify"]["verifier_version"] == g.version and "general test" in out["verify"]["reason"]
    ev = evaluate_domain(jargon, fast, folder, "jargon", k=10, verify=True)
    assert ev["verify"]["applied"] and ev["verify"]["verifier_kind"] == "general"
    assert ev["verify"]["verifier_domain"] == GENERAL_DOMAIN and f"{GENERAL} serves" in ev["verify"]["reason"]
    assert set(ev["baselines"]) == {"pooled_cosine", "maxsim", "bm25", "rrf_bm25_dense"}
    # where it was weighed and MaxSim won, MaxSim serves and eval still applies the general verifier, as a row
    # of its own beside it (the same figure as when it served), saying which verifier and why it does not serve
    publish_choice(jargon, "jargon", "v-test-weighed", {**choice, "ranker": "maxsim", "verifier": None,
                                                      "reason": "maxsim test"}, keep=5)
    ev2 = evaluate_domain(jargon, fast, folder, "jargon", k=10, verify=True)
    assert not ev2["verify"]["applied"] and ev2["verify"]["ranker"] == "maxsim"
    assert ev2["metrics"] == ev["baselines"]["maxsim"]
    assert set(ev2["baselines"]) == {"pooled_cosine", "general_verifier", "bm25", "rrf_bm25_dense"}
    assert ev2["baselines"]["general_verifier"] == ev["metrics"]
    w = ev2["verify"]["general"]
    assert (w["verifier_kind"], w["verifier_version"], w["served"]) == ("general", g.version, False)
    assert w["why"] == "the ranker choice picked maxsim: maxsim test"
    # it read jargon's test judgments, the very split evaluated: said so, never called leave-one-corpus-out
    assert w["judgments_read"] == [{"domain": "jargon", "split": "test"}] and w["trained_on_evaluated_split"]
    assert w["read_judgments_of_this_corpus"] and w["leave_one_corpus_out"] is False
    # adaptation: fine-tuned from the general verifier on the domain's own lists, published only past the gate
    ad = adapt_domain(jargon, fast, "jargon", per_domain=12, epochs=1, log=quiet)
    assert set(ad["gate"]["ndcg10"]) == {GENERAL, ADAPTED, "maxsim", "pooled_cosine", "fusion"}
    assert ad["published"] == (ad["winner"] == ADAPTED and ad["margin"] > 0 and ad["margin_ci95"][0] > 0)
    assert ("published" if ad["published"] else "nothing published") in ad["reason"]
    if ad["published"]:
        assert load_verifier(jargon, "jargon").manifest["adapted_from"]["version"] == g.version
    # leave-one-corpus-out: the left-out corpus's judgments are not read
    loco = train_general_verifier(jargon, fast, labelled=[judged],
                                  domains=["jargon"], leave_out="jargon", per_domain=12, log=quiet)
    assert loco["sources"]["labelled"] == [] and loco["leave_out"] == "jargon"
    # beside a domain's own verifier, eval applies the current general verifier too: here one that read none of
    # the corpus's judgments, so its row is the leave-one-corpus-out figure beside the in-domain one
    if not ad["published"]:
        publish_verifier(jargon, "jargon", "v-test-own", g.model, {}, keep=5)
    own = load_verifier(jargon, "jargon")
    ev3 = evaluate_domain(jargon, fast, folder, "jargon", k=10, verify=True)
    assert ev3["verify"]["applied"] and ev3["verify"]["verifier_version"] == own.version
    w = ev3["verify"]["general"]
    assert (w["verifier_version"], w["leave_one_corpus_out"], w["leave_out"]) == (loco["version"], True, "jargon")
    assert w["why"] == f"the domain's {ev3['verify']['verifier_kind']} verifier {own.version} serves"
    assert w["judgments_read"] == [] and w["trained_on_evaluated_split"] is False
    assert set(ev3["baselines"]) == {"pooled_cosine", "maxsim", "general_verifier", "bm25", "rrf_bm25_dense"}
    assert ev3["metrics"] == evaluate_domain(jargon, fast, folder, "jargon", k=10, verify=True,
                                             general_beside=False)["metrics"]
    # a damaged general verifier costs only its row: eval of the domain goes on, and says why the row is missing
    current = jargon.root / "verifiers" / GENERAL_DOMAIN / "CURRENT"
    good = current.read_text()
    current.write_text("../../etc")
    try:
        ev4 = evaluate_domain(jargon, fast, folder, "jargon", k=10, verify=True)
    finally:
        current.write_text(good)
    assert ev4["metrics"] == ev3["metrics"] and "general_verifier" not in ev4["baselines"]
    assert ev4["verify"]["general"]["error"] and not ev4["verify"]["general"]["served"]
