"""Soak: mixed /search and /recommend load at a fraction of measured capacity for MINUTES, a nightly
reindex every N minutes (each with a real corpus change, so each must publish), and one search replica
killed with kill -9 halfway; writes benchmarks/soak_last_run.json (and, for a full run of 30 minutes or
more, the soak section of BENCHMARKS.md).

The sample corpus (a private copy, which the nightlies edit) is reindexed by the real nightly flow into a
fresh data root and served by the real Ray Serve application with the `replicated` preset (three search
replicas on two cores behind the proxy, so one can die). Capacity is measured first with 4 closed-loop clients; then
an open-loop generator offers FRACTION x capacity (one /recommend for every three /search), each request
retried once if it fails, after the answer's Retry-After (0.5 s without one). Both run in a client process of
their own, in its own session, as clients on other machines would: inside the serving processes' session it
(niceness 0) would outrank Ray's workers (niceness 15) for the CPU, and the more requests were waiting, the
more of the replicas' CPU the generator would take. The nightlies run as `sidestep
reindex --nice N` (`--nightly-nice`, 10) in their own session, as cron would start them: on one machine the
batch job yields the cores to the serving processes (it lowers its session's autogroup as well, without
which Linux shares the CPU per session and niceness changes nothing). Reported: requests failed after the
retry, the serving processes' RSS at the start and the end of the load (median of the first and last 10%
of the samples), each nightly's outcome and what it published.

Targets: zero failed requests after one retry, RSS growth under 5%, every nightly
published.

Usage: .venv/bin/python benchmarks/soak.py [--minutes 30] [--fraction 0.7] [--nightly-every 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from chaos import QUERIES, SEARCH_DOMAINS, Load, make_root, mutate, reindex, replica_pids, serving_rss_mb, use_root
from common import BENCHMARKS_MD, machine, splice, write_last_run

from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import DataRoot

START, END = "<!-- soak:start -->", "<!-- soak:end -->"
PORT = 8771


class OpenLoop:
    """Requests offered at a fixed rate (not waiting for answers) from one asyncio loop, at most `in_flight` at a
    time (the rest wait their turn, which counts in their latency from when due), each retried once after its
    Retry-After (0.5 s when the answer gives none). One thread and aiohttp: a pool of hundreds of client threads
    spent most of a core on the GIL once a backlog formed, and httpx's async client spent 4-6 ms of CPU per
    request with a hundred connections open (aiohttp 1.3 ms, on a stub server); on a 2-core machine the client's
    CPU is the server's."""

    def __init__(self, url: str, rate: float, in_flight: int = 512):
        self.url, self.rate, self.in_flight = url, rate, in_flight
        self.outcomes: Counter = Counter()  # ok | ok_after_retry | failed
        self.codes: Counter = Counter()  # first-try status codes
        self.failures: list[dict] = []
        self.failed_at: list[float] = []  # seconds into the load
        self.t0 = time.monotonic()
        self.latency: list[float] = []
        self.by_minute: dict[int, list[tuple[float, float]]] = {}  # minute due -> (from due, first try's answer)

    async def _request(self, client: aiohttp.ClientSession, n: int) -> tuple[object, str, float]:
        if n % 4 == 3:
            body = {"history": [str(x) for x in (n % 40, (n * 7) % 40, (n * 13) % 40)], "k": 5, "domain": "shop"}
            path = "/recommend"
        else:
            body = {"query": QUERIES[n % len(QUERIES)], "domain": SEARCH_DOMAINS[n % len(SEARCH_DOMAINS)], "k": 5}
            path = "/search"
        try:
            async with client.post(path, json=body) as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            return type(e).__name__, path, 0.5
        try:  # a 503 says when to come back (Retry-After), as HTTP clients' retry policies honour
            wait = max(0.5, float(r.headers.get("retry-after", 0.5)))
        except ValueError:
            wait = 0.5
        return r.status, path, wait

    async def _one(self, client: aiohttp.ClientSession, slots: asyncio.Semaphore, n: int, due: float) -> None:
        async with slots:
            sent = time.monotonic()
            code, path, wait = await self._request(client, n)
            served_s = time.monotonic() - sent  # the server's part: from sending the first try to its answer
            first = code
            if code != 200:
                await asyncio.sleep(wait)
                code, path, _ = await self._request(client, n)
        self.codes[str(first)] += 1
        self.latency.append(time.monotonic() - due)
        self.by_minute.setdefault(int((due - self.t0) // 60), []).append((self.latency[-1], served_s))
        if first == 200:
            self.outcomes["ok"] += 1
        elif code == 200:
            self.outcomes["ok_after_retry"] += 1
        else:
            self.outcomes["failed"] += 1
            self.failed_at.append(round(due - self.t0, 1))
            if len(self.failures) < 50:
                self.failures.append({"path": path, "first": str(first), "retry": str(code),
                                      "at_s": round(due - self.t0, 1)})

    async def _offer(self, seconds: float, on_start) -> None:
        slots = asyncio.Semaphore(self.in_flight)
        connector = aiohttp.TCPConnector(limit=self.in_flight)
        async with aiohttp.ClientSession(self.url, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as client:
            self.t0 = time.monotonic()
            on_start(self.t0)
            tasks: set[asyncio.Task] = set()
            n = 0
            while (due := self.t0 + n / self.rate) < self.t0 + seconds:
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(client, slots, n, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.gather(*tasks)  # every request offered gets its answer

    def run(self, seconds: float, on_start=lambda t0: None) -> None:
        """Offers load for `seconds`, then waits for every answer; on_start(t0) when the first is due."""
        asyncio.run(self._offer(seconds, on_start))

    def report(self) -> dict:
        lat = sorted(self.latency)
        q = (lambda f: round(1000 * lat[int(f * (len(lat) - 1))], 1) if lat else None)  # noqa: E731
        total = sum(self.outcomes.values())
        return {"requests": total, "ok_first_try": self.outcomes["ok"],
                "ok_after_retry": self.outcomes["ok_after_retry"],
                "failed_after_retry": self.outcomes["failed"], "first_try_status": dict(self.codes),
                "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)}, "failures": self.failures,
                "failed_by_minute": dict(sorted(Counter(int(a // 60) for a in self.failed_at).items())),
                "by_minute": {m: _minute(v) for m, v in sorted(self.by_minute.items())}}


def _minute(samples: list[tuple[float, float]]) -> dict:
    """One minute of requests (by when they were due): how many, their latency from when they were due
    (which counts a wait in this client when the server falls behind) and the server's answer time."""
    due = sorted(a for a, _ in samples)
    served = sorted(b for _, b in samples)
    q = (lambda xs, f: round(1000 * xs[int(f * (len(xs) - 1))], 1))  # noqa: E731
    return {"requests": len(samples), "p50_ms": q(due, 0.5), "p99_ms": q(due, 0.99),
            "served_p50_ms": q(served, 0.5), "served_p99_ms": q(served, 0.99)}


def capacity(url: str, seconds: float) -> float:
    """Answers per second of 4 closed-loop clients sending the same mix (3 /search : 1 /recommend)."""
    with Load(url, clients=4, pause=0, recommend=True) as load:
        time.sleep(seconds)
    return load.report()["ok"] / seconds


def client_main(url: str, fraction: float, capacity_s: float, seconds: float, out: Path) -> None:
    """The client process: capacity, then the open loop for `seconds`; one line on stdout when the load
    starts ("load <capacity> <rate> <its start on the monotonic clock, which every process shares>"), the
    report as JSON in `out` when every request has its answer."""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    cap = capacity(url, capacity_s)
    rate = max(0.5, fraction * cap)
    load = OpenLoop(url, rate)
    cpu0 = time.process_time()
    load.run(seconds, on_start=lambda t0: print(f"load {cap} {rate} {t0}", flush=True))
    report = load.report()
    report["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - cpu0) / max(1, report["requests"]), 2)
    out.write_text(json.dumps(report))


def _exit_with_parent() -> None:
    """The client's stdin is a pipe from the soak, which closes however the soak ends (kill -9 included): then
    the client stops offering load (in a session of its own, no signal to the soak's group reaches it)."""
    sys.stdin.read()
    os._exit(3)


class ClientProcess:
    """benchmarks/soak.py --client-for URL in a session of its own (see the module's docstring)."""

    def __init__(self, url: str, fraction: float, capacity_s: float, seconds: float, out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client-for", url, "--fraction", str(fraction), "--capacity-seconds",
             str(capacity_s), "--client-seconds", str(seconds), "--client-out", str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def started(self) -> tuple[float, float, float]:
        """Blocks until the open loop starts; returns (capacity, offered rate, the load's start)."""
        for text in self.proc.stdout:  # anything a library prints before the line is skipped
            line = text.split()
            if len(line) == 4 and line[0] == "load":
                return float(line[1]), float(line[2]), float(line[3])
        self.proc.kill()
        raise SystemExit(f"the soak's client process did not start its load (exit {self.proc.wait()})")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"the soak's client process ended during the load (exit {self.proc.returncode})")

    def report(self) -> dict:
        """Waits for every request's answer (after a backlog, that can take many minutes)."""
        if self.proc.wait() != 0:
            raise SystemExit(f"the soak's client process failed (exit {self.proc.returncode})")
        return json.loads(self.out.read_text())

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run(minutes: float, fraction: float, nightly_every: float, kill_at: float, capacity_s: float,
        preset: str, resume: Path | None = None, nightly_nice: int = 10) -> dict:
    from sidestep.serving.run import ServeHandle

    root = resume or make_root("ssb-soak-")
    use_root(root)
    t_setup = time.monotonic()
    if resume is None or IndexStore(DataRoot(root / "data")).current("handbook") is None:
        first = reindex(root)
        if first.get("rc") != 0:
            raise SystemExit(f"the first reindex of the sample corpus failed: {first}")
    data = DataRoot(root / "data")
    rng = np.random.default_rng(0)
    run_id = int(time.time())
    nightlies: list[dict] = []
    rss: list[tuple[float, float]] = []
    kill: dict = {}
    duration = minutes * 60
    with ServeHandle(data, port=PORT, preset=preset) as h:
        setup_s = round(time.monotonic() - t_setup, 1)
        client = ClientProcess(h.url, fraction, capacity_s, duration, root / "client-report.json")
        stop = threading.Event()

        def nightly_loop(t0: float) -> None:
            i = 0
            while not stop.is_set():
                due = t0 + (i + 1) * nightly_every * 60
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
                i += 1
                changed = mutate(root / "src", run_id * 1000 + i, rng)  # a new change, also on a resumed root
                started = time.monotonic() - t0
                res = reindex(root, nice=nightly_nice)
                summary = res.pop("summary", {}) or {}
                nightlies.append({"n": i, "started_s": round(started, 1), **res, "changed": changed,
                                  "published": summary.get("published", []), "failed": summary.get("failed", {}),
                                  "pinned": summary.get("pinned", [])})
                print(f"soak: nightly {i} at {started:.0f} s: rc {res.get('rc')}, published "
                      f"{len(summary.get('published', []))}", file=sys.stderr)

        with client:
            cap, rate, t0 = client.started()
            print(f"soak: capacity {cap:.1f} answers/s, offering {rate:.1f}/s for {minutes:g} min", file=sys.stderr)
            worker = threading.Thread(target=nightly_loop, args=(t0,), daemon=True)
            worker.start()
            killed = False
            while (now := time.monotonic() - t0) < duration:
                client.check()
                rss.append((round(now, 1), serving_rss_mb()))
                if not killed and now >= kill_at * duration:
                    pids = sorted(replica_pids("search"))
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        kill = {"at_s": round(now, 1), "pid": pids[0], "replicas_before": len(pids)}
                        t_kill = time.monotonic()
                        while time.monotonic() - t_kill < 180:
                            after = replica_pids("search")
                            if len(after) >= len(pids) and pids[0] not in after:
                                kill["restart_s"] = round(time.monotonic() - t_kill, 1)
                                break
                            time.sleep(0.5)
                    killed = True
                time.sleep(min(10.0, max(0.0, duration - now)))
            stop.set()
            report = client.report()  # the open loop ends on its own clock; its requests drain
        worker.join(timeout=900)  # a nightly that started counts: wait for it
        health = httpx.get(h.url + "/healthz", timeout=30)
        served = {}
        for d in SEARCH_DOMAINS:
            r = httpx.post(h.url + "/search", json={"query": "test", "domain": d, "k": 1}, timeout=30)
            served[d] = {"status": r.status_code, "served": r.json().get("index_version") if r.status_code == 200
                         else None, "current": IndexStore(data).current(d)}
    k = max(1, len(rss) // 10)
    start_mb = statistics.median(v for _, v in rss[:k])
    end_mb = statistics.median(v for _, v in rss[-k:])
    growth = 100 * (end_mb - start_mb) / start_mb if start_mb else None
    every_published = bool(nightlies) and all(n.get("rc") == 0 and n["published"] and not n["failed"]
                                              for n in nightlies)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "machine": machine(), "preset": preset,
        "minutes": minutes, "fraction": fraction, "nightly_every_min": nightly_every, "nightly_nice": nightly_nice,
        "setup_s": setup_s,
        "capacity_qps": round(cap, 2), "offered_qps": round(rate, 2), "load": report,
        "replica_kill": kill, "nightlies": nightlies, "every_nightly_published": every_published,
        "rss_mb": {"start": round(start_mb), "end": round(end_mb), "growth_pct": round(growth, 2) if growth is not None
                   else None, "samples": rss},
        "healthz_after": {"status": health.status_code, "body_status": health.json().get("status")},
        "served_after": served,
        "loadavg": os.getloadavg(),
        "targets": {"zero_failed_after_retry": report["failed_after_retry"] == 0,
                    "rss_growth_under_5pct": growth is not None and growth < 5,
                    "every_nightly_published": every_published},
    }


def render(res: dict) -> str:
    load, rss, t = res["load"], res["rss_mb"], res["targets"]
    lines = [START, "## Soak", "",
             f"{res['date']}, {res['machine']}, preset `{res['preset']}`: {res['minutes']:g} minutes of mixed "
             "/search and "
             f"/recommend at {res['fraction']:.0%} of the measured capacity ({res['capacity_qps']} answers/s → "
             f"{res['offered_qps']} offered/s), a nightly reindex with a corpus change every "
             f"{res['nightly_every_min']:g} minutes (niceness {res.get('nightly_nice', 0)}), "
             "one search replica killed (kill -9) at "
             f"{res['replica_kill'].get('at_s', '-')} s (back after {res['replica_kill'].get('restart_s', '-')} s). "
             "Load average at the end: " + ", ".join(f"{x:.1f}" for x in res["loadavg"]) + ".", "",
             "| measure | value | target |", "|---|---|---|",
             f"| requests | {load['requests']} | |",
             f"| failed after one retry | {load['failed_after_retry']} | 0 "
             f"{'✓' if t['zero_failed_after_retry'] else '✗'} |",
             f"| ok only after the retry | {load['ok_after_retry']} | |",
             f"| latency p50 / p99 (ms, from when due) | {load['latency_ms']['p50']} / {load['latency_ms']['p99']} | |",
             *([f"| worst minute's p99 from when due / of the server's answer (ms) | "
                f"{max(m['p99_ms'] for m in load['by_minute'].values())} / "
                f"{max(m['served_p99_ms'] for m in load['by_minute'].values())} | |"] if load.get("by_minute") else []),
             f"| serving RSS start → end (MB) | {rss['start']} → {rss['end']} ({rss['growth_pct']}%) | < 5% "
             f"{'✓' if t['rss_growth_under_5pct'] else '✗'} |",
             f"| nightlies published | {sum(bool(n['published']) for n in res['nightlies'])} of "
             f"{len(res['nightlies'])} | all {'✓' if t['every_nightly_published'] else '✗'} |",
             "", "`make bench-soak` reruns it (`benchmarks/soak.py --minutes 30`); every figure is in "
             "benchmarks/soak_last_run.json.", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the load (default 30)")
    ap.add_argument("--fraction", type=float, default=0.7, help="offered load as a fraction of capacity")
    ap.add_argument("--nightly-every", type=float, default=5.0, help="minutes between nightly reindexes")
    ap.add_argument("--kill-at", type=float, default=0.5, help="when to kill a search replica (fraction of the run)")
    ap.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the capacity measurement")
    ap.add_argument("--preset", default="replicated", help="serving preset (needs >= 2 search replicas)")
    ap.add_argument("--md", action=argparse.BooleanOptionalAction, default=None,
                    help="write the BENCHMARKS.md section (default: only for runs of 30 minutes or more)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    ap.add_argument("--resume", type=Path, help="reuse the root of an earlier run (skips its first reindex)")
    ap.add_argument("--nightly-nice", type=int, default=10,
                    help="CPU niceness of the nightly reindexes (0: same priority as serving)")
    ap.add_argument("--client-for", help=argparse.SUPPRESS)  # the client process (ClientProcess)
    ap.add_argument("--client-seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--client-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_for:
        client_main(args.client_for, args.fraction, args.capacity_seconds, args.client_seconds, args.client_out)
        return
    with contextlib.redirect_stdout(sys.stderr):  # Ray's driver prints worker deaths: stdout holds only the result
        res = run(args.minutes, args.fraction, args.nightly_every, args.kill_at, args.capacity_seconds, args.preset,
                  args.resume, args.nightly_nice)
    path = write_last_run("soak", res, default=str)
    if args.md if args.md is not None else args.minutes >= 30:
        splice(Path(BENCHMARKS_MD), render(res), START, END)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(render(res))
        print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
