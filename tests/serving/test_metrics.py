"""The replica's metrics without Ray: the middleware on a small ASGI app, refusals counted once per
version. (The Ray app's /metrics is tested end to end in test_serving.py.)"""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from sidestep.serving.metrics import MetricsMiddleware, ReplicaMetrics, replica_metrics
from sidestep.serving.versions import VersionedDomains


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_middleware_counts_routes_by_status_class_and_times_them():
    app = FastAPI()

    @app.post("/search")
    async def search(ok: bool = True):
        if not ok:
            raise HTTPException(status_code=404, detail="unknown domain")
        return {"ok": True}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/docs-like")
    async def other():
        return {}

    app.add_middleware(MetricsMiddleware)
    m = replica_metrics()
    assert replica_metrics() is m  # one per process
    before = _samples(m.exposition().decode())

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.post("/search")).status_code == 200
            assert (await c.post("/search", params={"ok": "false"})).status_code == 404
            assert (await c.get("/search")).status_code == 405
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/docs-like")).status_code == 200

    asyncio.run(calls())
    after = _samples(m.exposition().decode())

    def delta(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("sidestep_http_requests_total", route="search", status_class="2xx") == 1
    assert delta("sidestep_http_requests_total", route="search", status_class="4xx") == 2
    assert delta("sidestep_http_requests_total", route="healthz", status_class="2xx") == 1
    assert delta("sidestep_http_request_duration_seconds_count", route="search") == 3
    assert delta("sidestep_http_request_duration_seconds_count", route="healthz") == 1
    assert not any(dict(labels).get("route") not in (None, "search", "recommend", "healthz")
                   for _, labels in after)  # other paths are not counted


class _Store:
    """The part of IndexStore the version poller reads."""

    kind = "tables"

    def __init__(self, current: dict[str, str]):
        self.pointers = current

    def invalid_entries(self) -> dict[str, str]:
        return {}

    def domains(self) -> list[str]:
        return sorted(self.pointers)

    def current(self, domain: str) -> str:
        return self.pointers[domain]


class _Domains(VersionedDomains):
    what = "tables"

    def load(self, domain: str, version: str) -> str:
        if version.startswith("bad"):
            raise ValueError(f"checksum mismatch in {version}")
        return version

    def version_of(self, loaded: str) -> str:
        return loaded


def test_a_refused_version_is_counted_once_however_often_the_poller_retries_it():
    store = _Store({"shop": "v1", "books": "v1"})
    d = _Domains(store)
    d.refresh()
    store.pointers["shop"] = "bad-2"
    for _ in range(3):  # each poll tries the damaged version again
        d.refresh()
    store.pointers["shop"] = "bad-3"
    d.refresh()
    assert d.version_state() == {"kind": "tables", "versions": {"books": "v1", "shop": "v1"},
                                 "refused": {"shop": 2}}

    m = ReplicaMetrics()
    m.versions.sources.append(d.version_state)
    m.searched("handbook", True, False)
    got = _samples(m.exposition([{"kind": "index", "versions": {"handbook": "20250101"}, "refused": {}}]).decode())
    assert _get(got, "sidestep_versions_refused_total", kind="tables", domain="shop") == 2
    assert ("sidestep_versions_refused_total", (("domain", "books"), ("kind", "tables"))) not in got
    assert _get(got, "sidestep_serving_version", kind="tables", domain="shop", version="v1") == 1
    assert _get(got, "sidestep_serving_version", kind="index", domain="handbook", version="20250101") == 1
    assert _get(got, "sidestep_search_verify_requested_total", domain="handbook") == 1
    assert _get(got, "sidestep_search_verify_applied_total", domain="handbook") == 0
