"""`train-verifier --self-supervised`: a domain with no BEIR folder and no judgments gets a verifier from its
own titled documents, published only past the held-out gate, and the result carries the gate's figures."""

from __future__ import annotations

import json

import pytest

import sidestep.eval.beir
import sidestep.pipeline.selfsup as selfsup
import sidestep.pipeline.verifier
from sidestep.config import SAMPLES_DIR, SourceConfig
from sidestep.flows.evaluate import train_verifier_flow
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.pipeline.summarize import summarize_domain
from sidestep.storage.verifiers import load_verifier, verifier_store
from sidestep.verify.gate import GateResult

from ..conftest import write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _index(root, settings, tmp_path, domain: str, docs: list[dict]) -> None:
    """DOMAIN from a JSONL file of its own (no BEIR folder, no queries, no qrels anywhere), without Prefect."""
    path = tmp_path / f"{domain}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    ingest_source(root, SourceConfig(domain=domain, path=str(path), format="jsonl"),
                  max_text_bytes=settings.ingest.max_text_bytes)
    embed_domain(root, settings, domain, show_progress=False)
    summarize_domain(root, settings, domain)
    assert publish_domain(root, settings, domain).published


@pytest.fixture
def no_judgments(monkeypatch):
    """Any read of queries or qrels fails the test."""
    def refuse(*a, **k):
        raise AssertionError("self-supervised training read judgments")
    for mod in (sidestep.eval.beir, sidestep.pipeline.verifier):
        monkeypatch.setattr(mod, "load_qrels", refuse)
        monkeypatch.setattr(mod, "load_queries", refuse)


@pytest.fixture
def fast(tmp_path):
    path = tmp_path / "fast.toml"
    write_config(path, "[verify]\nepochs = 4\nadapter_epochs = 2\nnear_misses = 1\n")
    return path


def test_self_supervised_verifier_reads_no_judgments_and_publishes_only_past_its_gate(
        data_root, settings, encoder, tmp_path, fast, no_judgments, monkeypatch):
    handbook = [json.loads(x) for x in (SAMPLES_DIR / "handbook" / "corpus.jsonl").read_text().splitlines()]
    docs = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in handbook
            if len(d["title"].split()) >= 3][:24]
    _index(data_root, settings, tmp_path, "notes", docs)

    # the gate as it is, through the flow with no DATASET_DIR
    res = train_verifier_flow(dataset_dir=None, domain="notes", self_supervised=True, config_path=str(fast))
    assert res["self_supervised"] and res["titled_documents"] == 24
    assert (res["train_lists"], res["val_queries"], res["gate_queries"]) == (res["train_lists"], 5, 5)
    assert 0 < res["train_lists"] <= 14 and res["near_miss_pairs"] > 0
    g = res["gate"]
    assert set(g["ndcg10"]) == {"verifier", "maxsim", "pooled_cosine"} and g["queries"] == 5
    assert set(res["recall_lists_only"]["ndcg10"]) == set(g["ndcg10"])
    assert res["published"] == g["passed"] == (g["ndcg10"]["verifier"] > max(g["ndcg10"]["maxsim"],
                                                                            g["ndcg10"]["pooled_cosine"]))
    assert res["reason"] == g["reason"]
    line = selfsup.summary_line(res)
    assert f"trained on {res['train_lists']} lists" in line and f"{g['ndcg10']['maxsim']:.4f}" in line
    _check_outcome(data_root, res, None, docs)

    # the other outcome of the gate, forced over the figures of a second run: both paths are taken
    passed = not res["published"]
    real_gate = selfsup.gate

    def forced(*lists):
        real = real_gate(*lists)
        return GateResult(real.ndcg10, real.queries, passed, "verifier" if passed else "maxsim", real.margin, "forced")

    monkeypatch.setattr(selfsup, "gate", forced)
    before = verifier_store(data_root).current("notes")
    out = selfsup.train_verifier_self_supervised(data_root, write_config(fast, fast.read_text()), "notes", seed=1)
    assert out["gate"]["passed"] is passed and out["reason"] == "forced"
    _check_outcome(data_root, out, before, docs)


def _check_outcome(root, out: dict, before: str | None, docs: list[dict]) -> None:
    """Past the gate: a new current version whose manifest carries the figures; refused: nothing changed."""
    assert out["published"] is out["gate"]["passed"]
    if out["published"]:
        assert verifier_store(root).current("notes") == out["version"] != before
        loaded = load_verifier(root, "notes")
        assert loaded.manifest["self_supervised"] and loaded.manifest["gate"] == out["gate"]
        assert loaded.manifest["train_queries"] == 0 and loaded.manifest["train_lists"] == out["train_lists"]
        assert set(loaded.manifest["held_out_documents"]) <= {d["id"] for d in docs}
    else:
        assert out["version"] is None and verifier_store(root).current("notes") == before


def test_too_few_titled_documents_is_a_clear_message_and_nothing_published(data_root, settings, encoder, tmp_path,
                                                                           no_judgments):
    docs = [{"id": f"n{i}", "title": f"Field note number {i}", "text": f"Seen at the weir on day {i}."}
            for i in range(5)]
    _index(data_root, settings, tmp_path, "few", docs)
    res = selfsup.train_verifier_self_supervised(data_root, settings, "few")
    assert not res["published"] and res["version"] is None and "gate" not in res
    assert res["reason"].startswith("only 5 of 5 documents of 'few' have a title") and "at least 20" in res["reason"]
    assert verifier_store(data_root).current("few") is None
