"""Operations benchmark: hot swaps of the index under a steady 60-second load; writes the ops section of
BENCHMARKS.md.

The embedded sample corpus is reindexed by the real nightly flow into a fresh data root, the Ray Serve
application serves it on loopback, 4 clients send /search requests for DURATION seconds, and meanwhile
a separate process publishes new versions of the domain (forced republish) every PERIOD seconds. Every
request is counted: status codes, transport errors, and which index versions answered.

Usage: .venv/bin/python benchmarks/ops.py [--seconds 60] [--clients 4] [--every 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import BENCHMARKS_MD, BIN, bench_env, splice, write_last_run

from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import DataRoot

START, END = "<!-- ops:start -->", "<!-- ops:end -->"
DOMAIN = "handbook"
PUBLISH = textwrap.dedent("""
    from sidestep.config import default_settings
    from sidestep.storage.paths import DataRoot
    from sidestep.pipeline.index import publish_domain
    s = default_settings()
    print(publish_domain(DataRoot.from_settings(s), s, "handbook", force=True)["version"])
""")


def hot_swap_under_load(root: Path, seconds: float, clients: int, every: float) -> dict:
    from sidestep.serving.run import ServeHandle

    store = IndexStore(DataRoot(root))
    first = store.current(DOMAIN)
    codes: Counter = Counter()
    versions: Counter = Counter()
    transport = 0
    lock = threading.Lock()
    published: list[str] = []
    with ServeHandle(DataRoot(root), port=8767, preset="local") as h:
        stop = time.monotonic() + seconds

        def client(i: int) -> None:
            nonlocal transport
            queries = ["database backups", "who gets paged for a sev2", "rotate the api keys", "log retention"]
            with httpx.Client(base_url=h.url, timeout=30) as c:
                n = i
                while time.monotonic() < stop:
                    try:
                        r = c.post("/search", json={"query": queries[n % len(queries)], "domain": DOMAIN,
                                                    "k": 5})
                        with lock:
                            codes[r.status_code] += 1
                            if r.status_code == 200:
                                versions[r.json()["index_version"]] += 1
                    except httpx.HTTPError:
                        with lock:
                            transport += 1
                    n += clients

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        next_publish = time.monotonic() + every
        while time.monotonic() < stop - 5:
            if time.monotonic() >= next_publish:
                env = {**os.environ, "SIDESTEP_HOME": str(root)}
                p = subprocess.run([sys.executable, "-c", PUBLISH], env=env, capture_output=True, text=True,
                                   timeout=120)
                if p.returncode != 0:
                    raise SystemExit(p.stderr[-2000:])
                published.append(p.stdout.strip().splitlines()[-1])
                next_publish = time.monotonic() + every
            time.sleep(0.2)
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    total = sum(codes.values()) + transport
    return {"seconds": wall, "clients": clients, "requests": total, "status": dict(codes),
            "transport_errors": transport, "failed": total - codes.get(200, 0), "first_version": first,
            "published": published, "versions_seen": dict(versions),
            "last_published_served": bool(published) and published[-1] in versions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--every", type=float, default=15, help="seconds between publishes")
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ssb-ops-", dir="/tmp"))
    os.environ.update(bench_env(root, prefect_home=root / "prefect", quiet=True))
    os.environ.pop("SIDESTEP_CONFIG", None)
    r = subprocess.run([str(BIN / "sidestep"), "reindex", "--json"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    res = {"hot_swap": hot_swap_under_load(root, args.seconds, args.clients, args.every),
           "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "root": str(root)}
    write_last_run("ops", res)
    hs = res["hot_swap"]
    section = "\n".join([
        START, "## Operations: hot swap under load", "",
        f"Measured {res['date']} on this {res['cpus']}-core machine by `benchmarks/ops.py`: the sample corpus served "
        f"by Ray Serve on loopback, {hs['clients']} clients sending /search for {hs['seconds']:.0f} s while another "
        f"process published {len(hs['published'])} new versions of `{DOMAIN}` (forced republish).", "",
        f"- Requests: **{hs['requests']}**, failed **{hs['failed']}** (status codes {hs['status']}, "
        f"{hs['transport_errors']} transport errors).",
        f"- Versions that answered: {hs['versions_seen']}; the last published version was served: "
        f"{hs['last_published_served']}.",
        END])
    splice(Path(args.out), section, START, END)
    print(section)


if __name__ == "__main__":
    main()
