"""Recall -> verify end to end on a small BEIR folder: the train_verifier flow publishes a version,
`evaluate` runs the verifier with its baselines in one run, the in-process search path applies it,
and the compressed token store (the default) keeps its promises."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sidestep.config import SAMPLES_DIR
from sidestep.eval.beir import load_queries
from sidestep.flows.evaluate import evaluate_flow, train_verifier_flow
from sidestep.pipeline.verifier import training_lists
from sidestep.serving.core import SearchService
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.indexes import load_token_view
from sidestep.storage.verifiers import load_verifier, verifier_store
from sidestep.storage.warehouse import Warehouse

from ..conftest import write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def handbook(tmp_path):
    """The handbook sample split in two: its first 16 queries' judgments become the train split."""
    folder = tmp_path / "handbook"
    shutil.copytree(SAMPLES_DIR / "handbook", folder)
    lines = (folder / "qrels" / "test.tsv").read_text().splitlines()
    head, rows = lines[0], lines[1:]
    train = [r for r in rows if int(r.split()[0][1:]) <= 16]
    test = [r for r in rows if int(r.split()[0][1:]) > 16]
    (folder / "qrels" / "train.tsv").write_text("\n".join([head, *train]) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join([head, *test]) + "\n")
    return folder


@pytest.fixture
def fast(tmp_path) -> str:
    """A few epochs are plenty for 16 training queries, and one near-miss per positive (each is a whole
    document to encode) exercises their path."""
    write_config(tmp_path / "fast.toml", "[verify]\nepochs = 4\nadapter_epochs = 3\nnear_misses = 1\n")
    return str(tmp_path / "fast.toml")


def test_evaluate_trains_the_verifier_and_runs_every_baseline_beside_it(data_root, handbook, settings, fast):
    res = evaluate_flow(dataset_dir=str(handbook), domain="hb", k=20, config_path=fast)
    assert res["verify"]["applied"] and res["verify"]["candidates"] == settings.verify.candidates
    assert set(res["baselines"]) == {"pooled_cosine", "maxsim", "bm25", "rrf_bm25_dense"}
    for m in [res["metrics"], *res["baselines"].values()]:
        assert set(m) == {"ndcg@10", "mrr@10", "recall@100"} and 0 <= m["ndcg@10"] <= 1
    train = res["verifier_training"]
    assert train["train_queries"] > 0 and sum(train["near_misses"].values()) > 0
    assert res["cost"]["verify_over_maxsim"] > 0 and res["cost"]["token_store"] == "pq"  # the default
    assert res["cost"]["p50_verify_stage_ms"] > 0 and res["cost"]["p50_verify_over_maxsim"] > 0
    # a verifier version is published, its curve is in DuckDB, every configuration is a stored run
    v = verifier_store(data_root).current("hb")
    assert v == train["version"]
    loaded = load_verifier(data_root, "hb")
    assert loaded.manifest["index_version"] == res["index_version"]
    # the version names its held-out training queries (early stopping and verify_top are chosen on them)
    held = loaded.manifest["held_out_queries"]
    assert len(held) == len(set(held)) == loaded.manifest["val_queries"] > 0
    assert set(held) < set(load_queries(str(handbook), split="train"))
    # how many candidates the model reads was chosen on the held-out training queries, and eval used it
    assert loaded.manifest["verify_top"] == loaded.model.cfg.verify_top == res["verify"]["verify_top"]
    assert "0" in loaded.manifest["val_ndcg10_by_verify_top"]
    # the query adapter trained first, the identity competing; the served model carries the one kept
    ad = loaded.manifest["adapter"]
    assert ad["epochs_run"] == 3 and ad["curve"][0]["epoch"] == 0  # fast.toml's adapter_epochs
    assert ad["val_ndcg10"] >= ad["identity_val_ndcg10"]
    kept_identity = bool(torch.equal(loaded.model.adapter, torch.eye(loaded.model.dim)))
    assert kept_identity == (ad["best_epoch"] == 0) == (ad["distance_from_identity"] == 0)
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        curve = wh.query("SELECT count(*) AS n FROM verifier_curves WHERE verifier_version = ?", [v])
        assert curve["n"][0].as_py() >= 2
        ad_rows = wh.query("SELECT epoch, value FROM verifier_curves WHERE verifier_version = ? AND metric = "
                           "'adapter_val_ndcg10' ORDER BY epoch", [v])
        assert ad_rows["epoch"].to_pylist() == [c["epoch"] for c in ad["curve"]]
        assert ad_rows["value"].to_pylist() == pytest.approx([c["val_ndcg10"] for c in ad["curve"]])
        runs = wh.query("SELECT label FROM runs WHERE group_id = ? ORDER BY label", [res["run_group"]])
        assert sorted(runs["label"].to_pylist()) == sorted(["main", "pooled_cosine", "maxsim", "bm25",
                                                            "rrf_bm25_dense"])
    # recall only: the pooled-cosine baseline is exactly what the no-verify configuration returns
    plain = evaluate_flow(dataset_dir=str(handbook), domain="hb", k=20, verify=False, config_path=fast)
    assert not plain["verify"]["applied"]
    assert plain["metrics"] == pytest.approx(res["baselines"]["pooled_cosine"])
    # the served path applies the same verifier and reports each stage's time
    svc = SearchService(settings, data_root)
    out = svc.search("who gets paged for a sev2", k=5, domain="hb")
    assert out["verify"]["applied"] and out["verify"]["verifier_version"] == v
    top, n = loaded.model.cfg.verify_top, out["verify"]["candidates"]
    assert out["verify"]["verified"] == (min(top, n) if top else n)  # counted from the rows the model scored
    assert {"encode", "recall", "token_maps", "verify", "total"} <= set(out["timings_ms"])
    scores = [h["score"] for h in out["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    off = svc.search("who gets paged for a sev2", k=5, domain="hb", verify=False)
    assert not off["verify"]["applied"] and all(h["score"] == h["recall_score"] for h in off["results"])
    # served from the PQ store (the default), trained on the exact float16 maps (train_token_store's default)
    assert loaded.manifest["token_store"] == "float16"
    pq_view = load_token_view(data_root, settings, "hb", res["index_version"])
    f16 = load_token_view(data_root, settings.model_copy(update={"verify": settings.verify.model_copy(
        update={"token_store": "float16"})}), "hb", res["index_version"])
    assert pq_view.source.codec.d == 387 and pq_view.source.dim == 384  # 43 bytes: 43 sub-spaces of 9, padded
    assert pq_view.source.bytes_per_doc() < f16.source.bytes_per_doc() / 17  # 43 bytes vs 768 per token
    doc = f16.source.doc_ids()[0]
    a, b = pq_view.source.doc(doc), f16.source.doc(doc).astype(np.float32)
    assert a.shape == b.shape
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    assert float(np.mean(np.sum(a * b, axis=1))) > 0.6  # decoded vectors point where the originals do


def test_the_verifier_never_trains_on_test_queries(data_root, handbook, settings, fast):
    with pytest.raises(ValueError, match="never trains on test"):
        train_verifier_flow(dataset_dir=str(handbook), domain="hb", split="test", config_path=fast)
    assert IndexStore(data_root).current("hb") is None  # refused before anything was indexed
    with pytest.raises(ValueError, match="never trains on test"):  # the task refuses it too
        training_lists(data_root, settings, str(handbook), "hb", split="test")


def test_a_corrupt_verifier_version_is_refused_and_the_old_one_keeps_serving(data_root, handbook, settings, fast,
                                                                           tmp_path):
    first = train_verifier_flow(dataset_dir=str(handbook), domain="hb", config_path=fast)
    assert first["pseudo_lists"] == 0  # title pseudo-queries are off by default
    svc = SearchService(settings, data_root)
    assert svc.verifier.verifiers["hb"].version == first["version"]
    # the second version also trains on title pseudo-queries: the handbook's titles over its title-free texts
    pseudo = tmp_path / "pseudo.toml"
    write_config(pseudo, "[verify]\nepochs = 4\nadapter_epochs = 0\nnear_misses = 1\npseudo_docs = 60\n"
                         "pseudo_queries = 30\n")
    second = train_verifier_flow(dataset_dir=str(handbook), domain="hb", seed=1, config_path=str(pseudo))
    assert 0 < second["pseudo_lists"] <= 30 and second["train_queries"] == first["train_queries"]
    assert load_verifier(data_root, "hb").manifest["pseudo_lists"] == second["pseudo_lists"]
    store = verifier_store(data_root)
    model = store.path("hb", second["version"]) / "model.pt"
    model.write_bytes(model.read_bytes()[:-64] + b"\0" * 64)
    assert svc.verifier.refresh() == {}
    assert svc.verifier.verifiers["hb"].version == first["version"]
    assert "refused verifier hb/" in svc.verifier.errors["hb"]
    out = svc.search("who gets paged for a sev2", k=3, domain="hb")
    assert out["verify"]["verifier_version"] == first["version"]
