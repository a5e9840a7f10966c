"""The command line: --help everywhere, --json on stdout, clear errors with non-zero exits."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidestep.cli import app

runner = CliRunner()
COMMANDS = ["ingest", "index", "reindex", "serve", "search", "eval", "export", "compare", "train-verifier",
            "eval-longdoc", "eval-rec", "pretrain", "lab", "report", "rollback", "gc", "deploy", "status", "demo",
            "eval-negation"]
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output and len(r.output.splitlines()) > 4


def test_the_installed_entry_point_runs():
    exe = VENV_BIN / "sidestep"
    if not exe.exists():
        pytest.skip("sidestep is not installed in .venv")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


def test_asking_for_help_writes_nothing(tmp_path):
    """`sidestep CMD --help` in a folder of the user's own leaves no data root (./var) behind."""
    exe = VENV_BIN / "sidestep"
    if not exe.exists():
        pytest.skip("sidestep is not installed in .venv")
    env = {k: x for k, x in os.environ.items() if k not in ("SIDESTEP_HOME", "PREFECT_HOME")}
    for args in (["--help"], ["compare", "--help"], ["--home", "data", "status", "--help"]):
        r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert r.returncode == 0 and "Usage" in r.stdout, r.stderr
    assert list(tmp_path.iterdir()) == []
    r = subprocess.run([str(exe), "--home", "data", "status", "--json"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data").is_dir()  # a command that runs still makes its data root


def test_train_verifier_needs_a_folder_unless_self_supervised_and_demo_can_keep_serving():
    r = runner.invoke(app, ["train-verifier", "--domain", "notes", "--json"])
    assert r.exit_code == 2 and "unless --self-supervised" in json.loads(r.stdout)["error"]
    assert "--self-supervised" in runner.invoke(app, ["train-verifier", "--help"]).output
    assert "--keep-serving" in runner.invoke(app, ["demo", "--help"]).output


def test_demo_with_a_config_of_other_sources_says_so_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDESTEP_HOME", str(tmp_path / "root"))
    (tmp_path / "s.toml").write_text(f'[[sources]]\ndomain = "bees"\npath = "{tmp_path / "b.jsonl"}"\n'
                                     'format = "jsonl"\n')
    (tmp_path / "empty.toml").write_text("[verify]\nranker_queries = 0\n")
    for cfg, named in (("s.toml", "(bees)"), ("empty.toml", "(none)")):
        r = runner.invoke(app, ["--config", str(tmp_path / cfg), "demo"])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert f"this config's sources {named} do not include its domains (" in text and "handbook" in text
        assert "SIDESTEP_CONFIG" in text
    assert not (tmp_path / "root" / "indexes").exists()  # nothing was indexed


@pytest.mark.slow
def test_log_json_writes_one_json_object_per_line_with_run_ids(data_root, tmp_path):
    exe = VENV_BIN / "sidestep"
    if not exe.exists():
        pytest.skip("sidestep is not installed in .venv")
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "Herons wait by the weir at dawn."}\n')
    (tmp_path / "s.toml").write_text(f'[[sources]]\ndomain = "tiny"\npath = "{tmp_path / "c.jsonl"}"\n'
                                     'format = "jsonl"\n[maps]\nenabled = false\n')
    r = subprocess.run([str(exe), "--log-json", "--config", str(tmp_path / "s.toml"), "reindex", "--json",
                        "--nice", "7"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"})
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert records and len(records) == len([x for x in r.stderr.splitlines() if x.strip()])  # nothing else
    runs = {x["flow_run_id"] for x in records if x.get("flow_run_id")}
    assert len(runs) == 1 and any(x.get("task_run_id") for x in records)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["published"][0]["domain"] == "tiny"
    # the batch job ran below serving: at --nice 7 unless the caller was nicer already
    assert summary["priority"]["niceness"] == max(7, os.getpriority(os.PRIO_PROCESS, 0))


def test_ingest_of_a_missing_path_is_a_clear_json_error_and_writes_nothing(data_root):
    r = runner.invoke(app, ["ingest", str(data_root.root / "missing.jsonl"), "--domain", "x", "--json"])
    assert r.exit_code == 2
    assert "source not found" in json.loads(r.stdout)["error"]
    assert not (data_root.root / "documents").exists()


def test_ingest_refuses_a_domain_name_that_would_escape_the_root(data_root, tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"id": "1", "text": "hello"}\n')
    r = runner.invoke(app, ["ingest", str(f), "--domain", "../../etc", "--json"])
    assert r.exit_code == 2 and "invalid domain name" in json.loads(r.stdout)["error"]


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_then_status_and_search_as_json(data_root, tmp_path, encoder):
    f = tmp_path / "notes.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"n{i}", "text": t}) for i, t in enumerate(
        ["Kestrels hover over roadside verges.", "Oak leaves turn brown in autumn.", "not json"])) + "\nnot json\n")
    r = runner.invoke(app, ["ingest", str(f), "--domain", "notes", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["read"], res["new"], res["quarantined"]) == (4, 3, 1)
    r = runner.invoke(app, ["reindex", "--skip-ingest", "--json", "--domain", "notes"])
    assert r.exit_code == 0, r.output  # no config names "notes": the data root knows it from the ingest
    assert json.loads(r.stdout)["encoded"] == 3  # ingest stores documents; reindex embeds them
    cfg = tmp_path / "c.toml"  # a config naming the same source adds nothing and conflicts with nothing
    cfg.write_text(f'default_domain = "notes"\n[[sources]]\ndomain = "notes"\npath = "{f}"\nformat = "jsonl"\n')
    r = runner.invoke(app, ["--config", str(cfg), "reindex", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["encoded"] == 0 and json.loads(r.stdout)["published"] == []
    r = runner.invoke(app, ["--config", str(cfg), "search", "small falcon hovering", "--json", "--k", "2"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits["results"][0]["doc_id"] == "n0" and hits["index_version"].startswith("v")
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json"])
    st = json.loads(r.stdout)["domains"]["notes"]
    assert st["serving_version"] == hits["index_version"] and st["documents"] == 3 and st["quarantined"] == 1
    # read by a person in an 80-column terminal: every field and the whole version, not columns cut to "doma…"
    from sidestep.cli.common import out

    assert out.width < 160
    r = runner.invoke(app, ["--config", str(cfg), "status"])
    assert r.exit_code == 0, r.output
    assert hits["index_version"] in r.stdout and "…" not in r.stdout
    assert all(f in r.stdout for f in ("serving_version", "documents", "quarantined", "verifier_version", "ranker"))


@pytest.mark.slow
def test_lab_planted_prints_every_estimators_bias_and_variance(data_root):
    from sidestep.lab import ESTIMATORS

    r = runner.invoke(app, ["lab", "planted", "--budget-seconds", "5", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res["estimators"]) == set(ESTIMATORS)
    for name, row in res["estimators"].items():
        assert row["bias"] >= 0 and row["variance"] >= 0, name
    assert res["estimators"]["reinforce"]["targets_exact_gradient"] is True


def test_lab_retrieval_needs_its_datasets_named_before_any_work():
    r = runner.invoke(app, ["lab", "retrieval", "--json"])
    assert r.exit_code != 0 and "--dataset" in r.output
    r = runner.invoke(app, ["lab", "retrieval", "--dataset", "scifact", "--json"])
    assert r.exit_code != 0 and "KEY=VALUE" in r.output
