"""The Ray Serve application: the search deployment is the FastAPI ingress and recalls where the
request arrives; it composes the batched verifier deployment after recall and forwards
/recommend to the recommend deployment.

POST /search, POST /recommend, GET /healthz, GET /metrics (Prometheus text, serving/metrics.py),
OpenAPI at /docs. Bad requests get a 4xx with a message, never a 500. Each replica polls its
domains' CURRENT pointers and hot-swaps to a new, validated version without dropping requests;
`reconfigure(user_config)` can pin versions.

No `from __future__ import annotations` here: FastAPI reads the request models from the
endpoint annotations at runtime, and Ray's class-based ingress cannot resolve them as strings.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from sidestep.config import load_settings
from sidestep.retrieval.search import VerifyRequest
from sidestep.storage.paths import DataRoot
from sidestep.storage.replicas import DEFAULT_TTL_S, Heartbeat, new_replica_id, remove_heartbeat, write_heartbeat

from .core import SearchService
from .metrics import MetricsMiddleware, replica_metrics
from .options import preset
from .recommend import RecommendService
from .verify import VerifierService

log = logging.getLogger("sidestep.serving")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=2000, description="Query text.")
    k: int = Field(10, ge=1, le=1000, description="Number of documents to return.")
    domain: str | None = Field(None, max_length=64, description="Domain to search; the default domain if null.")
    verify: bool = Field(True, description="Rerank recall's candidates with the domain's verifier; false returns "
                                           "recall only (the response says whether it applied, and why not).")
    mode: Literal["chunks", "map"] = Field(
        "chunks", description="chunks: bag of chunks. map: route by document maps, then pick chunks with the "
                              "query conditioned on each document's summary.")
    doc_id: str | None = Field(None, max_length=512, description="With mode 'map': rank the chunks of this one "
                                                                  "document.")


class SearchResult(BaseModel):
    doc_id: str
    score: float
    recall_score: float
    title: str = ""
    snippet: str = ""
    chunk: int = 0


class SearchResponse(BaseModel):
    index_version: str
    domain: str
    mode: str
    results: list[SearchResult]
    verify: dict
    timings_ms: dict[str, float]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(..., max_length=10_000, description="The user's items, oldest first; ids the "
                                                                   "domain does not know are reported, not fatal.")
    k: int = Field(10, ge=1, le=1000, description="Number of items to return.")
    domain: str | None = Field(None, max_length=64, description="Recommendation domain; the only one if null.")
    exclude_history: bool = Field(False, description="Leave the history's own items out of the results.")


class RecommendedItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    index_version: str
    domain: str
    items: list[RecommendedItem]
    unknown_items: list[str]
    note: str | None = None
    timings_ms: dict[str, float]


api = FastAPI(title="sidestep", version="0.1.0",
              description="Recall (then verify) over published, versioned indexes, and recommendations from "
                          "learned lookup tables over discrete codes.")
# The replica's process environment carries the guard settings: Ray pickles the ingress class by value,
# so a module-level dict set in __init__ would not be the one the middleware reads.
_TOKEN_VAR, _LIMIT_VAR = "SIDESTEP_INGRESS_TOKEN_SHA256", "SIDESTEP_INGRESS_MAX_BODY"
OPEN_PATHS = ("/healthz", "/metrics", "/docs", "/openapi.json")  # GET only: the routes define no other method


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Guard:
    """Size limit (413) and bearer token (401) before any work; /healthz, /metrics and the docs stay open.

    A plain ASGI middleware: Starlette's @app.middleware("http") wraps every request in a task group
    and memory streams, which cost 6-9 ms per request on two cores."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        limit = int(os.environ.get(_LIMIT_VAR, "65536"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await JSONResponse(status_code=413, content={
                "detail": f"request body is {length} bytes; the limit is {limit}"})(scope, receive, send)
        body, size = [], 0
        while True:  # read the whole body (bounded by the limit), then hand it on unchanged
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            size += len(message.get("body", b""))
            if size > limit:
                return await JSONResponse(status_code=413, content={
                    "detail": f"request body exceeds {limit} bytes"})(scope, receive, send)
            body.append(message)
            if not message.get("more_body"):
                break
        want = os.environ.get(_TOKEN_VAR)
        if want:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not given or not hmac.compare_digest(_sha(given), want):
                return await JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                          content={"detail": "missing or wrong bearer token"})(scope, receive, send)
        pending = iter(body)

        async def replay():
            return next(pending, None) or await receive()

        return await self.app(scope, replay, send)


api.add_middleware(_Guard)
api.add_middleware(MetricsMiddleware)  # added last, so it runs first: it counts the guard's 401s and 413s too


@api.exception_handler(RequestValidationError)
async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": "; ".join(msgs), "errors": exc.errors()})


class _PollingReplica:
    """What both replicas share: a service with refresh()/pin()/health(), polled for new CURRENT versions
    in a daemon thread, pinned through reconfigure(user_config)."""

    def __init__(self, service, poller: str):
        self.service = service
        self.poll_s = service.settings.serve.reload_poll_s
        self._stop = threading.Event()
        # what this replica serves, on disk, so that GC keeps it (storage/replicas.py)
        self.replica_id = new_replica_id(poller.split("-")[0])
        self._beat()
        threading.Thread(target=self._poll, name=poller, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                getattr(self.service, "refresh_all", self.service.refresh)()
            except Exception:  # the poller must never die
                log.exception("refresh failed")
            self._beat()

    def _beat(self) -> None:
        try:
            write_heartbeat(self.service.root, Heartbeat(self.replica_id, self.service.heartbeat(),
                                                         ttl_s=max(DEFAULT_TTL_S, 10 * self.poll_s)))
        except Exception:  # a full or read-only disk must not stop serving
            log.exception("could not record what this replica serves")

    def reconfigure(self, user_config: dict) -> None:
        """user_config: {"pin": {domain: version}, "reload_poll_s": float}."""
        self.poll_s = float(user_config.get("reload_poll_s", self.poll_s))
        self.service.pin(user_config.get("pin") or {})

    def health(self) -> dict:
        return self.service.health()

    def version_state(self) -> dict:
        return self.service.version_state()

    @staticmethod
    def _answer(fn, *args):
        """fn's answer; expected request errors travel back as data ({"error", "status"}), so the ingress
        can turn them into a 4xx."""
        try:
            return fn(*args)
        except LookupError as e:
            return {"error": str(e), "status": 404}
        except ValueError as e:
            return {"error": str(e), "status": 400}

    def __del__(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            remove_heartbeat(self.service.root, self.replica_id)


@serve.deployment(name="verifier")
class VerifierDeployment(_PollingReplica):
    """Each domain's published verifier, hot-reloaded; concurrent requests are scored in one batch."""

    def __init__(self, data_root: str, config_path: str | None = None):
        settings = load_settings(config_path)
        if settings.verify.num_threads:
            import torch

            torch.set_num_threads(settings.verify.num_threads)
        super().__init__(VerifierService(settings, DataRoot(Path(data_root))), "verifier-poller")
        self.verify.set_max_batch_size(settings.verify.batch_max_size)
        self.verify.set_batch_wait_timeout_s(settings.verify.batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def verify(self, requests: list[VerifyRequest]) -> list[dict]:
        try:
            return await asyncio.to_thread(self.service.verify_batch, requests)
        except Exception as e:  # one bad batch answers recall-only, it never fails the searches
            log.exception("verify batch failed")
            return [{"applied": False, "reason": f"verifier failed: {type(e).__name__}: {e}"}] * len(requests)


@serve.deployment(name="recommend")
class RecommendDeployment(_PollingReplica):
    """Each recommendation domain's published tables; polls CURRENT and hot-swaps like search."""

    def __init__(self, data_root: str, config_path: str | None = None):
        super().__init__(RecommendService(load_settings(config_path), DataRoot(Path(data_root))), "tables-poller")

    def recommend(self, history: list[str], k: int, domain: str | None, exclude_history: bool = False) -> dict:
        return self._answer(self.service.recommend, history, k, domain, exclude_history)


async def _call(response):
    """A full recommend queue (max_queued_requests) answers fast with 503 and Retry-After, not a timeout."""
    try:
        return await response
    except BackPressureError as e:
        raise HTTPException(status_code=503, detail=f"overloaded, retry shortly: {e}",
                            headers={"Retry-After": "1"}) from None


async def _verified(response) -> dict:
    """The verifier deployment's answer; one that cannot be reached (overloaded, restarting) leaves the
    search recall-only, with the reason in the response, never a 5xx."""
    try:
        return await response
    except Exception as e:
        return {"applied": False, "reason": f"verifier unavailable: {type(e).__name__}: {e}"}


def _rebind_after_restart() -> None:
    """Under direct ingress this replica binds the public port itself, without SO_REUSEADDR (Ray
    2.60). A replica restarted after a crash (kill -9 with keep-alive clients connected) then finds
    the port held by the dead one's TIME_WAIT connections for a minute, and Ray blocks a port that
    failed to bind for good: the endpoint would stay dark until the app is redeployed. Ray's own bind
    with enable_so_reuseport (SO_REUSEADDR + SO_REUSEPORT, as its proxy binds) takes the port back at
    once. Runs in the replica's constructor, before Ray starts the replica's HTTP server; a Ray
    whose function differs is left as it is. (A test kills the replica with a connection open.)"""
    import inspect

    from ray.serve._private import replica

    start = getattr(replica, "start_asgi_http_server", None)
    if start is None or getattr(start, "sidestep_reuse", False):
        return
    if "enable_so_reuseport" not in inspect.signature(start).parameters:
        log.warning("this Ray's replica HTTP server takes no enable_so_reuseport: a restarted search "
                    "replica may not rebind the public port for a minute")
        return

    async def reuse(app, http_options, *, event_loop, enable_so_reuseport: bool = False):
        return await start(app, http_options, event_loop=event_loop, enable_so_reuseport=True)

    reuse.sidestep_reuse = True
    replica.start_asgi_http_server = reuse


@serve.deployment(name="search")
@serve.ingress(api)
class SearchDeployment(_PollingReplica):
    """The HTTP ingress and recall in one replica, then the verify stage in the verifier deployment.

    Recall runs where the request arrives: a separate ingress replica cost one more actor call per
    request (about 4 ms on a quiet 2-core machine, 10 ms on a loaded one). With one replica it answers
    the public port itself (direct ingress, serving/run.py). When it is full (max_ongoing_requests busy,
    max_queued_requests waiting), it (or the proxy, with several replicas) refuses at once with
    503 + Retry-After (the preset's backpressure_config)."""

    def __init__(self, data_root: str, config_path: str | None = None, verifier: DeploymentHandle | None = None,
                 recommend: DeploymentHandle | None = None, token_sha256: str | None = None,
                 max_body_bytes: int = 65_536):
        settings = load_settings(config_path)
        if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
            _rebind_after_restart()
        import torch

        # Ray sets OMP_NUM_THREADS to the replica's CPU share (1 here), which would leave the query encoder
        # one thread; encoder.num_threads = None means all cores (2 threads: 15 -> 12 ms per query here)
        torch.set_num_threads(settings.encoder.num_threads or os.cpu_count() or 1)
        super().__init__(SearchService(settings, DataRoot(Path(data_root)), verifier=None, fast_encoder=True),
                         "current-poller")
        self.verifier = verifier
        self.recommend_handle = recommend
        self.replica_metrics = replica_metrics()
        self.replica_metrics.versions.sources.append(self.service.version_state)
        os.environ[_LIMIT_VAR] = str(max_body_bytes)
        if token_sha256:
            os.environ[_TOKEN_VAR] = token_sha256
        else:
            os.environ.pop(_TOKEN_VAR, None)

    @api.post("/search", response_model=SearchResponse, responses={400: {}, 404: {}, 422: {}, 503: {}})
    async def search(self, req: SearchRequest) -> dict:
        stage = await asyncio.to_thread(self._answer, self.service.recall_stage, req.query, req.k, req.domain,
                                        req.verify and self.verifier is not None, req.mode, req.doc_id)
        if isinstance(stage, dict):  # a request error, as _answer returns it
            raise HTTPException(status_code=stage["status"], detail=stage["error"])
        verified = None
        if stage.request is not None:
            verified = await _verified(self.verifier.verify.remote(stage.request))
        out = self.service.finish(stage, verified)
        out["verify"]["requested"] = req.verify
        self.replica_metrics.searched(out["domain"], req.verify, out["verify"]["applied"])
        return out

    @api.post("/recommend", response_model=RecommendResponse, responses={400: {}, 404: {}, 422: {}, 503: {}})
    async def recommend(self, req: RecommendRequest) -> dict:
        res = await _call(self.recommend_handle.recommend.remote(req.history, req.k, req.domain,
                                                                 req.exclude_history))
        if "error" in res:
            raise HTTPException(status_code=res["status"], detail=res["error"])
        return res

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        h = self.service.health()
        try:
            r = await asyncio.wait_for(self.recommend_handle.health.remote(), timeout=10)
        except Exception as e:
            return JSONResponse(status_code=503, content={**h, "status": "unavailable", "error": str(e)})
        ok = h["status"] == "ok" and r["status"] == "ok"
        # a domain that serves nothing (search or recommend) is not healthy: "degraded" and 503
        status = h["status"] if h["status"] != "ok" else "ok" if ok else "degraded"
        bad = {**h.get("bad_entries", {}), **r.get("bad_entries", {})}
        return JSONResponse(status_code=200 if ok else 503,
                            content={**h, "status": status, "bad_entries": bad, "recommend": r})

    @api.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_text(self) -> Response:
        """This replica's counters (each search replica keeps its own), and the versions the verifier and
        recommend deployments serve and refused, asked of them for this scrape (one that does not answer
        within 5 s is left out of it)."""
        handles = [h for h in (self.verifier, self.recommend_handle) if h is not None]

        async def state(h):
            try:
                return await asyncio.wait_for(h.version_state.remote(), timeout=5)
            except Exception as e:
                log.warning("metrics: no version state from a deployment: %s: %s", type(e).__name__, e)
                return None

        remote = [s for s in await asyncio.gather(*(state(h) for h in handles)) if s]
        return Response(self.replica_metrics.exposition(remote), media_type=CONTENT_TYPE_LATEST)

    def check_health(self) -> None:
        if not self.service.corpora and self.service.root.domains_with_indexes():
            raise RuntimeError("published indexes exist but none is loaded")


def build_app(data_root: str, config_path: str | None = None, preset_name: str = "local"):
    p = preset(preset_name)
    verifier = VerifierDeployment.options(**p["verifier"]).bind(data_root, config_path)
    recommend = RecommendDeployment.options(**p["recommend"]).bind(data_root, config_path)
    serve_cfg = load_settings(config_path).serve
    token = os.environ.get(serve_cfg.token_env)
    if token is not None and not token.strip():  # fail closed: an empty token must not mean "no auth"
        raise ValueError(f"{serve_cfg.token_env} is set but empty: set a token, or unset the variable")
    token = token or None
    # only a hash of the token travels into the deployment's arguments
    return SearchDeployment.options(**p["search"]).bind(data_root, config_path, verifier, recommend,
                                                        _sha(token) if token else None, serve_cfg.max_body_bytes)


def app_from_env(args: dict | None = None):
    """Import path for `serve run` / serve config files: data root and config from the environment."""
    import os

    from sidestep.storage.paths import DataRoot as _DR

    args = args or {}
    root = _DR.from_settings(load_settings(args.get("config"))).root
    return build_app(str(root), args.get("config") or os.environ.get("SIDESTEP_CONFIG"),
                     args.get("preset", "local"))
