"""What every benchmark shares: where things are, the environment sidestep runs under, running a
sidestep command with its peak RSS and CPU time, the Ray processes' memory, and the files a
benchmark writes (its section of BENCHMARKS.md, its `<name>_last_run.json`).

Importing this module sets this process's defaults for an offline model hub and no telemetry
(Hugging Face reads them when it is imported), so import it before anything that loads a model.
Modules that import Prefect (sidestep.tasks, sidestep.flows) or Ray Serve (sidestep.serving) stay
imported inside the functions that use them: a benchmark points PREFECT_HOME and SIDESTEP_HOME at
its own data root first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
DATA = REPO.parent / "shared" / "data"  # the public datasets (../shared/data/README.md)
BIN = Path(sys.executable).parent

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
NO_TELEMETRY = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0"}

for _k, _v in {**OFFLINE, **NO_TELEMETRY}.items():
    os.environ.setdefault(_k, _v)


def bench_env(home: Path | str, *, prefect_home: Path | str | None = None, config: Path | str | None = None,
              quiet: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment plus a data root, an offline model hub and no telemetry; with
    `prefect_home` a private Prefect home, with `config` a config file, with `quiet` Prefect logging at
    WARNING; `extra` is added as given."""
    env = {**os.environ, "SIDESTEP_HOME": str(home), **OFFLINE, **NO_TELEMETRY}
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    if config is not None:
        env["SIDESTEP_CONFIG"] = str(config)
    if quiet:
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env | extra


def sh(args: list[str], env: dict) -> tuple[dict, float, float, float]:
    """Run a sidestep command; returns its JSON, wall seconds, its peak RSS in MB and its CPU seconds.

    CPU seconds make throughput comparable when something else shares the machine."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(BIN / "sidestep"), *args], env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage: its peak RSS
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.stderr.write(err.read()[-4000:])
            raise SystemExit(f"command failed: sidestep {' '.join(args)}")
        return json.loads(out.read()), wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def is_ray(p: psutil.Process) -> bool:
    """A Ray process (raylet, GCS, workers, Serve replicas)."""
    try:
        cmd = " ".join(p.cmdline())
    except Exception:
        return False
    return "ray" in cmd and ("raylet" in cmd or "default_worker" in cmd or "gcs_server" in cmd or "ray::" in cmd)


def ray_rss_mb() -> float:
    """Resident memory of every Ray process on the machine together, MB."""
    return sum(p.memory_info().rss for p in psutil.process_iter() if is_ray(p)) / 2**20


def machine() -> str:
    """The processor, its cores and the Python version, for a report's header."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def splice(path: Path, section: str, start: str, end: str) -> None:
    """Replace the text between the start and end markers of `path` with `section` (which carries
    the markers), or append it; the other benchmarks' sections stay as they are."""
    text = path.read_text() if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def last_run_path(name: str) -> Path:
    """benchmarks/<name>_last_run.json (run.py's own is benchmarks/last_run.json)."""
    return BENCH_DIR / f"{name}_last_run.json"


def read_last_run(name: str) -> dict:
    return json.loads(last_run_path(name).read_text())


def write_last_run(name: str, result: Any, **dumps: Any) -> Path:
    """Write a benchmark's full result beside it, indented; `dumps` goes to json.dumps (e.g. default=str)."""
    path = last_run_path(name)
    path.write_text(json.dumps(result, indent=2, **dumps))
    return path
