"""`sidestep serve` started over a data root an operator damaged: a badly named copy under indexes/, a
CURRENT holding an invalid name, a CURRENT pointing at a damaged version, a domain whose only version is
damaged. One bad entry costs only its own domain; a fresh replica falls back to the newest verified
version from disk and says so; /healthz names every problem and is not healthy (503, "degraded") while a
domain serves nothing. Then a rollback pins a domain against the nightly, and GC keeps what the replica
serves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.paths import DataRoot
from tests.serving.test_serving import AUTH, REPO, TOKEN, _free_port, copy_data_root

# the first test includes the sample's nightly and the server's start: minutes on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]


def _damage(store: IndexStore, domain: str, version: str) -> None:
    f = store.path(domain, version) / "index.faiss"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _cli(root: DataRoot, *args: str, timeout: float = 600) -> dict:
    env = {**os.environ, "SIDESTEP_HOME": str(root.root)}
    p = subprocess.run([sys.executable, "-m", "sidestep", *args, "--json"], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def damaged(sample):
    """A copy of the sample root, damaged as described above; returns (root, facts)."""
    root = copy_data_root(sample.root, Path(tempfile.mkdtemp(prefix="dmg-", dir=sample.root.root.parent)) / "root")
    store = IndexStore(root)
    shutil.copytree(store.base("handbook"), root.root / "indexes" / "Handbook-BAK")  # the operator's backup copy
    notes_v1 = store.current("field-notes")
    notes_v2 = new_version_name("0" * 8)  # a later version (a copy: cheap), then damaged, and made CURRENT
    shutil.copytree(store.path("field-notes", notes_v1), store.path("field-notes", notes_v2))
    _damage(store, "field-notes", notes_v2)
    (store.base("field-notes") / "CURRENT").write_text(notes_v2 + "\n")
    hb = store.current("handbook")
    for name, current in (("solo", hb), ("pointer", "../../etc")):
        (root.root / "indexes" / name).mkdir()
        shutil.copytree(store.path("handbook", hb), root.root / "indexes" / name / hb)
        (root.root / "indexes" / name / "CURRENT").write_text(current + "\n")
    _damage(store, "solo", hb)  # its only version: nothing to fall back to
    return root, {"notes_v1": notes_v1, "notes_v2": notes_v2, "handbook": hb}


@pytest.fixture(scope="module")
def server(damaged):
    root, _ = damaged
    port = _free_port()
    env = {**os.environ, "SIDESTEP_API_TOKEN": TOKEN, "SIDESTEP_HOME": str(root.root)}
    env.pop("HOME", None)
    log = open(root.root.parent / f"{root.root.name}-serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "sidestep", "serve", "--port", str(port), "--preset", "test"],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            assert proc.poll() is None, f"sidestep serve exited early: {Path(log.name).read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serving did not come up: {Path(log.name).read_text()[-3000:]}"
            try:
                r = httpx.get(url + "/healthz", timeout=5)
                if r.status_code in (200, 503) and r.json().get("domains"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            yield client
    finally:
        psutil.Process(proc.pid).send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _search(server, domain: str) -> httpx.Response:
    return server.post("/search", json={"query": "database backups", "domain": domain, "k": 2, "verify": False})


def _wait_for(fn, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (last := fn()):
        assert time.monotonic() < deadline, f"{what}: never happened"
        time.sleep(0.5)
    return last


def test_healthz_names_every_bad_entry_and_is_not_healthy_while_a_domain_serves_nothing(server, damaged):
    root, facts = damaged
    r = server.get("/healthz")
    body = r.json()
    assert r.status_code == 503 and body["status"] == "degraded", body
    assert "indexes/Handbook-BAK" in body["bad_entries"]
    assert "not a valid domain name" in body["bad_entries"]["indexes/Handbook-BAK"]
    assert "checksum mismatch" in body["unavailable"]["solo"]
    assert body["domains"]["handbook"] == facts["handbook"]
    fb = body["fallback"]["field-notes"]
    assert fb["serving"] == facts["notes_v1"] and fb["current"] == facts["notes_v2"], fb
    assert "checksum mismatch" in fb["reason"]
    assert body["fallback"]["pointer"]["serving"] == facts["handbook"]
    assert "CURRENT unusable" in body["errors"]["pointer"]
    assert body["recommend"]["status"] == "ok"


def test_the_other_domains_serve_and_the_fallback_serves_from_disk(server, damaged):
    root, facts = damaged
    assert _search(server, "handbook").json()["index_version"] == facts["handbook"]
    r = _search(server, "field-notes")
    assert r.status_code == 200 and r.json()["index_version"] == facts["notes_v1"]
    assert _search(server, "solo").status_code == 404
    assert server.post("/recommend", json={"history": ["0"], "k": 2, "domain": "shop"}).status_code == 200


def test_hot_reload_goes_on_and_healthz_recovers_when_the_bad_domain_goes(server, damaged, tmp_path):
    root, facts = damaged
    src = tmp_path / "extra.jsonl"
    src.write_text(json.dumps({"id": "x1", "title": "Restore drills", "text": "Restore last night's database "
                               "backup into a scratch server every Friday and time it."}) + "\n")
    _cli(root, "ingest", str(src), "--domain", "handbook")
    res = _cli(root, "reindex", "--domain", "handbook", "--skip-ingest")
    new = res["domains"]["handbook"]["index"]["version"]
    assert res["domains"]["handbook"]["index"]["published"] and new != facts["handbook"]
    _wait_for(lambda: _search(server, "handbook").json()["index_version"] == new, "hot swap to the new version")
    shutil.rmtree(root.root / "indexes" / "solo")
    r = _wait_for(lambda: (x := server.get("/healthz")).status_code == 200 and x, "healthz back to 200")
    assert r.json()["status"] == "ok" and "indexes/Handbook-BAK" in r.json()["bad_entries"]
    facts["handbook_new"] = new


def test_a_rollback_pins_the_domain_against_the_nightly_until_unpinned(server, damaged):
    root, facts = damaged
    old, new = facts["handbook"], facts["handbook_new"]
    res = _cli(root, "rollback", "--domain", "handbook")
    assert res["current_version"] == old and res["pinned"] == old
    _wait_for(lambda: _search(server, "handbook").json()["index_version"] == old, "the rollback served")
    assert _cli(root, "status")["domains"]["handbook"]["pin"]["version"] == old
    # the nightly reads every source (unchanged since the rollback): the corpus differs from the rolled-back
    # version, but the pin holds
    res = _cli(root, "reindex", "--domain", "handbook")
    assert not res["domains"]["handbook"]["index"]["published"]
    assert res["domains"]["handbook"]["index"]["pinned"] is True
    assert [p["domain"] for p in res["pinned"]] == ["handbook"] and res["published"] == []
    assert IndexStore(root).current("handbook") == old
    time.sleep(3)  # longer than the reload poll
    assert _search(server, "handbook").json()["index_version"] == old
    _cli(root, "unpin", "--domain", "handbook")
    res = _cli(root, "reindex", "--domain", "handbook")
    assert res["domains"]["handbook"]["index"]["published"]
    assert IndexStore(root).current("handbook") not in (old, new)


def test_gc_keeps_the_version_a_replica_serves_instead_of_a_damaged_current(server, damaged):
    root, facts = damaged
    store = IndexStore(root)
    assert store.versions("field-notes")[-1] == facts["notes_v2"]
    res = _cli(root, "gc", "--domain", "field-notes", "--keep", "1")
    assert facts["notes_v1"] not in res["removed"] and facts["notes_v1"] in store.versions("field-notes")
    time.sleep(3)
    r = _search(server, "field-notes")
    assert r.status_code == 200 and r.json()["index_version"] == facts["notes_v1"]
    plan = _cli(root, "gc")  # housekeeping's dry run lists nothing a version or a live replica uses
    assert not any(i["kind"] == "heartbeat" for i in plan["items"]), plan["items"]
    assert not any(i["path"].startswith("indexes/field-notes/") for i in plan["items"])
