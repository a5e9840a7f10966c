"""`sidestep eval-negation`: pairs from any text, every baseline and every published verifier scored in
one run, figures in DuckDB."""

from __future__ import annotations

import json

import duckdb
import pytest
import torch
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.pipeline.negation import read_passages

runner = CliRunner()
TEXTS = [
    "The new vaccine is effective against the seasonal strain of influenza in older adults.",
    "Patients treated with aspirin had fewer heart attacks during the first year of the study.",
    "The bridge was closed to traffic because the river flooded the lower town last spring.",
    "Seedlings grow faster with extra light in the greenhouse during the cold winter months.",
    "The committee was able to approve the budget before the end of the fiscal year.",
    "Children who read every day are more likely to enjoy school than those who do not.",
]


def test_read_passages_from_beir_jsonl_and_leval(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        json.dumps({"_id": "a", "title": "", "text": TEXTS[0] + " A line\u2028separator stays inside the text."})
        + "\n" + json.dumps({"_id": "b", "text": "too short"}) + "\n")
    got = read_passages(beir)
    assert [p[0] for p in got] == ["a"] and "\u2028" in got[0][1]  # short passages are skipped
    lev = tmp_path / "l.jsonl"
    lev.write_text(json.dumps({"input": TEXTS[1] + "\n\n" + TEXTS[2] + "\nshort", "instructions": [],
                               "outputs": []}) + "\n")
    assert [p[1] for p in read_passages(lev)] == TEXTS[1:3]  # an L-Eval document's paragraphs
    with pytest.raises(FileNotFoundError):
        read_passages(tmp_path / "missing")


@pytest.mark.slow
def test_eval_negation_scores_baselines_and_any_published_verifier(tmp_path, data_root, settings):
    from sidestep.storage.verifiers import publish_verifier
    from sidestep.verify.model import Verifier, VerifierConfig

    torch.manual_seed(0)
    publish_verifier(data_root, "toy", "v1", Verifier(VerifierConfig(), 384), {"note": "untrained"}, keep=2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    r = runner.invoke(app, ["eval-negation", str(corpus), "--pairs", "4", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["pairs"] == 4 and res["random_level"] == 0.25
    assert set(res["rankers"]) == {"random", "dense", "maxsim", "bm25", "verifier:toy/v1"}
    assert res["verifiers"] == [{"domain": "toy", "version": "v1"}]
    for s in res["rankers"].values():
        assert 0.0 <= s["pairwise_accuracy"] <= 1.0 and s["pairs"] == 4
    con = duckdb.connect(str(data_root.eval_db()), read_only=True)
    n = con.execute("SELECT count(*) FROM negation_metrics WHERE run_id = ? AND metric LIKE 'rankers.%'",
                    [res["run_id"]]).fetchone()[0]
    assert n >= 5 * 5
    # naming a verifier that is not published is a clear error
    r = runner.invoke(app, ["eval-negation", str(corpus), "--pairs", "2", "--verifier", "nope", "--json"])
    assert r.exit_code != 0 and "no verifier is published" in r.stdout
