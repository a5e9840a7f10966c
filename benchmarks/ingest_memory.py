"""Peak memory of `sidestep ingest` on a large file of valid records: the real command line (Prefect flow
included) in a subprocess on a fresh data root, its resident memory sampled with its children's.

Target: under 1 GB peak RSS for a 2 GB JSONL file. Writes benchmarks/ingest_memory_last_run.json.

Usage: nice -n 5 .venv/bin/python benchmarks/ingest_memory.py [--gb 2] [--format jsonl|json|csv] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
OUT = HERE / "ingest_memory_last_run.json"
SIDESTEP = Path(sys.executable).with_name("sidestep")
WORDS = ["tide", "pool", "heron", "otter", "ferry", "ticket", "harbour", "lantern", "granite", "meadow", "orchard",
         "signal", "valve", "turbine", "ledger", "audit", "backup", "replica", "shard", "cipher", "quorum",
         "latency", "gradient", "lattice", "prism"]


def generate(path: Path, n_bytes: int, fmt: str, text_bytes: int = 4000, seed: int = 0) -> int:
    """Valid records of about `text_bytes` of text each until the file holds `n_bytes`; returns the count."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(text_bytes // 7)) for _ in range(256)]
    n = written = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f) if fmt == "csv" else None
        if w:
            w.writerow(["id", "title", "text"])
        elif fmt == "json":
            f.write("[\n")
        while written < n_bytes:
            rec = {"id": f"doc-{n}", "title": f"Record {n}", "text": f"{pool[n % len(pool)]} number {n}."}
            if w:
                w.writerow([rec["id"], rec["title"], rec["text"]])
                written += len(rec["text"]) + 30
            else:
                line = ("," if fmt == "json" and n else "") + json.dumps(rec) + "\n"
                f.write(line)
                written += len(line)
            n += 1
        if fmt == "json":
            f.write("]\n")
    return n


class Sampler(threading.Thread):
    """Resident memory of a process tree, sampled every `every` seconds; `peak` in bytes."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.every, self.peak, self.samples = psutil.Process(pid), every, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            self.peak, self.samples = max(self.peak, total), self.samples + 1
            self.stop.wait(self.every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--format", choices=["jsonl", "json", "csv"], default="jsonl")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ingest-mem-"))
    try:
        src = tmp / f"corpus.{args.format}"
        t0 = time.perf_counter()
        n = generate(src, int(args.gb * 1e9), args.format)
        gen_s = time.perf_counter() - t0
        env = {**os.environ, "SIDESTEP_HOME": str(tmp / "root"), "PREFECT_HOME": str(tmp / "prefect"),
               "SIDESTEP_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
               # a loaded machine can take minutes to start the flow's temporary Prefect server
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900"}
        env.pop("SIDESTEP_CONFIG", None)
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        t1 = time.perf_counter()
        proc = subprocess.Popen([str(SIDESTEP), "ingest", str(src), "--domain", "bench", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        out, err = proc.communicate()
        seconds = time.perf_counter() - t1
        sampler.stop.set()
        sampler.join()
        import resource

        ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if proc.returncode != 0:
            raise SystemExit(f"sidestep ingest failed ({proc.returncode}):\n{out[-4000:]}\n{err[-4000:]}")
        report = json.loads(out)
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "format": args.format,
            "file_bytes": src.stat().st_size, "records": n, "generate_seconds": round(gen_s, 1),
            "ingest_seconds": round(seconds, 1), "peak_rss_bytes": sampler.peak,
            "peak_rss_mb": round(sampler.peak / 2**20, 1), "largest_child_maxrss_mb": round(ru_children / 2**20, 1),
            "samples": sampler.samples, "target_mb": 1024, "met": sampler.peak < 2**30,
            "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
            "ingest": {k: report.get(k) for k in ("read", "new", "quarantined", "duplicates", "live_documents")},
        }
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result) if args.json else
              f"{result['file_bytes'] / 1e9:.2f} GB {args.format}, {n} records: peak RSS {result['peak_rss_mb']} MiB "
              f"in {result['ingest_seconds']} s (target < 1024 MiB: {'met' if result['met'] else 'NOT met'})")
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
