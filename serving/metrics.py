"""GET /metrics: the search replica's counters in Prometheus text format.

Each replica process keeps its own private CollectorRegistry (Ray's own metrics use the global one),
reached through `replica_metrics()`. The ingress class travels to the replica pickled by value, so its
code and the middleware below would not share a module-level object set in its constructor; a function
of this module (pickled by reference) returns the one instance of the process to both.

Per route (search, recommend, healthz; other paths are not counted): requests by status class, and
latency from the request's arrival at the ASGI app to its last byte sent, token and size checks
included. /healthz has its latency too, under its own route label: it waits on the recommend replica,
so a slow health answer is an early sign of a stuck replica, and it never mixes with the search
figures. Requests refused by Ray before the app (the queue's 503s) are not seen here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

ROUTES = {"/search": "search", "/recommend": "recommend", "/healthz": "healthz"}
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


class _VersionsCollector(Collector):
    """Versions served and refused, read at scrape time from the states the /metrics handler gathered:
    {"kind": "index" | "verifier" | "tables", "versions": {domain: version}, "refused": {domain: n}}."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], dict]] = []
        self.remote: list[dict] = []

    def collect(self) -> Iterable:
        serving = GaugeMetricFamily("sidestep_serving_version", "The version each domain serves (value 1), "
                                    "by kind: index (search), verifier, tables (recommend).",
                                    labels=["kind", "domain", "version"])
        refused = CounterMetricFamily("sidestep_versions_refused", "Versions the hot reload refused (failed "
                                      "to load or validate), counted once per version, by kind and domain.",
                                      labels=["kind", "domain"])
        for state in [src() for src in self.sources] + list(self.remote):
            for domain, version in sorted(state.get("versions", {}).items()):
                serving.add_metric([state["kind"], domain, version], 1)
            for domain, n in sorted(state.get("refused", {}).items()):
                refused.add_metric([state["kind"], domain], n)
        yield serving
        yield refused


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidestep_http_requests", "HTTP requests answered, by route and status class "
                                "(errors: status_class 4xx or 5xx).", ["route", "status_class"], registry=r)
        self.latency = Histogram("sidestep_http_request_duration_seconds", "Time from a request's arrival to "
                                 "its last byte sent, by route.", ["route"], registry=r)
        self.searches = Counter("sidestep_searches", "Searches answered, by domain.", ["domain"], registry=r)
        self.verify_requested = Counter("sidestep_search_verify_requested", "Searches answered that asked "
                                        "for the verify stage, by domain.", ["domain"], registry=r)
        self.verify_applied = Counter("sidestep_search_verify_applied", "Searches answered that the "
                                      "verifier reranked, by domain.", ["domain"], registry=r)
        self.versions = _VersionsCollector()
        r.register(self.versions)
        # the label children of the hot path, made once
        self._requests = {(route, c): self.requests.labels(route, c) for route in ROUTES.values()
                          for c in STATUS_CLASSES}
        self._latency = {route: self.latency.labels(route) for route in ROUTES.values()}

    def observe(self, route: str, status: int, seconds: float) -> None:
        cls = f"{status // 100}xx"
        child = self._requests.get((route, cls)) or self.requests.labels(route, cls)
        child.inc()
        self._latency[route].observe(seconds)

    def searched(self, domain: str, verify_requested: bool, verify_applied: bool) -> None:
        self.searches.labels(domain).inc()
        if verify_requested:
            self.verify_requested.labels(domain).inc()
        if verify_applied:
            self.verify_applied.labels(domain).inc()

    def exposition(self, remote: list[dict] | None = None) -> bytes:
        """The text exposition; `remote`: the other replicas' version states, fetched for this scrape."""
        self.versions.remote = list(remote or [])
        return generate_latest(self.registry)


_lock = threading.Lock()
_metrics: ReplicaMetrics | None = None


def replica_metrics() -> ReplicaMetrics:
    """This process's metrics (one replica per process)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = ReplicaMetrics()
        return _metrics


class MetricsMiddleware:
    """Counts and times the API routes. A plain ASGI middleware (see serving/app.py `_Guard`), added
    outside the guard so that 401s and 413s are counted too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        route = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # an exception before the response started

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            replica_metrics().observe(route, status, time.perf_counter() - t0)
