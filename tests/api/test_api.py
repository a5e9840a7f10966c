"""The public Python API: the README's example runs as written, `import sidestep` stays light, and the
HTTP client speaks the server's contract (token, typed results, a 4xx as a clear exception)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import sidestep

REPO = Path(__file__).resolve().parents[2]


def _readme_block(section: str) -> str:
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_importing_sidestep_loads_neither_prefect_ray_torch_nor_matplotlib():
    code = ("import sidestep, sys; "
            "print(sorted(m for m in ('prefect', 'ray', 'torch', 'httpx', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert {"open", "Client", "Engine", "Hit", "IngestReport", "ReindexReport"} <= set(sidestep.__all__)
    assert all(hasattr(sidestep, n) for n in sidestep.__all__)


@pytest.mark.slow
@pytest.mark.integration
def test_the_readme_python_example_runs(tmp_path, monkeypatch, encoder, capsys):
    """The README's example, as written, against a fresh data root (./var in a temporary folder)."""
    monkeypatch.chdir(tmp_path)
    rows = [{"id": "n1", "title": "Bike chain care", "text": "Clean the chain with a degreaser, dry it, then apply "
             "one drop of lubricant per roller and wipe off the excess."},
            {"id": "n2", "title": "Sourdough starter", "text": "Feed the starter twice a day with equal weights "
             "of flour and water."},
            {"id": "n3", "title": "A record without text"}]  # quarantined, not fatal
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ns: dict = {}
    exec(compile(_readme_block("Python API"), "README.md", "exec"), ns)  # noqa: S102
    assert isinstance(ns["eng"], sidestep.Engine)
    assert ns["eng"].root.root == (tmp_path / "var").resolve()
    ingested = ns["ingested"]
    assert isinstance(ingested, sidestep.IngestReport)
    assert (ingested.new, ingested.quarantined) == (2, 1)
    built = ns["built"]
    assert isinstance(built, sidestep.ReindexReport)
    assert built.encoded == 2 and not built.failed
    assert [p["domain"] for p in built.published] == ["notes"] and built.as_dict()["domains"].keys() == {"notes"}
    hits = ns["hits"]
    assert len(hits) == 2 and all(isinstance(h, sidestep.Hit) for h in hits)
    assert hits[0].doc_id == "n1"
    assert hits.index_version == ns["eng"].status().domains["notes"]["serving_version"]
    recs = ns["recs"]
    assert len(recs) == 3 and all(isinstance(r, sidestep.RecommendedItem) for r in recs)
    assert recs.unknown_items == []
    printed = capsys.readouterr().out
    assert hits.index_version in printed


class _FakeServer(BaseHTTPRequestHandler):
    """Answers as serving/app.py does: bearer token on /search and /recommend (401), 404 for an unknown
    domain with FastAPI's {"detail": ...}, /healthz open."""

    token = "s3cret"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"status": "ok", "domains": {"notes": "v1"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.headers.get("authorization") != f"Bearer {self.token}":
            return self._send(401, {"detail": "missing or wrong bearer token"})
        if body.get("domain") != "notes":
            return self._send(404, {"detail": f"unknown domain {body.get('domain')!r}; published domains: ['notes']"})
        if self.path == "/search":
            return self._send(200, {"index_version": "v1", "domain": "notes", "mode": body["mode"],
                                    "results": [{"doc_id": "a", "score": 0.9, "recall_score": 0.8, "title": "A",
                                                 "snippet": "a", "chunk": 0}][: body["k"]],
                                    "verify": {"requested": body["verify"], "applied": False},
                                    "timings_ms": {"total": 1.0}})
        return self._send(200, {"index_version": "t1", "domain": "notes", "unknown_items": ["zz"],
                                "items": [{"item_id": "i2", "score": 3.5}], "timings_ms": {"total": 1.0}})


@pytest.fixture
def fake_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_the_client_sends_the_token_and_returns_typed_results(fake_server, monkeypatch):
    monkeypatch.setenv("SIDESTEP_API_TOKEN", "s3cret")  # taken from the environment when not given
    with sidestep.Client(fake_server) as client:
        hits = client.search("query", domain="notes", k=5)
        assert hits == [sidestep.Hit("a", 0.9, 0.8, "A", "a", 0)]
        assert (hits.index_version, hits.verify["requested"]) == ("v1", True)
        recs = client.recommend(["i1", "zz"], domain="notes", k=2)
        assert recs == [sidestep.RecommendedItem("i2", 3.5)] and recs.unknown_items == ["zz"]
        assert client.healthz()["domains"] == {"notes": "v1"}


def test_a_refused_request_is_a_clear_exception(fake_server, monkeypatch):
    monkeypatch.delenv("SIDESTEP_API_TOKEN", raising=False)
    with pytest.raises(sidestep.APIError, match="401: missing or wrong bearer token") as e:
        sidestep.Client(fake_server).search("query", domain="notes")
    assert e.value.status == 401
    with pytest.raises(sidestep.APIError, match="404: unknown domain 'other'") as e:
        sidestep.Client(fake_server, token="s3cret").recommend(["i1"], domain="other")
    assert e.value.status == 404
