"""The general verifier: trained by the train-verifier flow (--general) on a labelled set's judgments and on
self-supervised lists from every indexed domain's text, published as `verifiers/general-verifier/<version>`;
offered to every domain without a verifier of its own through the ranker choice (served only where it beats the
best untrained ranker on held-out self-supervised queries none of its training lists came from); `eval` says
which ranker or verifier served and why; a domain's adaptation from it is gated the same way."""

from __future__ import annotations

import shutil

import pytest

from sidestep.config import SAMPLES_DIR
from sidestep.flows.evaluate import evaluate_flow, train_verifier_flow
from sidestep.pipeline.adapt import ADAPTED, GENERAL, adapt_domain
from sidestep.pipeline.evaluate import evaluate_domain
from sidestep.pipeline.general import parse_labelled
from sidestep.storage.rankers import GENERAL_DOMAIN, load_choice, publish_choice
from sidestep.storage.verifiers import load_verifier, verifier_store

from ..conftest import write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def handbook(tmp_path):
    folder = tmp_path / "handbook"
    shutil.copytree(SAMPLES_DIR / "handbook", folder)
    lines = (folder / "qrels" / "test.tsv").read_text().splitlines()
    head, rows = lines[0], lines[1:]
    (folder / "qrels" / "train.tsv").write_text("\n".join([head, *[r for r in rows if int(r.split()[0][1:]) <= 16]])
                                                + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join([head, *[r for r in rows if int(r.split()[0][1:]) > 16]])
                                               + "\n")
    return folder


def test_general_verifier_trains_publishes_and_is_offered_through_the_gate(data_root, handbook, tmp_path):
    fast = write_config(tmp_path / "fast.toml", "[verify]\nepochs = 2\nnear_misses = 1\nranker_queries = 20\n")
    assert parse_labelled(f"{handbook}=hb").split == "train"
    res = train_verifier_flow(dataset_dir=None, domain=None, general=True, labelled=[f"{handbook}=hb"],
                              per_domain=24, config_path=str(tmp_path / "fast.toml"))
    g = load_verifier(data_root, GENERAL_DOMAIN)
    assert g is not None and g.version == res["version"] and g.manifest["general"]
    lab, = g.manifest["sources"]["labelled"]
    assert lab["domain"] == "hb" and lab["split"] == "train" and lab["lists"] > 0
    ss = g.manifest["sources"]["self_supervised"]["hb"]
    assert ss["lists"] > 0 and ss["kinds"]["title"] > 0  # the handbook's titles, no label read
    trained = set(g.manifest["self_supervised_positives"]["hb"])
    assert trained and verifier_store(data_root).current("hb") is None  # no verifier of its own
    # the ranker choice was made again, with the general verifier offered, on queries it never trained on
    choice = load_choice(data_root, "hb")
    assert res["rankers"]["hb"] == choice["ranker"] and choice["learned_offered"] == {GENERAL: g.version}
    assert GENERAL in choice["ndcg10"] and choice["queries"] > 0
    assert choice["ranker"] != GENERAL or choice["ndcg10"][GENERAL] > max(
        choice["ndcg10"][k] for k in ("pooled_cosine", "maxsim", "fusion"))
    ev = evaluate_flow(dataset_dir=str(handbook), domain="hb", k=20, train_verifier=False,
                       config_path=str(tmp_path / "fast.toml"))
    assert ev["verify"]["ranker_choice"]["ranker"] == choice["ranker"]
    assert "no verifier of its own for domain 'hb'" in ev["verify"]["reason"]
    # where the general verifier is the choice, eval applies it and says so
    publish_choice(data_root, "hb", "v-test-general", {**choice, "ranker": GENERAL,
                                                       "verifier": {"domain": GENERAL_DOMAIN, "version": g.version}},
                   keep=5)
    ev = evaluate_domain(data_root, fast, str(handbook), "hb", k=20, verify=True)  # no reindex: the choice stays
    assert ev["verify"]["applied"] and ev["verify"]["verifier_kind"] == "general"
    assert ev["verify"]["verifier_domain"] == GENERAL_DOMAIN and f"{GENERAL} serves" in ev["verify"]["reason"]
    # adaptation: fine-tuned from the general verifier on hb's own lists, published only past the gate
    out = adapt_domain(data_root, fast, "hb", per_domain=24, epochs=1, log=lambda *_: None)
    assert {GENERAL, ADAPTED, "maxsim", "pooled_cosine", "fusion"} == set(out["gate"]["ndcg10"])
    assert out["published"] == (out["winner"] == ADAPTED and out["margin"] > 0)
    assert ("published" if out["published"] else "nothing published") in out["reason"]
    if out["published"]:
        assert load_verifier(data_root, "hb").manifest["adapted_from"]["version"] == g.version
    # leave-one-corpus-out: hb's judgments are not read
    loco = train_verifier_flow(dataset_dir=None, domain=None, general=True, labelled=[f"{handbook}=hb"],
                               leave_out="hb", per_domain=24, config_path=str(tmp_path / "fast.toml"))
    assert loco["sources"]["labelled"] == [] and loco["leave_out"] == "hb"
