"""Nothing leaves loopback: the serving stack runs under strace and every connect() is checked."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
ADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1", "0.0.0.0", "::")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (Debian package strace)")
def test_serving_stack_connects_only_to_loopback(sample, tmp_path):
    exe = VENV_BIN / "sidestep"
    if not exe.exists():
        pytest.skip("sidestep is not installed in .venv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "connect.log"
    env = {**os.environ, "SIDESTEP_HOME": str(sample.root.root)}
    env.pop("HOME", None)  # the command must set up its own Ray HOME
    proc = subprocess.Popen(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(log),
                             str(exe), "serve", "--port", str(port), "--preset", "test"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "sidestep serve exited early"
            assert time.monotonic() < deadline, "serving did not come up under strace"
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        r = httpx.post(url + "/search", json={"query": "database backups", "k": 3}, timeout=60)
        assert r.status_code == 200
    finally:
        for child in psutil.Process(proc.pid).children():  # Ctrl-C to `sidestep serve`, not to strace
            child.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    addrs = [a or b for a, b in ADDR.findall(text)]
    assert addrs, "strace recorded no inet connect at all: the check would be vacuous"
    outside = sorted({a for a in addrs if not _loopback(a)})
    assert outside == [], f"connections outside loopback: {outside}"
