"""Recommendation stages end to end: real Prefect flows, faiss codebooks, Parquet, DuckDB, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.config import SAMPLES_DIR
from sidestep.pipeline.rec import load_items
from sidestep.storage.paths import SHARED
from sidestep.storage.recstore import codebook_store, load_codebook, load_table_version, table_store
from sidestep.storage.warehouse import Warehouse
from sidestep.tasks.common import settings_from

from ..conftest import write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["notebook", "stapler", "pen", "lamp", "chair", "folder", "marker", "ruler"]


def write_unisrec(folder, n_items: int = 48, users: int = 90, length: int = 7, seed: int = 0) -> None:
    """A small UniSRec folder (RecBole-processed): users walk a cycle of items, so that a sequence model has
    something to learn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "Toy.text", "w") as f:
        f.write("item_id:token\ttext:token_seq\n")
        for i in range(n_items):
            f.write(f"A{i:04d}\t{COLORS[i % 8]} {THINGS[(i // 8) % 8]} model {i}, office supplies\n")
    with open(folder / "Toy.item2index", "w") as f:
        f.writelines(f"A{i:04d}\t{i}\n" for i in range(n_items))
    seqs = []
    for _ in range(users):
        start = int(rng.integers(n_items))
        seqs.append([(start + t) % n_items for t in range(length)])
    for split, cut in (("train", None), ("valid", -2), ("test", -1)):
        with open(folder / f"Toy.{split}.inter", "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            for u, s in enumerate(seqs):
                if cut is None:
                    for t in range(1, len(s) - 2):
                        f.write(f"{u}\t{' '.join(map(str, s[:t]))}\t{s[t]}\n")
                else:
                    t = len(s) + cut
                    f.write(f"{u}\t{' '.join(map(str, s[:t]))}\t{s[t]}\n")


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_nightly_flow_fits_codebooks_and_publishes_tables_for_domains_with_interactions(sample):
    s = sample.summary
    assert s["codebook"]["refit"] is True and s["tables"]["shop"]["published"]
    version, book = load_codebook(sample.root)
    assert version == s["codebook"]["version"]
    tv = load_table_version(sample.root, "shop")
    assert tv.version == s["tables"]["shop"]["version"] and len(tv.item_ids) == 40
    assert tv.model_state["codebook_version"] == version
    items = load_items(sample.root, settings_from(None), "shop")
    assert tv.item_ids == items.ids
    assert np.array_equal(tv.codes, book.encode(items.vectors).astype(np.int64))
    # the item index holds code vectors, text vectors and the prior; the fusion weights came from the valid grid
    assert tv.items_index.d == tv.model_state["config"]["hidden"] + items.vectors.shape[1] + 1
    rec = settings_from(None).rec
    for key, grid in (("weight", rec.text_weights), ("popularity", rec.popularity_weights)):
        assert tv.manifest["text_fusion"][key] == tv.model_state["text_fusion"][key]
        assert tv.manifest["text_fusion"][key] in grid
    manifest = codebook_store(sample.root).manifest(SHARED, version)
    assert manifest["diagnostics"]["shop"]["items"] == 40
    with Warehouse(sample.root.eval_db(), read_only=True) as wh:
        rows = wh.query("SELECT metric, value FROM codebook_diagnostics WHERE codebook_version = ?",
                        [version]).to_pylist()
    assert {"entropy_bits_mean", "dead_codewords", "colliding_items", "quant_error"} <= {r["metric"] for r in rows}


def _shop(tmp_path, rec: str = ""):
    """A copy of the sample shop the test may edit, its config, and its first reindex's summary. The first
    training is short (what these tests check is what a second reindex does with its result); `rec` adds
    lines to the config's [rec] table."""
    shop = tmp_path / "shop"
    shutil.copytree(SAMPLES_DIR / "shop", shop)
    cfg = tmp_path / "sidestep.toml"
    write_config(cfg, f'[rec]\nepochs = 8\n{rec}\n[[sources]]\ndomain = "shop"\npath = "{shop}"\nformat = "lcrec"\n')
    return shop, cfg, _json(runner.invoke(app, ["--config", str(cfg), "reindex", "--json"]))


def test_a_new_item_gets_codes_from_the_existing_codebook_and_is_recommendable_without_training(data_root, tmp_path):
    shop, cfg, first = _shop(tmp_path)
    old = load_table_version(data_root, "shop")
    items = json.loads((shop / "shop.item.json").read_text())
    items["new-1"] = {"title": "Tern fountain pen, broad nib", "description": "A broad nib version of the Tern pen.",
                      "brand": "Larkspur", "categories": "Office Products, Writing Supplies, Fountain Pens"}
    (shop / "shop.item.json").write_text(json.dumps(items))
    second = _json(runner.invoke(app, ["--config", str(cfg), "reindex", "--json"]))
    assert second["codebook"]["refit"] is False and second["codebook"]["version"] == first["codebook"]["version"]
    t = second["tables"]["shop"]
    assert t["published"] and t["trained"] is False and t["new_items"] == 1
    new = load_table_version(data_root, "shop")
    assert "new-1" in new.item_ids and new.items_index.ntotal == 41
    for part in ("encoder", "table"):  # the model is bit-identical: only codes and the item index changed
        for k, v in old.model_state[part].items():
            assert torch.equal(v, new.model_state[part][k]), k
    from sidestep.serving.recommend import RecommendService

    svc = RecommendService(settings_from(str(cfg)), data_root)
    res = svc.recommend(["1", "5"], k=41, domain="shop")
    assert "new-1" in [i["item_id"] for i in res["items"]] and res["index_version"] == new.version
    # served scores are the model's fused logits (codes cosine / T + weight x text cosine + popularity x
    # log(1 + training count)), computed apart; the new item has no interactions, so no prior
    from sidestep.pipeline.rec import domain_data
    from sidestep.rec.data import popularity
    from sidestep.rec.tables import TextFusion, item_prior, model_from_state, text_user_vectors, unit_text

    model = model_from_state(new.model_state, "shop")
    fusion = model.fusion["shop"]
    model.fusion["shop"] = TextFusion(weight=3.0, decay=fusion.decay, popularity=0.8)  # non-zero either way
    prior = item_prior(popularity(domain_data(data_root, settings_from(str(cfg)), "shop")[1]))
    assert float(prior[new.item_index["new-1"] - 1]) == 0.0 and float(prior.max()) > 0
    svc.get("shop").model.fusion["shop"] = model.fusion["shop"]
    res = svc.recommend(["1", "5"], k=41, domain="shop")
    vectors = load_items(data_root, settings_from(str(cfg)), "shop").vectors
    hist = torch.tensor([[new.item_index["1"], new.item_index["5"]]])
    with torch.no_grad():
        items_m = model.tables["shop"].item_matrix(torch.from_numpy(new.codes))
        user = model.user_vectors("shop", items_m, hist, torch.tensor([2]))
        text = unit_text(vectors)
        # the history's items get the learned repeat bias, as evaluation scores them
        want = model.scores(user, items_m, hist) + 3.0 * \
            text_user_vectors(text, hist, torch.tensor([2]), fusion.decay) @ text[1:].T + 0.8 * prior
    served = {i["item_id"]: i["score"] for i in res["items"]}
    assert served == pytest.approx({new.item_ids[j]: float(want[0, j]) for j in range(41)}, abs=1e-3)
    top3 = svc.recommend(["1", "5"], k=3, domain="shop")["items"]  # a short list is the head of the long one
    assert [i["item_id"] for i in top3] == [i["item_id"] for i in res["items"][:3]]

    third = _json(runner.invoke(app, ["--config", str(cfg), "reindex", "--json"]))
    assert third["tables"]["shop"]["published"] is False  # unchanged items: nothing to publish

    # tables published before text fusion (code vectors only, no fusion in the state) still serve, same scale
    from sidestep.rec.tables import item_vectors
    from sidestep.storage.recstore import codes_table, table_store, write_table_files

    state = {k: v for k, v in new.model_state.items() if k != "text_fusion"}
    store = table_store(data_root)
    with store.lock("shop"), store.staging("shop") as staged:
        write_table_files(staged, codes_table(new.item_ids, new.hashes, new.codes), state,
                          item_vectors(model, "shop", new.codes))
        store.publish("shop", staged, "v20000101-000000000-0ld", {"mode": "scratch"})
    svc.refresh()
    assert svc.get("shop").text is None
    old_style = svc.recommend(["1", "5"], k=41, domain="shop")
    assert old_style["index_version"] == "v20000101-000000000-0ld"
    with torch.no_grad():
        codes_only = model.scores(user, items_m, hist)
    assert {i["item_id"]: i["score"] for i in old_style["items"]} == pytest.approx(
        {new.item_ids[j]: float(codes_only[0, j]) for j in range(41)}, abs=1e-3)

    # tables published with text fusion but before the prior (code and text parts, no popularity) serve too
    from sidestep.rec.tables import fused_item_vectors

    state = {**new.model_state, "text_fusion": {"weight": 3.0, "decay": fusion.decay}}
    with store.lock("shop"), store.staging("shop") as staged:
        write_table_files(staged, codes_table(new.item_ids, new.hashes, new.codes), state,
                          fused_item_vectors(model, "shop", new.codes, vectors, prior.numpy())[:, :-1])
        store.publish("shop", staged, "v20000102-000000000-0ld", {"mode": "scratch"})
    svc.refresh()
    assert svc.get("shop").text is not None and svc.get("shop").prior is False
    no_prior = svc.recommend(["1", "5"], k=41, domain="shop")
    assert {i["item_id"]: i["score"] for i in no_prior["items"]} == pytest.approx(
        {new.item_ids[j]: float(want[0, j] - 0.8 * prior[j]) for j in range(41)}, abs=1e-3)


def test_new_interactions_warm_start_the_serving_tables_for_a_few_epochs(data_root, tmp_path):
    shop, cfg, first = _shop(tmp_path, "warm_epochs = 2\n")
    assert first["tables"]["shop"]["mode"] == "scratch"
    old = load_table_version(data_root, "shop")
    inter = json.loads((shop / "shop.inter.json").read_text())
    inter["new-user"] = [0, 2, 6, 4, 39]
    (shop / "shop.inter.json").write_text(json.dumps(inter))
    second = _json(runner.invoke(app, ["--config", str(cfg), "reindex", "--json"]))
    t = second["tables"]["shop"]
    assert second["codebook"]["refit"] is False
    assert t["trained"] and t["mode"] == "warm" and t["epochs_run"] <= 2
    new = load_table_version(data_root, "shop")
    assert new.manifest["warm_from"] == old.version and new.version != old.version
    # it started from the serving weights: two epochs move them less than any fresh start is away
    from sidestep.pipeline.rec import seq_config
    from sidestep.rec.tables import SeqRec

    fresh = SeqRec(seq_config(settings_from(str(cfg))), old.model_state["positions"],
                   old.model_state["codewords"], ["shop"]).tables["shop"].state_dict()
    # the code embeddings start at random, so a fresh start is far away; the input norm starts at ones and
    # zeros whatever happens, and how far the first training moved it depends on its best epoch
    moved = (new.model_state["table"]["table"] - old.model_state["table"]["table"]).norm()
    assert 0 < moved < 0.1 * (fresh["table"] - old.model_state["table"]["table"]).norm()
    assert all((new.model_state["table"][k] != v).any() for k, v in old.model_state["table"].items()), \
        "warm training moved every part of the table"
    third = _json(runner.invoke(app, ["--config", str(cfg), "reindex", "--json"]))
    assert third["tables"]["shop"]["trained"] is False  # the same interactions again: no training


def test_eval_rec_reports_the_model_beside_its_controls_and_stores_every_variant(data_root, tmp_path):
    write_unisrec(tmp_path / "toy")
    body = _json(runner.invoke(app, ["eval-rec", str(tmp_path / "toy"), "--domain", "toy", "--epochs", "25",
                                     "--json"]))
    assert set(body["metrics"]) == {"recall@10", "ndcg@10", "recall@50", "ndcg@50"}
    assert {"popularity", "text_zero_shot", "shuffled_codes"} <= set(body["baselines"])
    assert body["counts"]["test_users"] == 90 and body["mode"] == "scratch"
    # the planted sequences are learnable: the model must beat popularity by far
    assert body["metrics"]["recall@10"] > body["baselines"]["popularity"]["recall@10"] + 0.2
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        rows = wh.query("SELECT variant, protocol, recall_10, ndcg_10, n_users FROM rec_metrics WHERE group_id = ?",
                        [body["run_group"]]).to_pylist()
    got = {(r["variant"], r["protocol"]): r for r in rows}
    assert got[("sidestep", "full")]["ndcg_10"] == pytest.approx(body["metrics"]["ndcg@10"])
    assert got[("shuffled_codes", "masked")]["recall_10"] == pytest.approx(
        body["baselines_masked"]["shuffled_codes"]["recall@10"])
    # every trained variant also with its codes alone
    assert got[("sidestep_codes_only", "full")]["ndcg_10"] == pytest.approx(body["metrics_codes_only"]["ndcg@10"])
    assert "shuffled_codes_codes_only" in body["baselines"]
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        wh_config = {r["variant"]: r["config"] for r in wh.query(
            "SELECT variant, config FROM rec_runs WHERE group_id = ? AND protocol = 'full'",
            [body["run_group"]]).to_pylist()}
    config = json.loads(wh_config["sidestep_codes_only"])
    assert config["text_fusion"]["weight"] == config["text_fusion"]["popularity"] == 0  # stored as scored
    assert json.loads(wh_config["sidestep"])["text_fusion"] == body["training"]["sidestep"]["text_fusion"]
    assert all(r["n_users"] == 90 for r in rows)
    assert table_store(data_root).current("toy") == body["table_version"]

    # table-only transfer to a second domain: the pre-trained encoder is bit-identical afterwards
    write_unisrec(tmp_path / "toy2", seed=1)
    pre = load_table_version(data_root, "toy")
    body2 = _json(runner.invoke(app, ["eval-rec", str(tmp_path / "toy2"), "--domain", "toy2", "--pretrained-from",
                                      "toy", "--epochs", "3", "--no-controls", "--json"]))
    assert body2["mode"] == "table-only" and "shuffled_codes" not in body2["baselines"]
    post = load_table_version(data_root, "toy2")
    for k, v in pre.model_state["encoder"].items():
        assert torch.equal(v, post.model_state["encoder"][k]), k
    assert body2["training"]["sidestep"]["trainable_parameters"] < body["training"]["sidestep"]["trainable_parameters"]


def test_eval_rec_ingests_and_trains_on_recbole_atomic_files(data_root):
    """RecBole's own layout (NAME.inter + NAME.item with typed headers), detected and split leave-one-out."""
    atomic = Path(__file__).resolve().parents[1] / "fixtures" / "recbole_atomic"
    body = _json(runner.invoke(app, ["eval-rec", str(atomic), "--domain", "atomic", "--epochs", "2",
                                     "--no-controls", "--json"]))
    assert set(body["metrics"]) == {"recall@10", "ndcg@10", "recall@50", "ndcg@50"}
    assert all(0.0 <= v <= 1.0 for v in body["metrics"].values())
    assert body["ingest"]["format"] == "recbole" and body["ingest"]["quarantined"] == 0
    assert body["counts"]["test_users"] == 30 and body["mode"] == "scratch"
    assert table_store(data_root).current("atomic") == body["table_version"]
    assert len(load_table_version(data_root, "atomic").item_ids) == 15


def test_mixed_domain_pretraining_publishes_every_domain_with_one_shared_encoder(data_root, tmp_path):
    for name, seed in (("pa", 2), ("pb", 3)):
        write_unisrec(tmp_path / name, n_items=32, users=50, seed=seed)
        _json(runner.invoke(app, ["ingest", str(tmp_path / name), "--domain", name, "--json"]))
    body = _json(runner.invoke(app, ["pretrain", "-d", "pa", "-d", "pb", "--epochs", "2", "--json"]))
    assert set(body["domains"]) == {"pa", "pb"} and body["epochs_run"] == 2
    a, b = load_table_version(data_root, "pa"), load_table_version(data_root, "pb")
    assert a.manifest["mode"] == "pretrain" and a.version == body["domains"]["pa"]["version"]
    for k, v in a.model_state["encoder"].items():
        assert torch.equal(v, b.model_state["encoder"][k]), k
    assert not torch.equal(a.model_state["table"]["table"], b.model_state["table"]["table"])


def test_eval_rec_refuses_bad_arguments_with_a_message(data_root, tmp_path):
    r = runner.invoke(app, ["eval-rec", str(tmp_path / "missing"), "--domain", "x", "--json"])
    assert r.exit_code == 2 and "not found" in json.loads(r.stdout)["error"]
    write_unisrec(tmp_path / "toy")
    r = runner.invoke(app, ["eval-rec", str(tmp_path / "toy"), "--domain", "x", "--mode", "table-only", "--json"])
    assert r.exit_code == 2 and "--pretrained-from" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["eval-rec", str(tmp_path / "toy"), "--domain", "x", "--pretrained-from", "nobody",
                            "--epochs", "1", "--json"])
    assert r.exit_code == 1 and "nobody" in json.loads(r.stdout.strip().splitlines()[-1])["error"]


def test_table_only_fine_tuning_has_its_own_schedule():
    from sidestep.config import Settings
    from sidestep.pipeline.rec import train_config

    s = Settings.model_validate({"rec": {"epochs": 30, "lr": 1e-3, "table_epochs": 5, "table_lr": 1e-2}})
    table, full, scratch = (train_config(s, m) for m in ("table-only", "full", "scratch"))
    assert (table.epochs, table.lr) == (5, 1e-2)
    assert (full.epochs, full.lr) == (scratch.epochs, scratch.lr) == (30, 1e-3)
    assert train_config(s, "table-only", epochs=3).epochs == 3  # an explicit --epochs still wins
