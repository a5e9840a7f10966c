"""Start and stop the Ray Serve application on loopback, keeping Ray's state in the data root."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
import time

import httpx

from sidestep.config import load_settings
from sidestep.storage import runtime
from sidestep.storage.paths import DataRoot

APP_NAME = "sidestep"

log = logging.getLogger("sidestep.serving")


# Replicas run their request handling, user code and router on one event loop instead of three: the
# blocking work already runs in threads (asyncio.to_thread), and each cross-loop hand-off cost
# latency on two cores. (Part of Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED; its direct ingress, which
# opens a port per replica, is used only with one search replica: `direct_ingress_env`.)
SERVE_LOOPS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def direct_ingress_env(port: int) -> dict[str, str]:
    """Ray Serve's direct ingress with the public port as the only replica port: the search replica's
    own HTTP server answers on `port`, so a request no longer crosses the proxy actor (one hop there,
    one more for the replica to fetch the body back from the proxy: 14 to 16 ms of a one-client query
    on two cores). The replica applies max_queued_requests and the backpressure_config itself.

    No load balancer sits in front to deregister a stopping replica, so it drains only its in-flight
    requests (no 30 s minimum), and a restarted replica may take the port back at once (no quarantine;
    the replica binds it with SO_REUSEADDR, see serving/app.py `_rebind_after_restart`)."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def single_ingress_replica(preset_name: str) -> bool:
    """Direct ingress gives one port to one replica: presets with several search replicas (or
    autoscaling) keep the proxy on the public port, which spreads requests over them. So does a Ray
    already running in this process (its processes never see the settings) or one without direct
    ingress (before 2.60)."""
    import sys

    from .options import preset

    search = preset(preset_name)["search"]
    if "autoscaling_config" in search or search.get("num_replicas", 1) != 1:
        return False
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    from importlib.metadata import version

    major, minor = (int(x) for x in version("ray").split(".")[:2])
    return (major, minor) >= (2, 60)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    """A clear error now, instead of a replica that retries a taken port until the ready timeout."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot serve on {host}:{port}: {e.strerror} (another server holds the port?)"
                               ) from None


class InsecureServe(ValueError):
    """A serving configuration that would expose the endpoint without authentication."""


def check_auth(host: str, token_env: str = "SIDESTEP_API_TOKEN", *, insecure: bool = False) -> bool:
    """Fail closed before anything starts: a token variable that is set but empty is an error (it would
    silently disable authentication), and a bind address other than loopback needs a token unless
    `insecure` says the operator means it. Returns whether requests will need the token."""
    raw = os.environ.get(token_env)
    if raw is not None and not raw.strip():
        raise InsecureServe(f"{token_env} is set but empty: set a token, or unset the variable to serve "
                            "without one on loopback")
    if raw is None and not _is_loopback(host) and not insecure:
        raise InsecureServe(f"refusing to serve on {host} without a token: anyone who can reach it could "
                            f"query it; set {token_env}, bind 127.0.0.1, or pass --insecure")
    return raw is not None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM, handled from before a server starts until it has stopped.

    Both are handled explicitly: a process started with SIGINT ignored (a shell's background job, some process
    supervisors) never gets Python's KeyboardInterrupt, and SIGTERM's default ends the process without any
    cleanup. Installed before anything starts, so that a stop asked for while a server is still starting (Ray
    and Serve take tens of seconds, and the port may already answer) is not lost: there it raises
    KeyboardInterrupt, and the caller's `with` stops what was started. The first signal once `wait()` runs ends
    the wait instead. Any later one raises KeyboardInterrupt wherever the caller's cleanup is (its `finally`
    blocks still run): a second Ctrl-C cuts a slow stop short, as it does in any Python program. The previous
    handlers come back on leaving the `with`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, waiting: bool = False) -> None:
        self.got: list[int] = []
        self.woken = False  # the wait ended: the server had started and was asked to stop
        self._stop = threading.Event()
        self._waiting = waiting
        self._old: dict[int, object] = {}

    def _handler(self, signum, _frame) -> None:
        self.got.append(signum)
        if self._waiting and not self.woken:
            self.woken = True
            self._stop.set()
            return
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name} "
                                f"{'while stopping' if self.woken else 'while starting'}")

    def __enter__(self) -> StopSignals:
        self._old = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def wait(self) -> int:
        """Block until SIGINT or SIGTERM and return which."""
        self._waiting = True
        while not self._stop.wait(0.5):
            pass
        return self.got[-1]

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}


def wait_for_stop() -> int:
    """Block until SIGINT (Ctrl-C) or SIGTERM and return which (see StopSignals); the previous handlers are
    back when it returns."""
    with StopSignals(waiting=True) as stop:
        return stop.wait()


class ServeHandle:
    """Context manager: a local Ray (2 CPUs, no dashboard) + Serve on host:port; stops everything on exit."""

    def __init__(self, root: DataRoot, *, host: str = "127.0.0.1", port: int = 8000, preset: str = "local",
                 config_path: str | None = None, num_cpus: int = 2, ready_timeout_s: float = 180,
                 insecure: bool = False):
        self.root, self.host, self.port, self.preset = root, host, port, preset
        self.insecure = insecure
        self.direct, self.proxy_port = False, port  # set by start(): see single_ingress_replica
        self.config_path = config_path or os.environ.get("SIDESTEP_CONFIG")
        self.num_cpus = num_cpus
        self.ready_timeout_s = ready_timeout_s
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def start(self) -> ServeHandle:
        # Ray needs its own HOME (see storage/runtime.py); remember the caller's environment to restore it.
        serve_env = {k: os.environ.get(k, v) for k, v in SERVE_LOOPS.items()}
        check_auth(self.host, load_settings(self.config_path).serve.token_env, insecure=self.insecure)
        _check_port(self.host, self.port)
        # the public port: the search replica's own (direct ingress) or, with several replicas, the proxy's
        self.direct = single_ingress_replica(self.preset)
        if self.direct:
            serve_env.update(direct_ingress_env(self.port))
        self._saved_env = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "RAY_NODE_IP_ADDRESS",
                                                          "RAY_SERVE_HTTP_HOST", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                          *serve_env)}
        os.environ.update(serve_env)  # Ray's processes inherit them (and get them in runtime_env below)
        runtime.configure(self.root, ray=True)
        import ray
        from ray import serve

        from .app import build_app

        if not ray.is_initialized():
            kept = signal.getsignal(signal.SIGTERM)
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     namespace="sidestep", log_to_driver=False, logging_level="WARNING",
                     runtime_env={"env_vars": {**serve_env, **{k: os.environ[k] for k in (
                         "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SIDESTEP_HOME", "HOME",
                         "RAY_USAGE_STATS_ENABLED", "TOKENIZERS_PARALLELISM", "ORT_DISABLE_TELEMETRY")
                         if k in os.environ}}})
            if callable(kept) and threading.current_thread() is threading.main_thread():
                # ray.init replaces SIGTERM's handler with its own (sys.exit); a caller's own one (StopSignals:
                # stop what was started, exit 130) stays. Ray's replaces only the default.
                signal.signal(signal.SIGTERM, kept)
        if self.direct:  # the proxy still runs (Ray starts one on the head node): on a spare port
            self.proxy_port = _free_port(self.host)
        serve.start(http_options={"host": self.host, "port": self.proxy_port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(str(self.root.root), self.config_path, self.preset), name=APP_NAME, route_prefix="/")
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/healthz", timeout=5)
                if r.status_code in (200, 503) and "status" in r.json():
                    return
                last = r.text
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.5)
        raise TimeoutError(f"serving did not become ready at {self.url} in {self.ready_timeout_s}s: {last}")

    def stop(self, shutdown_timeout_s: float = 45.0) -> None:
        """Serve's graceful shutdown (replicas drain their requests), bounded: past `shutdown_timeout_s` Ray
        is shut down anyway, which stops every process this handle's Ray started, so a stop always ends
        with nothing left listening."""
        import ray
        from ray import serve

        try:
            if ray.is_initialized():  # serve.shutdown() would otherwise start a default Ray just to stop it
                done = threading.Event()

                def graceful() -> None:
                    try:
                        serve.shutdown()
                    finally:
                        done.set()

                threading.Thread(target=graceful, name="serve-shutdown", daemon=True).start()
                if not done.wait(shutdown_timeout_s):
                    log.warning("Serve did not shut down within %.0f s; stopping Ray", shutdown_timeout_s)
        finally:
            # also when ray.init was interrupted before it connected: its processes may have started
            ray.shutdown()
            for k, v in getattr(self, "_saved_env", {}).items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __enter__(self) -> ServeHandle:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

