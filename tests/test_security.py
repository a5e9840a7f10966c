"""With SIDESTEP_API_TOKEN set, /search and /recommend need it as a bearer token; /healthz stays open."""

from __future__ import annotations

import os

import httpx
import pytest

from .test_serving import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def guarded(sample):
    from serving.run import ServeHandle

    os.environ["SIDESTEP_HOME"] = str(sample.root.root)
    os.environ["SIDESTEP_API_TOKEN"] = TOKEN
    try:
        h = ServeHandle(sample.root, port=_free_port(), preset="test")
        with h, httpx.Client(base_url=h.url, timeout=60) as client:
            yield client
    finally:
        os.environ.pop("SIDESTEP_API_TOKEN", None)


@pytest.mark.parametrize("path,body", [
    ("/search", {"query": "database backups", "domain": "handbook", "k": 2}),
    ("/recommend", {"history": ["0"], "k": 2, "domain": "shop"}),
])
def test_requests_need_the_bearer_token(guarded, path, body):
    assert guarded.post(path, json=body).status_code == 401
    r = guarded.post(path, json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    ok = guarded.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["index_version"]


def test_health_stays_open_and_the_server_listens_on_loopback_only(guarded):
    assert guarded.get("/healthz").status_code == 200
    assert str(guarded.base_url).startswith("http://127.0.0.1:")
