"""The demo's pieces that need no server: `--keep-serving` waits for SIGTERM (or Ctrl-C) and restores the
handlers it replaced; what to try next names the endpoint, the CLI and the data root."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

from rich.console import Console

from sidestep.flows.demo import _wait_for_stop, try_next
from sidestep.storage.paths import DataRoot


def test_keep_serving_waits_until_sigterm_and_restores_the_handlers():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    out = io.StringIO()
    t0 = time.perf_counter()
    timer.start()
    _wait_for_stop(Console(file=out))
    assert time.perf_counter() - t0 >= 0.25 and "stopping" in out.getvalue()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_try_next_names_the_endpoint_the_cli_and_the_data_root(tmp_path):
    lines = try_next(DataRoot(tmp_path), "http://127.0.0.1:8123", [("handbook", "roll back a bad deploy")],
                     serving=True)
    text = "\n".join(lines)
    assert "curl -s http://127.0.0.1:8123/search" in text and '"domain": "handbook"' in text
    assert f"--home {tmp_path} search 'roll back a bad deploy' --domain handbook" in text
    assert f"--home {tmp_path} status" in text
