"""A local Prefect server (SQLite, UI on 127.0.0.1) plus a runner serving every deployment.

`sidestep deploy` and `make ui` use it; the integration test drives the very same
object, so what the test proves is what a user starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


class LocalPrefect:
    def __init__(self, prefect_home: Path, *, host: str = "127.0.0.1", port: int = 4200,
                 env: dict[str, str] | None = None, log_dir: Path | None = None):
        self.home = Path(prefect_home)
        self.host, self.port = host, port
        self.env = {**os.environ, **(env or {}), "PREFECT_HOME": str(self.home),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": self.api_url}
        self.log_dir = Path(log_dir or self.home / "logs")
        self.server: subprocess.Popen | None = None
        self.runner: subprocess.Popen | None = None
        self.started = False

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 120, runner: bool = True, server: bool = True) -> LocalPrefect:
        """The server, then (unless runner=False: an API for flows run elsewhere) the runner of every
        deployment. server=False: a server already listens on host:port; start the runner against it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.started = True
        try:
            if server:
                self.server = self._spawn([sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
                                           "--port", str(self.port)], "server")
            self._wait(lambda: httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200, timeout,
                       "server")
            if not runner:
                return self
            self.runner = self._spawn([sys.executable, "-m", "sidestep.flows.deployments"], "runner")
            from sidestep.flows.deployments import deployments

            self.wait_deployments(len(deployments()), timeout)
        except BaseException:  # a start that failed (or was interrupted) leaves nothing running
            self.stop()
            raise
        return self

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in (self.server, self.runner):
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"prefect {what} exited with {p.returncode}; see {self.log_dir}")
            try:
                if ok():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect {what} not ready after {timeout:.0f} s; see {self.log_dir}")

    def stop(self) -> None:
        """Runner first (a server stopped under it makes it hang while pausing deployments)."""
        for p in (self.runner, self.server):
            if p is None or p.poll() is not None:
                continue
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.started = False

    def __enter__(self) -> LocalPrefect:
        """`with LocalPrefect(...) as p` starts it; `with p.start(...)` enters what is already started (a
        second start would spawn a second runner and orphan the first)."""
        return self if self.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the API, as the UI sees it ---------------------------------------------------------------
    def _api(self, method: str, path: str, tries: int = 10, **kw) -> httpx.Response:
        """One API call, retried on 5xx and connection errors with backoff: SQLite-backed Prefect answers
        503 while its database is busy, and Prefect's own client retries those too."""
        for attempt in range(tries):
            try:
                r = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kw)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r
            except httpx.TransportError:
                if attempt == tries - 1:
                    raise
            time.sleep(min(0.5 * 2 ** attempt, 5))
        r.raise_for_status()
        return r

    def deployments(self) -> list[dict]:
        return self._api("POST", "/deployments/filter", json={}).json()

    def wait_deployments(self, n: int, timeout: float = 120) -> list[dict]:
        """The runner registers deployments one by one: wait until n are there."""
        self._wait(lambda: len(self.deployments()) >= n, timeout, "runner registration")
        return self.deployments()

    def run_deployment(self, flow: str, name: str, parameters: dict) -> str:
        dep = self._api("GET", f"/deployments/name/{flow}/{name}").json()
        return self._api("POST", f"/deployments/{dep['id']}/create_flow_run",
                         json={"parameters": parameters}).json()["id"]

    def wait_flow_run(self, run_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self._api("GET", f"/flow_runs/{run_id}").json()
            state = (run.get("state") or {}).get("type")
            if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return run
            time.sleep(2)
        raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f} s")
