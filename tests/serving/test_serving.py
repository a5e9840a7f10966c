"""A real Ray Serve application on loopback, real HTTP requests, real published indexes.

The app runs as an operator runs it: `sidestep serve` in its own process, guarded (SIDESTEP_API_TOKEN
set, so every client here sends the bearer token and the token checks run against the same app), and
under `strace -f -e trace=connect`, so that the last test can prove that nothing the stack did, from
Ray's start-up through every request of this module, connected outside loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import load_choice

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STRACE = shutil.which("strace")
ADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1", "0.0.0.0", "::")


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(proc: subprocess.Popen) -> bool:
    """Ctrl-C to `sidestep serve` (strace's child where it runs under strace), as an operator stops it;
    False when it had to be killed after 90 s."""
    target = psutil.Process(proc.pid).children() if STRACE else [psutil.Process(proc.pid)]
    for p in target:
        p.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=90)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


@pytest.fixture(scope="module")
def sample(sample, tmp_path_factory):
    """This module's own copy of the session's sample root: it publishes indexes, a verifier and a new
    domain there, which tests of other modules run later by the same worker must not see (one of them
    expects the handbook to have no verifier)."""
    from types import SimpleNamespace

    return SimpleNamespace(root=copy_data_root(sample.root, tmp_path_factory.mktemp("served-root") / "root"),
                           summary=sample.summary)


def copy_data_root(src: DataRoot, dst: Path) -> DataRoot:
    """A copy of a data root's artifacts at dst (not yet existing), without the runtimes (Ray, Prefect) or the
    replica records of the servers that used it."""
    shutil.copytree(src.root, dst, symlinks=True, ignore=shutil.ignore_patterns("ray", "prefect", "replicas"))
    return DataRoot(dst)


@pytest.fixture(scope="module")
def served(sample, tmp_path_factory):
    """`sidestep serve --preset test` in a subprocess (under strace where it is installed); yields an
    authenticated client and the connect() log."""
    home = pytest.MonkeyPatch()  # for the publishes this module starts; undone when the module ends
    home.setenv("SIDESTEP_HOME", str(sample.root.root))
    port = _free_port()
    log = tmp_path_factory.mktemp("net") / "connect.log"
    env = {**os.environ, "SIDESTEP_API_TOKEN": TOKEN}
    env.pop("HOME", None)  # the command must set up its own Ray HOME
    cmd = [sys.executable, "-c", "from sidestep.cli import app; app()", "serve", "--port", str(port),
           "--preset", "test"]
    if STRACE:
        cmd = [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-e", "signal=none", "-o", str(log),
               *cmd]
    # started with SIGINT ignored, as a shell starts a background job: Ctrl-C must still stop it (the
    # teardown below checks that nothing listens afterwards)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_sigint_ignored)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, "sidestep serve exited early"
            assert time.monotonic() < deadline, "serving did not come up"
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            yield client, log
    finally:
        stopped = _stop(proc)
        home.undo()
    assert stopped, "sidestep serve ignored Ctrl-C for 90 s"
    # stopped: nothing listens any more
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=2)


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.mark.parametrize("path,body", [
    ("/search", {"query": "database backups", "domain": "handbook", "k": 2}),
    ("/recommend", {"history": ["0"], "k": 2, "domain": "shop"}),
])
def test_requests_need_the_bearer_token(server, path, body):
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        assert anonymous.post(path, json=body).status_code == 401
        r = anonymous.post(path, json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").status_code == 200  # health stays open
    ok = server.post(path, json=body)
    assert ok.status_code == 200, ok.text
    assert ok.json()["index_version"]
    assert str(server.base_url).startswith("http://127.0.0.1:")  # loopback only


def test_healthz_reports_every_published_domain(server, sample):
    r = server.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    store = IndexStore(sample.root)
    assert body["domains"] == {d: store.current(d) for d in sample.root.domains_with_indexes()}


def test_the_python_client_against_sidestep_serve(server, sample):
    """sidestep.Client against the real server: its results are the ones the in-process engine gives, and a
    wrong token or an unknown domain is an APIError with the server's message."""
    import sidestep

    url = str(server.base_url)
    client = sidestep.Client(url, token=TOKEN)
    assert client.healthz()["domains"] == server.get("/healthz").json()["domains"]
    hits = client.search("how do I roll back a release", domain="handbook", k=5, verify=False)
    local = sidestep.open(sample.root.root).search("how do I roll back a release", domain="handbook", k=5,
                                                   verify=False)
    assert [h.doc_id for h in hits] == [h.doc_id for h in local] and len(hits) == 5
    recs = client.recommend(["0", "2"], domain="shop", k=3)
    assert len(recs) == 3 and all(isinstance(r, sidestep.RecommendedItem) for r in recs)
    with pytest.raises(sidestep.APIError) as e:
        sidestep.Client(url, token="wrong").search("anything", domain="handbook")
    assert e.value.status == 401
    with pytest.raises(sidestep.APIError) as e:
        client.search("anything", domain="no-such-domain")
    assert e.value.status == 404 and "no-such-domain" in e.value.message


def test_search_answers_with_the_index_version_and_ranked_results(server, sample):
    r = server.post("/search", json={"query": "where do herons nest", "domain": "field-notes", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == IndexStore(sample.root).current("field-notes")
    assert len(body["results"]) == 3
    assert body["results"][0]["doc_id"] == "birds/heron.md"
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # no verifier of its own: the ranker chosen for it at index time (storage/rankers.py) orders the results
    choice = load_choice(sample.root, "field-notes")
    assert choice is not None, "indexing the sample chooses a ranker for each domain without a verifier"
    ranker = choice["ranker"]
    if ranker == "pooled_cosine":
        assert all(h["recall_score"] == h["score"] for h in body["results"])
        assert body["verify"] == {"requested": True, "applied": False, "ranker": "pooled_cosine",
                                  "reason": body["verify"]["reason"]}
    assert body["verify"]["ranker"] == ranker and f"{ranker} serves" in body["verify"]["reason"]
    assert {"encode", "recall", "total"} <= set(body["timings_ms"])


def test_map_mode_says_which_mode_ran(server):
    body = server.post("/search", json={"query": "undo a bad deploy", "domain": "handbook", "mode": "map",
                                        "k": 3}).json()
    assert body["mode"] == "map" and body["results"][0]["doc_id"] == "hb-029"
    assert server.post("/search", json={"query": "undo a bad deploy"}).json()["mode"] == "chunks"


def test_null_domain_uses_the_default_domain(server):
    body = server.post("/search", json={"query": "rotate TLS certificates"}).json()
    assert body["domain"] == "handbook" and len(body["results"]) == 10


@pytest.mark.parametrize("payload,status,fragment", [
    ({"query": ""}, 422, "query"),
    ({"query": "x" * 2001}, 422, "query"),
    ({"query": "ok", "k": 0}, 422, "k"),
    ({"query": "ok", "k": 1001}, 422, "k"),
    ({"query": "ok", "k": "ten"}, 422, "k"),
    ({"query": "ok", "domain": "nope"}, 404, "unknown domain"),
    ({"query": "ok", "domain": "../etc"}, 404, "unknown domain"),
    ({"query": "ok", "surprise": 1}, 422, "surprise"),
    ({"k": 3}, 422, "query"),
    ({"query": "   "}, 400, "empty"),
    ({"query": "ok", "mode": "magic"}, 422, "mode"),
    ({"query": "ok", "mode": "map", "doc_id": "nope"}, 404, "unknown doc_id"),
    ({"query": "ok", "doc_id": "hb-001"}, 400, "doc_id needs mode"),
])
def test_bad_requests_get_a_4xx_with_a_message(server, payload, status, fragment):
    r = server.post("/search", json=payload)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_non_json_body_is_a_4xx(server):
    r = server.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_openapi_docs_are_served(server):
    assert server.get("/docs").status_code == 200
    spec = server.get("/openapi.json").json()
    assert {"/search", "/recommend", "/healthz"} <= set(spec["paths"])


def _publish_in_subprocess(root, fault: str | None, marker) -> subprocess.Popen:
    code = textwrap.dedent("""
        from sidestep.config import default_settings
        from sidestep.storage.paths import DataRoot
        from sidestep.pipeline.index import publish_domain
        print(publish_domain(DataRoot.from_settings(default_settings()), default_settings(), "handbook", force=True))
    """)
    env = {**os.environ, "SIDESTEP_HOME": str(root.root)}
    if fault:
        env.update({"SIDESTEP_FAULT_POINT": fault, "SIDESTEP_FAULT_POINT_MARKER": str(marker)})
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def _served_version(server) -> str:
    r = server.post("/search", json={"query": "database backups", "domain": "handbook", "k": 1})
    assert r.status_code == 200, r.text
    return r.json()["index_version"]


@pytest.mark.parametrize("fault", ["publish:staged", "publish:renamed"])
def test_killed_publish_leaves_current_and_serving_on_the_old_version(server, sample, tmp_path, fault):
    store = IndexStore(sample.root)
    old = store.current("handbook")
    marker = tmp_path / "marker"
    p = _publish_in_subprocess(sample.root, fault, marker)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert p.poll() is None and time.monotonic() < deadline, "publish did not reach the fault point"
        time.sleep(0.1)
    p.kill()  # SIGKILL, mid-publish
    p.wait()
    assert store.current("handbook") == old
    store.verify("handbook", old)
    end = time.monotonic() + 5  # longer than the replicas' reload poll: they must stay on `old`
    while time.monotonic() < end:
        assert _served_version(server) == old
        time.sleep(0.5)


def test_a_new_version_is_hot_swapped_without_failed_requests(server, sample):
    store = IndexStore(sample.root)
    old = store.current("handbook")
    p = _publish_in_subprocess(sample.root, None, None)
    seen, failures = set(), 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = server.post("/search", json={"query": "database backups", "domain": "handbook", "k": 5})
        if r.status_code != 200:
            failures += 1
        else:
            seen.add(r.json()["index_version"])
        if p.poll() is not None and store.current("handbook") in seen:
            break
        time.sleep(0.1)
    assert p.returncode == 0
    new = store.current("handbook")
    assert new != old and new in seen and failures == 0
    assert not list(sample.root.indexes("handbook").glob(".staging-*"))  # crashed publishes were cleaned


def test_recommend_answers_with_the_tables_version_and_reports_unknown_items(server, sample):
    from sidestep.storage.recstore import table_store

    r = server.post("/recommend", json={"history": ["0", "2", "no-such-item"], "k": 5, "domain": "shop"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == table_store(sample.root).current("shop")
    assert len(body["items"]) == 5 and body["unknown_items"] == ["no-such-item"]
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    excl = server.post("/recommend", json={"history": ["0", "2"], "k": 5, "domain": "shop",
                                           "exclude_history": True}).json()
    assert not {"0", "2"} & {i["item_id"] for i in excl["items"]} and len(excl["items"]) == 5
    only_unknown = server.post("/recommend", json={"history": ["x", "y"], "k": 3, "domain": "shop"}).json()
    assert only_unknown["items"] == [] and only_unknown["unknown_items"] == ["x", "y"] and only_unknown["note"]


@pytest.mark.parametrize("payload,status", [
    ({"history": ["0"], "k": 3, "domain": "nowhere"}, 404),
    ({"history": ["0"], "k": 0, "domain": "shop"}, 422),
    ({"history": "0", "k": 3, "domain": "shop"}, 422),
    ({"k": 3, "domain": "shop"}, 422),
    ({"history": ["0"], "k": 3, "domain": "shop", "extra": 1}, 422),
])
def test_bad_recommend_requests_get_a_4xx_with_a_message(server, payload, status):
    r = server.post("/recommend", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_a_body_over_the_size_limit_gets_413_before_any_work(server):
    r = server.post("/search", content=b'{"query": "' + b"x" * 70_000 + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert server.get("/healthz").status_code == 200


def test_overload_gets_fast_503_with_retry_after_and_no_timeouts(server):
    """Far more concurrent requests than the search replica admits (ongoing + queued): the excess is
    refused at once by the replica (direct ingress) with 503 + Retry-After (the preset's backpressure_config); every
    request gets an answer."""
    import asyncio

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=60, headers=AUTH) as c:
            body = {"query": "how do we restore a database backup after an incident " * 8, "domain": "handbook",
                    "k": 1000}
            return await asyncio.gather(*(c.post("/search", json=body) for _ in range(n)))

    t0 = time.perf_counter()
    answers = asyncio.run(burst(150))
    elapsed = time.perf_counter() - t0
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    refused = [r for r in answers if r.status_code == 503]
    assert refused, "no request was refused: the queue limit did not apply"
    assert all(r.headers.get("retry-after") == "1" and "backpressure" in r.text for r in refused)
    assert codes.count(200) >= 24  # what the replica admits was served
    assert elapsed < 60
    assert server.get("/healthz").status_code == 200


def test_a_published_verifier_is_hot_loaded_and_reranks_through_the_verifier_deployment(server, sample, tmp_path,
                                                                                        settings):
    """Train a verifier for one domain while the app serves: the verifier deployment loads it, /search
    applies it (scores reordered, stages timed), verify=false still answers recall only."""
    import shutil

    from sidestep.config import SAMPLES_DIR
    from sidestep.pipeline.verifier import train_verifier_domain
    from sidestep.storage.verifiers import verifier_store

    folder = tmp_path / "handbook"
    shutil.copytree(SAMPLES_DIR / "handbook", folder)
    shutil.copy(folder / "qrels" / "test.tsv", folder / "qrels" / "train.tsv")
    fast = settings.model_copy(update={"verify": settings.verify.model_copy(update={"epochs": 2, "adapter_epochs": 2})})
    trained = train_verifier_domain(sample.root, fast, str(folder), "handbook", log=lambda m: None)
    assert verifier_store(sample.root).current("handbook") == trained["version"]
    body = {"query": "who gets paged for a sev2", "domain": "handbook", "k": 5}
    deadline, out = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        r = server.post("/search", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        if out["verify"]["applied"]:
            break
        time.sleep(0.5)
    assert out["verify"]["applied"] and out["verify"]["verifier_version"] == trained["version"]
    assert {"encode", "recall", "token_maps", "verify", "total"} <= set(out["timings_ms"])
    scores = [h["score"] for h in out["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    off = server.post("/search", json={**body, "verify": False}).json()
    assert off["verify"] == {"requested": False, "applied": False}
    assert all(h["score"] == h["recall_score"] for h in off["results"])


def _scrape(base_url) -> dict[tuple, float]:
    """GET /metrics without the token (it stays open): {(sample name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{base_url}/metrics", timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_the_requests_made_and_name_the_versions_served(server):
    """Runs after the verifier is hot-loaded (the test above) and before the replica is killed (which
    starts its counters afresh): every counter moves by exactly the requests made between two scrapes."""
    before = _scrape(server.base_url)
    verified = server.post("/search", json={"query": "who gets paged for a sev2", "domain": "handbook", "k": 3})
    assert verified.status_code == 200, verified.text
    recall_only = server.post("/search", json={"query": "database backups", "domain": "handbook", "verify": False})
    assert recall_only.status_code == 200, recall_only.text
    assert server.post("/search", json={"query": "ok", "k": 0}).status_code == 422
    assert server.post("/search", json={"query": "ok", "domain": "nope"}).status_code == 404
    assert httpx.post(f"{server.base_url}/search", json={"query": "ok"}, timeout=60).status_code == 401
    assert server.post("/recommend", json={"history": ["0"], "k": 2, "domain": "shop"}).status_code == 200
    assert server.get("/healthz").status_code == 200
    assert httpx.post(f"{server.base_url}/metrics", timeout=60).status_code == 405  # open, but read-only
    after = _scrape(server.base_url)

    requests = "sidestep_http_requests_total"
    assert _delta(before, after, requests, route="search", status_class="2xx") == 2
    assert _delta(before, after, requests, route="search", status_class="4xx") == 3
    assert _delta(before, after, requests, route="recommend", status_class="2xx") == 1
    assert _delta(before, after, requests, route="healthz", status_class="2xx") == 1
    assert _delta(before, after, requests, route="search", status_class="5xx") == 0
    latency = "sidestep_http_request_duration_seconds"
    assert _delta(before, after, f"{latency}_count", route="search") == 5
    assert _delta(before, after, f"{latency}_count", route="recommend") == 1
    assert _delta(before, after, f"{latency}_sum", route="search") > 0
    assert _delta(before, after, f"{latency}_bucket", route="search", le="+Inf") == 5

    body = verified.json()
    assert _delta(before, after, "sidestep_searches_total", domain="handbook") == 2
    assert _delta(before, after, "sidestep_search_verify_requested_total", domain="handbook") == 1
    assert _delta(before, after, "sidestep_search_verify_applied_total", domain="handbook") == \
        int(body["verify"]["applied"])
    assert after[("sidestep_serving_version", (("domain", "handbook"), ("kind", "index"),
                                               ("version", body["index_version"])))] == 1
    served = {dict(labels)["domain"]: dict(labels)["version"] for (name, labels) in after
              if name == "sidestep_serving_version" and dict(labels)["kind"] == "index"}
    assert served == server.get("/healthz").json()["domains"]
    if body["verify"]["applied"]:  # the verifier the search used is the one the gauge names
        assert after[("sidestep_serving_version", (("domain", "handbook"), ("kind", "verifier"),
                                                   ("version", body["verify"]["verifier_version"])))] == 1
    tables = {dict(labels)["domain"] for (name, labels) in after
              if name == "sidestep_serving_version" and dict(labels)["kind"] == "tables"}
    assert "shop" in tables


def test_an_unreachable_verifier_leaves_the_search_recall_only_with_the_reason(sample, settings):
    """The search replica's path when its call to the verifier deployment fails: recall order, and the
    response says why the verify stage did not apply."""
    import asyncio

    from sidestep.serving.app import _verified
    from sidestep.serving.core import SearchService

    async def down():
        raise RuntimeError("the verifier replica is restarting")

    got = asyncio.run(_verified(down()))
    assert got["applied"] is False and "RuntimeError" in got["reason"] and "restarting" in got["reason"]
    svc = SearchService(settings, sample.root, verifier=None)  # the Ray app's search replica
    svc.ranker_choice = lambda domain: None  # no ranker chosen for the domain: the verifier deployment decides
    stage = svc.recall_stage("database backups", 3, "handbook", True)
    assert stage.request is not None  # the verify stage was asked for
    out = svc.finish(stage, got)
    assert out["verify"] == {"requested": True, "applied": False, "reason": got["reason"]}
    assert len(out["results"]) == 3
    assert [h["score"] for h in out["results"]] == [h["recall_score"] for h in out["results"]]


def test_a_taken_port_is_a_clear_error_and_starts_nothing(tmp_path):
    """The public port is checked before Ray starts; the failed start leaves no Ray behind (stopping
    must not start a default Ray, whose node-IP and cloud probes would leave loopback)."""
    import ray

    from sidestep.serving.run import ServeHandle

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve on 127.0.0.1:{port}"):
            ServeHandle(DataRoot(tmp_path), port=port, preset="test").__enter__()
    assert not ray.is_initialized()


def _search_replicas(root: DataRoot) -> list[psutil.Process]:
    """This module's search replicas: those serving `root` (another test worker may serve its own)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if "ServeReplica:sidestep:search" in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                if p.environ().get("SIDESTEP_HOME") == str(root.root):
                    out.append(p)
    return out


def test_a_killed_search_replica_comes_back_on_the_same_port(server, sample):
    """The single search replica holds the public port itself (direct ingress). kill -9 it while this
    client holds a keep-alive connection, so the dead replica's side of it lingers on the port: Ray
    restarts the replica, it binds the same port again, and searches answer."""
    assert server.get("/healthz").status_code == 200  # the keep-alive connection is open
    victims = _search_replicas(sample.root)
    assert len(victims) == 1
    victims[0].kill()
    victims[0].wait(timeout=30)
    deadline, last = time.monotonic() + 150, None
    while time.monotonic() < deadline:
        try:
            last = server.post("/search", json={"query": "database backups", "domain": "handbook", "k": 2})
            if last.status_code == 200:
                break
        except httpx.HTTPError as e:  # refused while the replica restarts
            last = e
        time.sleep(1)
    assert isinstance(last, httpx.Response) and last.status_code == 200, last
    assert [p.pid for p in _search_replicas(sample.root)] != [victims[0].pid]


def _index_in_subprocess(root, src: Path, domain: str) -> subprocess.Popen:
    """`sidestep index SRC --domain DOMAIN` into the served data root, as a user runs it."""
    env = {**os.environ, "SIDESTEP_HOME": str(root.root)}
    return subprocess.Popen([sys.executable, "-m", "sidestep", "index", str(src), "--domain", domain, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_a_domain_no_config_names_is_served_and_hot_swapped_without_failed_requests(server, sample, tmp_path):
    """A new domain indexed by `sidestep index` while the server runs is picked up without a restart, and its
    next version is swapped in under load with zero failed requests."""
    src = tmp_path / "notes.jsonl"
    notes = [{"id": f"n{i}", "title": t, "text": x} for i, (t, x) in enumerate([
        ("Bike chain care", "Clean the chain with a degreaser, then oil each roller and wipe off the excess."),
        ("Sourdough starter", "Feed the starter twice a day with equal weights of flour and water."),
        ("Houseplant watering", "Let the top of the soil dry out before watering; wet roots rot.")])]
    src.write_text("".join(json.dumps(n) + "\n" for n in notes))
    p = _index_in_subprocess(sample.root, src, "notes")
    assert p.wait(timeout=300) == 0
    first = json.loads(p.stdout.read().strip().splitlines()[-1])["version"]
    query = {"query": "how do I oil a bicycle chain", "domain": "notes", "k": 3}
    deadline = time.monotonic() + 60  # the replica's version poll finds the new domain
    while (r := server.post("/search", json=query)).status_code != 200:
        assert time.monotonic() < deadline, f"the new domain was never served: {r.status_code} {r.text}"
        time.sleep(0.5)
    assert r.json()["index_version"] == first and r.json()["results"][0]["doc_id"] == "n0"

    notes.append({"id": "n3", "title": "Chain wear", "text": "Replace a bicycle chain once it stretches by half "
                  "a percent, before it wears the cassette."})
    src.write_text("".join(json.dumps(n) + "\n" for n in notes))
    p = _index_in_subprocess(sample.root, src, "notes")
    seen, failures, answered = set(), 0, 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r = server.post("/search", json=query)
        answered += 1
        if r.status_code != 200:
            failures += 1
        else:
            seen.add(r.json()["index_version"])
        if p.poll() is not None and IndexStore(sample.root).current("notes") in seen:
            break
        time.sleep(0.1)
    assert p.returncode == 0
    second = IndexStore(sample.root).current("notes")
    assert second != first and second in seen and failures == 0, (seen, failures, answered)


@pytest.mark.skipif(STRACE is None and os.environ.get("CI") != "true",  # under CI it must run, and fails
                    reason="strace is not installed (Debian package strace)")
def test_the_serving_stack_connects_only_to_loopback(served):
    """Every connect() of every process the stack started (Ray's start-up, the replicas, this module's
    requests, hot swaps and the verifier load) went to loopback. Runs last in the module; its own
    requests make it meaningful alone too."""
    client, log = served
    assert client.post("/search", json={"query": "database backups", "k": 3}).status_code == 200
    assert client.post("/recommend", json={"history": ["0"], "k": 2, "domain": "shop"}).status_code == 200
    assert str(client.base_url).startswith("http://127.0.0.1:")
    addrs = [a or b for a, b in ADDR.findall(log.read_text())]
    assert addrs, "strace recorded no inet connect at all: the check would be vacuous"
    outside = sorted({a for a in addrs if not _loopback(a)})
    assert outside == [], f"connections outside loopback: {outside}"

