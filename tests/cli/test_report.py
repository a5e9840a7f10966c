"""`sidestep report`: one self-contained HTML page, opened in a real headless browser (Debian's chromium
driven by Playwright; nothing is downloaded, and every request that is not the page's own file is refused).

Outside CI a machine without the browser skips the browser tests with the reason; under CI=true it fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.eval.report import SECTIONS, latency_series

from .test_runs_cli import _beir

runner = CliRunner()
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TINY_LAB = {"draws": 20, "steps": 4, "curve_every": 2, "grid_k": [1, 2], "grid_temperature": [0.5],
            "grid_samples": [2]}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _json(args: list[str]) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def _no_browser(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"the report's browser test needs {reason} in CI (.ci/run installs chromium)")
    pytest.skip(f"no headless browser: {reason}")


def open_in_browser(page_path: Path) -> dict:
    """Load the page in headless chromium; what it logged, what failed, and each figure's rendered size."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        _no_browser(f"{CHROMIUM} (apt-get install chromium)")
    console, failed, requests = [], [], []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                   viewport={"width": 1100, "height": 900})
        try:
            # nothing leaves the machine: any request but the page's own file is refused (and so reported)
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                      else route.abort())
            page = ctx.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            figures = page.eval_on_selector_all(
                "svg, img", "els => els.map(e => { const r = e.getBoundingClientRect();"
                " return {tag: e.tagName.toLowerCase(), width: r.width, height: r.height,"
                " name: e.closest('figure') ? e.closest('figure').dataset.name : null}; })")
            notes = page.eval_on_selector_all(".note", "els => els.map(e => [e.closest('section').id, e.innerText,"
                                                       " e.getBoundingClientRect().height])")
        finally:
            ctx.close()
    return {"console": console, "failed": failed, "requests": requests, "figures": figures, "notes": notes}


def _check_page(path: Path) -> dict:
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), "the page refers to another place"
    assert "<script" not in text
    seen = open_in_browser(path)
    errors = [c for c in seen["console"] if c[0] in ("error", "pageerror")]
    assert errors == [] and seen["failed"] == [], (errors, seen["failed"])
    assert seen["requests"] == [path.as_uri()], seen["requests"]
    for f in seen["figures"]:
        assert f["width"] > 0 and f["height"] > 0, f
    assert all(h > 0 for _, _, h in seen["notes"]), seen["notes"]
    return seen


def test_report_has_help():
    r = runner.invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "--latency-json" in r.output


def test_latency_samples_are_found_where_a_benchmark_puts_them():
    bench = {"http_k10": {"p50_ms": 3.0, "latency_ms": [1, 2.5]}, "http_k100": {"latency_ms": []},
             "runs": [{"samples_ms": [4]}], "note": "x"}
    assert latency_series(bench) == {"http_k10": [1.0, 2.5], "runs.0": [4.0]}
    assert latency_series([3, 4]) == {"latency": [3.0, 4.0]}
    assert latency_series({"p50_ms": 3.0}) == {}


def test_an_empty_data_root_gives_a_note_in_every_section_and_a_clean_page(data_root, tmp_path):
    out = tmp_path / "empty.html"
    res = _json(["report", "--out", str(out), "--latency-json", str(tmp_path / "missing.json")])
    assert res["path"] == str(out.resolve()) and res["figures"] == []
    assert set(res["notes"]) == {key for key, *_ in SECTIONS}
    assert "missing.json" in res["notes"]["latency"][0]
    assert not data_root.eval_db().exists()  # reading never creates the warehouse
    seen = _check_page(out)
    assert seen["figures"] == []
    assert {section for section, _, _ in seen["notes"]} == set(res["notes"])
    assert all(text.startswith("No data") for _, text, _ in seen["notes"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_report_of_real_runs_draws_every_section_and_opens_cleanly(data_root, tmp_path, encoder):
    folder = _beir(tmp_path / "tiny")
    first = _json(["eval", str(folder), "--domain", "tiny", "--k", "10"])
    second = _json(["eval", str(folder), "--domain", "tiny", "--k", "10", "--no-verify"])
    shutil.copytree(FIXTURES / "unisrec_tiny", tmp_path / "rec")
    _json(["eval-rec", str(tmp_path / "rec"), "--domain", "toy", "--epochs", "3"])
    import sidestep

    eng = sidestep.open(data_root.root)
    eng.lab("planted", seeds=1, options=TINY_LAB)  # the command line has no options for a tiny grid
    bench = tmp_path / "last_run.json"
    bench.write_text(json.dumps({"http_k10": {"p50_ms": 31.0, "latency_ms": [30.0 + (i % 13) for i in range(120)]}}))

    out = tmp_path / "report.html"
    res = _json(["report", "--out", str(out), "--latency-json", str(bench)])
    want = {"eval-metrics-tiny", "query-deltas-tiny", "codebook-usage", "rec-metrics-toy", "lab-bias-variance",
            "lab-curves", "latency"}
    assert want <= set(res["figures"]), res
    assert any(f.startswith("rec-curve-toy-") for f in res["figures"]), res["figures"]
    if first["verify"]["applied"]:
        assert "verifier-curve-tiny" in res["figures"]
    assert set(res["notes"]) <= {"longdoc", "training"}, res["notes"]  # no eval-longdoc ran
    page = out.read_text()
    assert first["run_id"] in page and second["run_id"] in page  # the deltas name the two runs they compare
    seen = _check_page(out)
    drawn = [f for f in seen["figures"] if f["tag"] == "svg"]
    assert [f["name"] for f in drawn] == res["figures"]

    # one domain: the others' figures are left out; the Python API returns the same typed result
    only = eng.report(tmp_path / "tiny.html", domain="tiny")
    assert {"eval-metrics-tiny", "query-deltas-tiny"} <= set(only.figures)
    assert not any("toy" in f for f in only.figures) and "codebook" in only.notes
    assert Path(only.path).is_file()
