"""A stop asked for while `sidestep serve` is still starting is not lost.

Ray and Serve take tens of seconds to start, and the public port may answer before Serve has finished; an
operator's Ctrl-C (or a supervisor's SIGTERM) in that window must stop the server and everything it started,
also in a process started with SIGINT ignored (a shell's background job), where Python's own KeyboardInterrupt
never comes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from sidestep.serving.run import StopSignals

RAY_PROCESSES = ("raylet", "gcs_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_signal_while_starting_raises_there_the_first_during_the_wait_ends_it_and_a_second_interrupts():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt, match="SIGTERM while starting"), StopSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here: the sleep never ends on its own
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with StopSignals() as stop:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        assert stop.wait() == signal.SIGINT and stop.woken
        # a second stop while the caller cleans up interrupts it, as a second Ctrl-C does anywhere
        with pytest.raises(KeyboardInterrupt, match="SIGTERM while stopping"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_stopped_while_starting_stops_everything_it_started(tmp_path, sig):
    port = _free_port()
    env = {**os.environ, "SIDESTEP_HOME": str(tmp_path / "root")}
    env.pop("HOME", None)  # the command sets up its own Ray HOME
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from sidestep.cli import app; app()", "serve", "--port",
                                 str(port), "--preset", "test"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_sigint_ignored)
    try:
        # starting: Ray's own processes run under it, and Serve has not finished (it takes far longer)
        main, deadline, ray = psutil.Process(proc.pid), time.monotonic() + 180, []
        while not ray:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "Ray did not start in 180 s"
            ray = [p for p in main.children(recursive=True) if p.name() in RAY_PROCESSES]
            time.sleep(0.2)
        assert "serving on" not in log.read_text()
        started = main.children(recursive=True)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert "stopped before serving had started" in text and "serving on" not in text
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.name() for p in alive]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
