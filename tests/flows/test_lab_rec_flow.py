"""`sidestep lab rec` end to end on the tiny RecBole fixture: the CLI, the Prefect flow, the encoder, both arms,
the transfer, the controls and the rows in DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.lab.rec import ARMS, report_rows
from sidestep.storage.warehouse import Warehouse

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "recbole_atomic"


def test_lab_rec_runs_both_arms_and_the_transfer_and_stores_its_rows(data_root):
    res = CliRunner().invoke(app, ["lab", "rec", "--dataset", f"scientific={FIXTURE}", "--dataset",
                                   f"office={FIXTURE}", "--seeds", "2", "--users", "0", "--steps", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["task"] == "rec" and out["run_id"].startswith("lab-rec-") and set(out["estimators"]) == set(ARMS)
    assert out["config"]["bits"] < 6  # 16 items: fewer codewords than the default, the same in both arms
    for name in ("scientific", "office"):
        d = out["domains"][name]
        assert set(d["controls"]) == {"popularity", "text_only"}
        for arm in ARMS:
            assert d["arms"][arm]["steps_done"] == [4, 4]
            assert 0.0 <= d["arms"][arm]["recall@10_mean"] <= 1.0
        assert d["learned_minus_frozen"]["ndcg@10"]["seeds"] == 2
    assert set(out["transfer"]["settings"]) == {"transfer", "no_transfer", "zero_shot"}
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        runs = wh.query("SELECT task FROM lab_runs WHERE run_id = ?", [out["run_id"]]).to_pylist()
        n = wh.query("SELECT count(*) AS n FROM lab_results WHERE run_id = ?", [out["run_id"]]).to_pylist()[0]["n"]
    assert runs == [{"task": "rec"}] and n == len(report_rows(out)) > 0
    # the text vectors were cached in the data root: a second run does not encode again
    assert list(data_root.lab("rec", "office").glob("*.npy"))
