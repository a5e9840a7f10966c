"""Start and stop the Ray Serve application on loopback, keeping Ray's state in the data root."""

from __future__ import annotations

import os
import time

import httpx

from storage import runtime
from storage.paths import DataRoot

APP_NAME = "sidestep"


# Replicas run their request handling, user code and router on one event loop instead of three: the
# blocking work already runs in threads (asyncio.to_thread), and each cross-loop hand-off cost
# latency on two cores. (Part of Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED, without its direct
# ingress, which would open a port per replica.)
SERVE_LOOPS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


class ServeHandle:
    """Context manager: a local Ray (2 CPUs, no dashboard) + Serve on host:port; stops everything on exit."""

    def __init__(self, root: DataRoot, *, host: str = "127.0.0.1", port: int = 8000, preset: str = "local",
                 config_path: str | None = None, num_cpus: int = 2, ready_timeout_s: float = 180):
        self.root, self.host, self.port, self.preset = root, host, port, preset
        self.config_path = config_path or os.environ.get("SIDESTEP_CONFIG")
        self.num_cpus = num_cpus
        self.ready_timeout_s = ready_timeout_s
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def start(self) -> ServeHandle:
        # Ray needs its own HOME (see storage/runtime.py); remember the caller's environment to restore it.
        self._saved_env = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "RAY_NODE_IP_ADDRESS",
                                                          "RAY_SERVE_HTTP_HOST", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        runtime.configure(self.root, ray=True)
        import ray
        from ray import serve

        from .app import build_app

        if not ray.is_initialized():
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     namespace="sidestep", log_to_driver=False, logging_level="WARNING",
                     runtime_env={"env_vars": {**SERVE_LOOPS, **{k: os.environ[k] for k in (
                         "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SIDESTEP_HOME", "HOME",
                         "RAY_USAGE_STATS_ENABLED", "TOKENIZERS_PARALLELISM", *SERVE_LOOPS) if k in os.environ}}})
        serve.start(http_options={"host": self.host, "port": self.port}, logging_config={"log_level": "WARNING"})
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

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if ray.is_initialized():
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

