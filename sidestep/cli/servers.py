"""Commands that run until Ctrl-C: serve (Ray Serve), deploy (Prefect server and runner), demo."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Annotated

import typer

from .common import _fail, _root, _settings, err, out


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    preset: Annotated[str, typer.Option(help="Deployment preset from serving/options.py.")] = "local",
    insecure: Annotated[bool, typer.Option(help="Serve on a non-loopback address without SIDESTEP_API_TOKEN "
                                           "(anyone who can reach it can query it).")] = False,
) -> None:
    """Start the Ray Serve application (POST /search, GET /healthz, /docs) until Ctrl-C.

    Fails closed: a non-loopback --host needs $SIDESTEP_API_TOKEN (or --insecure), and a token variable
    that is set but empty is an error."""
    from sidestep.serving.run import InsecureServe, ServeHandle, StopSignals, check_auth

    s = _settings()
    bind = host or s.serve.host
    try:
        check_auth(bind, s.serve.token_env, insecure=insecure)
    except InsecureServe as e:
        _fail(str(e), False, 2)
    with (StopSignals() as stop, _stopped_while_starting(stop, "serving"),
          ServeHandle(_root(), host=bind, port=port or s.serve.port, preset=preset, insecure=insecure) as h):
        err.print(f"serving on {h.url}  (docs: {h.url}/docs)  Ctrl-C to stop")
        stop.wait()
        err.print("stopping")


@contextmanager
def _stopped_while_starting(stop, what: str):
    """A stop signal that came before `what` was up (StopSignals raised it there, and the server's own `with`
    has stopped what it had started): say so and exit 130, as an interrupted command does. A second stop
    while stopping, after the wait ended, interrupts as it would anywhere else."""
    try:
        yield
    except KeyboardInterrupt:
        if stop.woken:
            raise
    except SystemExit as e:  # ray.init's own SIGTERM handler, while ray.init runs: sys.exit(15)
        if stop.woken or e.code != signal.SIGTERM:
            raise
    else:
        return
    err.print(f"stopped before {what} had started; everything it started is stopped")
    raise typer.Exit(130)


def deploy(
    port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    host: Annotated[str, typer.Option(help="Bind address; keep loopback unless behind an authenticating "
                                      "proxy.")] = "127.0.0.1",
) -> None:
    """Start a local Prefect server (SQLite under the data root) with its UI, and a runner serving every
    deployment (the nightly one on its cron schedule) until Ctrl-C."""
    from sidestep.flows.ui import LocalPrefect
    from sidestep.serving.run import StopSignals

    root = _root()
    with (StopSignals() as stop, _stopped_while_starting(stop, "the Prefect server and runner"),
          LocalPrefect(root.prefect_home(), host=host, port=port, env={"SIDESTEP_HOME": str(root.root)}) as p):
        names = sorted(f"{d['name']}" for d in p.deployments())
        err.print(f"Prefect UI on {p.ui_url}  ·  {len(names)} deployments  ·  Ctrl-C to stop")
        stop.wait()
        err.print("stopping the runner, then the server")


def demo(
    port: Annotated[int, typer.Option(help="HTTP port for the demo server.")] = 8000,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="Leave the endpoint up after the demo, "
                                               "until Ctrl-C or SIGTERM (make serve).")] = False,
) -> None:
    """The Quickstart: reindex the sample corpus, train self-supervised verifiers where they pass their gate,
    evaluate, serve, query over HTTP with verify on, and print what to try next."""
    from sidestep.flows.demo import run_demo

    raise typer.Exit(run_demo(_settings(), _root(), port=port, console=out, keep_serving=keep_serving))
