"""Fault scenarios of the operations issue, run against the real stack; writes the chaos section of
BENCHMARKS.md and benchmarks/chaos_last_run.json.

a. kill-nightly: `sidestep reindex` (the nightly Prefect flow) is kill -9'd at a random moment, TRIALS
   times, while Ray Serve answers a steady load. After each kill every CURRENT must name a complete version
   that verifies and loads (checksums, counts, golden queries), every answer must come from such a version,
   and a rerun must finish the job (the trial's new documents searchable, no staging left behind).
b. replica-kill: one of the search replicas is kill -9'd during a steady load; Ray Serve must restart it,
   and the errors clients see (one retry allowed) are counted.
c. overload: offered load at twice the measured capacity: excess requests must get a fast 503 with
   Retry-After, none may time out, and the serving processes' memory must stay bounded.
d. corrupt-index: CURRENT is pointed at a version whose index file was damaged after publish: serving must
   refuse it and keep answering from the old version; `sidestep rollback` repairs the pointer.
e. disk-full: the data root lives on a small tmpfs filled to leave less room than a version needs; the
   publish must fail with no partial version current, and succeed once space is back.
f. hot-swap: benchmarks/ops.py's 60-second load with forced republishes: zero failed requests.

Usage: .venv/bin/python benchmarks/chaos.py [--only a,b,...] [--trials 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil
from common import BENCHMARKS_MD, BIN, bench_env, last_run_path, read_last_run, splice, write_last_run
from ops import hot_swap_under_load

from sidestep.config import SAMPLES_DIR
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.atomic import write_text
from sidestep.storage.indexes import load_version, read_chunks
from sidestep.storage.paths import SHARED, DataRoot
from sidestep.storage.recstore import load_codebook, load_table_version

START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"
PORT = 8768
SEARCH_DOMAINS = ("handbook", "recipes", "field-notes")
QUERIES = ["database backups", "who gets paged for a sev2", "lemon roast chicken", "heron by the river",
           "slow cooked stew", "oak tree bark"]


# ----------------------------------------------------------------------------- shared helpers


def make_root(prefix: str) -> Path:
    """A fresh data root whose config points at a private copy of the sample corpus (trials edit it)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    shutil.copytree(SAMPLES_DIR, root / "src")
    return root


def env_for(root: Path) -> dict:
    return bench_env(root / "data", prefect_home=root / "prefect", config=root / "src" / "sidestep.toml", quiet=True,
                     TOKENIZERS_PARALLELISM="false")


def use_root(root: Path) -> None:
    """Make `root` this process's data root (the serving app and the stores read the environment)."""
    for k, v in env_for(root).items():
        os.environ[k] = v


def reindex(root: Path, *extra: str, kill_after: float | None = None, nice: int = 0) -> dict:
    """Run `sidestep reindex` in its own session (as cron or a scheduler would); with kill_after, SIGKILL its
    process group then. `nice` is its `--nice` (a batch job below the serving processes that share the
    machine: leading its own session, it lowers its autogroup too, which plain `nice` does not)."""
    log = root / f"reindex-{time.monotonic_ns()}.log"
    with open(log, "w") as err, tempfile.TemporaryFile("w+") as out:
        t0 = time.monotonic()
        p = subprocess.Popen([str(BIN / "sidestep"), "reindex", "--json", "--nice", str(nice), *extra],
                             env=env_for(root),
                             stdout=out,
                             stderr=err, text=True, start_new_session=True)
        try:
            rc = p.wait(timeout=kill_after if kill_after is not None else 900)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return {"killed": True, "seconds": round(time.monotonic() - t0, 2)}
        out.seek(0)
        text = out.read()
    if rc != 0:
        return {"killed": False, "rc": rc, "seconds": round(time.monotonic() - t0, 2),
                "error": log.read_text()[-1500:]}
    return {"killed": False, "rc": 0, "seconds": round(time.monotonic() - t0, 2),
            "summary": json.loads(text.strip().splitlines()[-1])}


def check_stores(data: Path) -> dict:
    """Every CURRENT of every store must name a complete version that verifies and loads."""
    root = DataRoot(data)
    bad, valid, staging = [], set(), 0
    for kind in ("indexes", "tables", "codebooks", "verifiers"):
        store = IndexStore(root, kind)
        for d in store.domains() if kind != "codebooks" else ([SHARED] if store.base(SHARED).is_dir() else []):
            staging += len(list(store.base(d).glob(".staging-*")))
            cur = store.current(d)
            if cur is None:
                continue
            try:
                store.verify(d, cur)
                if kind == "indexes":
                    load_version(store, d, cur)
                elif kind == "tables":
                    load_table_version(root, d, cur)
                elif kind == "codebooks":
                    load_codebook(root, cur)
                valid.add(f"{d}/{cur}")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                bad.append(f"{kind} {d}/{cur}: {type(e).__name__}: {e}")
            for v in store.versions(d):
                try:
                    store.verify(d, v)
                    valid.add(f"{d}/{v}")
                except Exception:  # noqa: BLE001, S112 - only verified versions count as valid
                    continue
    return {"bad": bad, "valid": valid, "staging": staging}


class Load:
    """Client threads sending /search (and /recommend) until stopped; every answer is recorded."""

    def __init__(self, url: str, clients: int = 2, pause: float = 0.05, retries: int = 0, recommend: bool = True):
        self.url, self.clients, self.pause, self.retries, self.recommend = url, clients, pause, retries, recommend
        self.codes: Counter = Counter()
        self.first_try_errors = 0
        self.transport = 0
        self.served: Counter = Counter()
        self.latency: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _request(self, c, n: int):
        if self.recommend and n % 4 == 3:
            return c.post("/recommend", json={"history": ["0", "2", "6"], "k": 5, "domain": "shop"}), "shop"
        d = SEARCH_DOMAINS[n % len(SEARCH_DOMAINS)]
        return c.post("/search", json={"query": QUERIES[n % len(QUERIES)], "domain": d, "k": 5}), d

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            n = i
            while not self._stop.is_set():
                t0 = time.perf_counter()
                code, body, domain = None, None, None
                for attempt in range(self.retries + 1):
                    try:
                        r, domain = self._request(c, n)
                        code = r.status_code
                        body = r.json() if code == 200 else None
                    except httpx.HTTPError:
                        code = "transport"
                    if code == 200:
                        break
                    if attempt == 0:
                        with self._lock:
                            self.first_try_errors += 1
                    time.sleep(0.5 * (attempt + 1))
                with self._lock:
                    self.codes[code] += 1
                    self.latency.append(time.perf_counter() - t0)
                    if body is not None:
                        self.served[f"{domain}/{body['index_version']}"] += 1
                n += self.clients
                time.sleep(self.pause)

    def report(self) -> dict:
        total = sum(self.codes.values())
        return {"requests": total, "ok": self.codes.get(200, 0), "failed": total - self.codes.get(200, 0),
                "status": {str(k): v for k, v in self.codes.items()}, "first_try_errors": self.first_try_errors}


def serving_rss_mb() -> float:
    total = 0
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            if any("ray" in part for part in (p.info["cmdline"] or [])[:2]) or (p.info["name"] or "").startswith("ray"):
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


# ----------------------------------------------------------------------------- a. kill -9 the nightly flow


def mutate(src: Path, i: int, rng: np.random.Generator) -> dict:
    """One trial's corpus change: a new recipe, a new field note and a new shop user."""
    with open(src / "recipes" / "recipes.jsonl", "a") as f:
        f.write(json.dumps({"recipe_id": f"chaos-{i}", "name": f"Trial {i} barley and leek broth",
                            "body": f"Simmer barley with leeks for trial number {i}; season with dill."}) + "\n")
    (src / "field-notes" / "chaos").mkdir(exist_ok=True)
    (src / "field-notes" / "chaos" / f"trial-{i}.md").write_text(f"# Trial {i}\n\nA grey wagtail at the weir, "
                                                                 f"note {i}.\n")
    inter_path = src / "shop" / "shop.inter.json"
    inter = json.loads(inter_path.read_text())
    inter[f"chaos-{i}"] = [int(x) for x in rng.choice(40, size=5, replace=False)]
    inter_path.write_text(json.dumps(inter))
    return {"recipes": f"chaos-{i}", "field-notes": f"chaos/trial-{i}.md"}


def current_doc_ids(data: Path, domain: str) -> set[str]:
    store = IndexStore(DataRoot(data))
    return set(read_chunks(store, domain, store.current(domain))["doc_id"].to_pylist())


def kill_nightly(trials: int, seed: int) -> dict:
    from sidestep.serving.run import ServeHandle

    rng = np.random.default_rng(seed)
    root = make_root("ssb-chaos-a-")
    use_root(root)
    first = reindex(root)
    if first.get("rc") != 0:
        raise SystemExit(f"initial reindex failed: {first}")
    # calibrate: how long a plain nightly (new documents) and a forced one (refit) take on this machine
    calib = {}
    for kind, extra in (("plain", ()), ("force", ("--force",))):
        mutate(root / "src", -1 if kind == "plain" else -2, rng)
        r = reindex(root, *extra)
        if r.get("rc") != 0:
            raise SystemExit(f"calibration reindex failed: {r}")
        calib[kind] = r["seconds"]
    rows, valid = [], set(check_stores(root / "data")["valid"])
    with ServeHandle(DataRoot(root / "data"), port=PORT, preset="local") as h, Load(h.url) as load:
        for i in range(trials):
            kind = "force" if i % 2 else "plain"
            extra = ("--force",) if kind == "force" else ()
            want = mutate(root / "src", i, rng)
            at = float(rng.uniform(1.0, 0.95 * calib[kind]))
            killed = reindex(root, *extra, kill_after=at)
            after_kill = check_stores(root / "data")
            valid |= after_kill["valid"]
            rerun = reindex(root)
            after = check_stores(root / "data")
            valid |= after["valid"]
            found = {d: want[d] in current_doc_ids(root / "data", d) for d in want} if rerun.get("rc") == 0 else {}
            row = {"trial": i, "kind": kind, "kill_at_s": round(at, 2), "killed": killed["killed"],
                   "bad_after_kill": after_kill["bad"], "rerun_rc": rerun.get("rc"),
                   "rerun_seconds": rerun.get("seconds"), "rerun_error": rerun.get("error"),
                   "bad_after_rerun": after["bad"], "staging_after_rerun": after["staging"],
                   "new_docs_searchable": found}
            rows.append(row)
            print(json.dumps(row), flush=True)
        time.sleep(3)  # the last answers come in
    served = load.served
    unknown = sorted(v for v in served if v not in valid)
    final = reindex(root)
    return {"trials": trials, "calibration_s": calib, "rows": rows,
            "killed": sum(r["killed"] for r in rows),
            "current_invalid_after_kill": sum(bool(r["bad_after_kill"]) for r in rows),
            "rerun_failed": sum(r["rerun_rc"] != 0 for r in rows),
            "rerun_incomplete": sum(not all(r["new_docs_searchable"].values()) or not r["new_docs_searchable"]
                                    for r in rows),
            "staging_left": sum(r["staging_after_rerun"] for r in rows),
            "load": load.report(), "versions_served": len(served), "served_from_unverified": unknown,
            "final_rerun_published": len(final.get("summary", {}).get("published", [])) if final.get("rc") == 0
            else None, "root": str(root)}


# ----------------------------------------------------------------------------- b. kill a serving replica


def replica_pids(deployment: str) -> set[int]:
    tag = f"ServeReplica:sidestep:{deployment}"
    out = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(tag in part for part in p.info["cmdline"] or []):
                out.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def replica_kill(root: Path, seconds: float = 40, kill_at: float = 12) -> dict:
    from sidestep.serving.run import ServeHandle

    use_root(root)
    with ServeHandle(DataRoot(root / "data"), port=PORT, preset="replicated") as h:
        before = replica_pids("search")
        if len(before) < 2:
            raise SystemExit(f"expected several search replicas, found {before}")
        with Load(h.url, clients=4, retries=1, recommend=False) as load:
            time.sleep(kill_at)
            victim = sorted(before)[0]
            os.kill(victim, signal.SIGKILL)
            t_kill = time.monotonic()
            restart_s, after = None, set()
            while time.monotonic() - t_kill < max(seconds - kill_at, 120):
                after = replica_pids("search")
                if restart_s is None and len(after) >= len(before) and victim not in after:
                    restart_s = round(time.monotonic() - t_kill, 1)
                if restart_s is not None and time.monotonic() - t_kill >= seconds - kill_at:
                    break
                time.sleep(0.5)
        restarted = restart_s is not None
        ok_after = httpx.post(h.url + "/search", json={"query": "backups", "domain": "handbook"},
                              timeout=30).status_code
    return {"seconds": seconds, "clients": 4, "killed_pid": victim, "replicas_before": len(before),
            "replicas_after": len(after), "restarted": restarted, "restart_s": restart_s,
            "status_after": ok_after, "load": load.report()}


# ----------------------------------------------------------------------------- c. overload


def overload(root: Path, seconds: float = 20, factor: float = 2.0) -> dict:
    from sidestep.serving.run import ServeHandle

    use_root(root)
    with ServeHandle(DataRoot(root / "data"), port=PORT, preset="local") as h:
        with Load(h.url, clients=4, pause=0, recommend=False) as load:
            time.sleep(10)
        capacity = load.report()["ok"] / 10
        rate = factor * capacity
        rss0, peak = serving_rss_mb(), 0.0
        results: list[tuple] = []
        lock = threading.Lock()
        client = httpx.Client(base_url=h.url, timeout=10, limits=httpx.Limits(max_connections=512))

        def one(n: int, t0: float) -> None:
            """t0 is when the request was due: time spent waiting for a free client thread counts too."""
            try:
                r = client.post("/search", json={"query": QUERIES[n % len(QUERIES)], "domain": "handbook", "k": 5})
                rec = (r.status_code, time.monotonic() - t0, r.headers.get("retry-after"))
            except httpx.TimeoutException:
                rec = ("timeout", time.monotonic() - t0, None)
            except httpx.HTTPError:
                rec = ("transport", time.monotonic() - t0, None)
            with lock:
                results.append(rec)

        with ThreadPoolExecutor(max_workers=256) as pool:
            t0, n, next_rss = time.monotonic(), 0, 0.0
            while time.monotonic() - t0 < seconds:
                target = t0 + n / rate
                now = time.monotonic()
                if target > now:
                    time.sleep(target - now)
                pool.submit(one, n, target)
                n += 1
                if now > next_rss:
                    peak, next_rss = max(peak, serving_rss_mb()), now + 1.0
        client.close()
        rss1 = serving_rss_mb()
    late = sum(r[0] in (200, 503, 429) and r[1] > 10 for r in results)  # answered, but after the client timeout
    codes = Counter(r[0] for r in results)
    rejected = [r for r in results if r[0] in (503, 429)]
    ok = sorted(r[1] for r in results if r[0] == 200)
    lat = sorted(r[1] for r in rejected)
    return {"capacity_qps": round(capacity, 1), "offered_qps": round(rate, 1), "seconds": seconds,
            "requests": len(results), "status": {str(k): v for k, v in codes.items()},
            "timeouts": codes.get("timeout", 0) + late, "transport_errors": codes.get("transport", 0),
            "ok_p50_ms": round(1000 * ok[len(ok) // 2], 1) if ok else None,
            "ok_p99_ms": round(1000 * ok[int(0.99 * (len(ok) - 1))], 1) if ok else None,
            "rejected_with_retry_after": sum(r[2] is not None for r in rejected),
            "rejected_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "rejected_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
            "serving_rss_mb": {"before": round(rss0), "peak": round(peak), "after": round(rss1)}}


# ----------------------------------------------------------------------------- d. corrupted index


def corrupt_index(root: Path, seconds: float = 20) -> dict:
    from sidestep.serving.run import ServeHandle

    use_root(root)
    store = IndexStore(DataRoot(root / "data"))
    good = store.current("handbook")
    with ServeHandle(DataRoot(root / "data"), port=PORT, preset="local") as h:
        with Load(h.url, clients=2, recommend=False) as load:
            time.sleep(3)
            bad = new_version_name("corrupted")
            shutil.copytree(store.path("handbook", good), store.path("handbook", bad))
            f = store.path("handbook", bad) / "index.faiss"
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF  # a bit flip on disk after the version was sealed
            f.write_bytes(bytes(data))
            write_text(store.base("handbook") / "CURRENT", bad + "\n")  # the pointer moves past verification
            time.sleep(seconds)
            health = httpx.get(h.url + "/healthz", timeout=10).json()
        served = {v for v in load.served if v.startswith("handbook/")}
        rb = subprocess.run([str(BIN / "sidestep"), "rollback", "--domain", "handbook", "--to", good, "--json"],
                            env=env_for(root), capture_output=True, text=True)
    return {"seconds": seconds, "load": load.report(), "handbook_versions_served": sorted(served),
            "served_corrupt": f"handbook/{bad}" in served, "health_reports_refusal": bad in json.dumps(health),
            "rollback_rc": rb.returncode, "current_after_rollback": store.current("handbook"), "good": good}


# ----------------------------------------------------------------------------- e. disk full


DISK_FULL_SCRIPT = """
import json, sys
from sidestep.config import default_settings
from sidestep.storage.paths import DataRoot
from sidestep.pipeline.index import publish_domain
s = default_settings()
try:
    out = publish_domain(DataRoot.from_settings(s), s, "handbook", force=True)
    print(json.dumps({"ok": True, "version": out["version"]}))
except Exception as e:  # ENOSPC reaches us as OSError, or wrapped by faiss as RuntimeError
    print(json.dumps({"ok": False, "errno": getattr(e, "errno", None), "type": type(e).__name__,
                      "error": str(e)[:300]}))
"""


def disk_full(root: Path, levels: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    """Needs mount rights (root, or a user namespace via `unshare -rm`)."""
    if os.geteuid() != 0:
        if shutil.which("unshare") is None:
            return {"skipped": "needs root or unshare to mount a small tmpfs"}
        p = subprocess.run(["unshare", "-rm", sys.executable, __file__, "--disk-full-inner", str(root)],
                           capture_output=True, text=True, env=env_for(root))
        if p.returncode != 0:
            return {"skipped": f"unshare failed: {p.stderr[-300:]}"}
        return json.loads(p.stdout.strip().splitlines()[-1])
    return disk_full_inner(root, levels)


def disk_full_inner(root: Path, levels: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    src_data = root / "data"
    used = sum(f.stat().st_size for f in src_data.rglob("*") if f.is_file())
    store0 = IndexStore(DataRoot(src_data))
    version_bytes = sum(f.stat().st_size for f in store0.path("handbook", store0.current("handbook")).iterdir())
    rows = []
    for level in levels:
        mnt = Path(tempfile.mkdtemp(prefix="ssb-full-", dir="/tmp"))
        size = used + 64 * 2**20  # the copy, plus room that the filler then takes away
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        try:
            data = mnt / "data"
            shutil.copytree(src_data, data, ignore=shutil.ignore_patterns("ray", "prefect"))
            free = shutil.disk_usage(mnt).free
            room = int(level * version_bytes)
            with open(mnt / "filler", "wb") as f:
                f.truncate(0)
                chunk = b"\0" * 2**20
                left = max(free - room, 0)
                while left > 0:
                    f.write(chunk[:min(len(chunk), left)])
                    left -= min(len(chunk), left)
            store = IndexStore(DataRoot(data))
            before = store.current("handbook")
            env = {**env_for(root), "SIDESTEP_HOME": str(data)}
            p = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT], env=env, capture_output=True, text=True)
            res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                "ok": False, "crash": p.stderr[-300:]}
            check = check_stores(data)
            after_full = {"current_unchanged": store.current("handbook") == before, "bad": check["bad"],
                          "staging_left": check["staging"],
                          "versions": len(store.versions("handbook"))}
            (mnt / "filler").unlink()
            p2 = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT], env=env, capture_output=True, text=True)
            res2 = json.loads(p2.stdout.strip().splitlines()[-1]) if p2.returncode == 0 else {"ok": False}
            rows.append({"room_bytes": room, "version_bytes": version_bytes, "publish": res, **after_full,
                         "after_space_freed": res2.get("ok") and store.current("handbook") == res2.get("version")
                         and not check_stores(data)["bad"]})
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
            shutil.rmtree(mnt, ignore_errors=True)
    return {"trials": len(rows), "rows": rows,
            "refused": sum(r["publish"].get("errno") == 28 for r in rows),
            "other_failures": sum(not r["publish"]["ok"] and r["publish"].get("errno") != 28 for r in rows),
            "errors": sorted({f"{r['publish'].get('type')}: {r['publish'].get('error', '')[:80]}" for r in rows
                              if not r["publish"]["ok"]}),
            "partial_current": sum(not r["current_unchanged"] or bool(r["bad"]) for r in rows
                                   if not r["publish"]["ok"]),
            "staging_left": sum(r["staging_left"] for r in rows),
            "recovered": sum(bool(r["after_space_freed"]) for r in rows)}


# ----------------------------------------------------------------------------- f. hot swap


def hot_swap(root: Path) -> dict:
    use_root(root)
    return hot_swap_under_load(root / "data", 60, 4, 15)


# ----------------------------------------------------------------------------- report


def render(res: dict) -> str:
    lines = [START, "## Operations: faults", "",
             f"Measured {res['date']} on this {res['cpus']}-core machine by `benchmarks/chaos.py` (`make chaos`), "
             "against the real stack: `sidestep reindex` processes, Ray Serve on loopback, the sample corpus.", "",
             "| scenario | trials / requests | outcome |", "|---|---|---|"]
    a = res.get("a")
    if a:
        lines.append(
            f"| a. kill -9 the nightly flow at a random moment | {a['trials']} trials ({a['killed']} killed "
            f"before finishing); {a['load']['requests']} requests meanwhile | CURRENT invalid after a kill: "
            f"**{a['current_invalid_after_kill']}**; answers from an unverified version: "
            f"**{len(a['served_from_unverified'])}**; failed requests: **{a['load']['failed']}**; reruns failed: "
            f"**{a['rerun_failed']}**, incomplete: **{a['rerun_incomplete']}**; staging folders left after a "
            f"rerun: {a['staging_left']}; {a['versions_served']} versions answered; a final rerun published "
            f"{a['final_rerun_published']} (the job was done) |")
    b = res.get("b")
    if b:
        lines.append(
            f"| b. kill -9 one of {b['replicas_before']} search replicas under load | {b['load']['requests']} "
            "requests, "
            f"{b['clients']} clients, {b['seconds']:.0f} s | replica restarted: **{b['restarted']}** "
            f"(a new replica process {b['restart_s']} s after the kill); client errors on the first "
            f"try: {b['load']['first_try_errors']}, after one retry: **{b['load']['failed']}** |")
    c = res.get("c")
    if c:
        lines.append(
            f"| c. offered load {c['offered_qps']} q/s = 2 × measured capacity {c['capacity_qps']} q/s | "
            f"{c['requests']} requests in {c['seconds']:.0f} s | status {c['status']} (goodput "
            f"{c['status'].get('200', 0) / c['seconds']:.1f} q/s; answered requests p50 {c.get('ok_p50_ms')} ms / p99 "
            f"{c.get('ok_p99_ms')} ms from when due; the load generator runs on the same 2 cores); timeouts "
            f"(none answered, or answered after 10 s from when due) **{c['timeouts']}**; "
            f"rejections with Retry-After {c['rejected_with_retry_after']}, p50 {c['rejected_p50_ms']} ms / p99 "
            f"{c['rejected_p99_ms']} ms; serving RSS {c['serving_rss_mb']['before']} → peak "
            f"{c['serving_rss_mb']['peak']} → {c['serving_rss_mb']['after']} MB |")
    d = res.get("d")
    if d:
        lines.append(
            f"| d. CURRENT pointed at a version with a damaged index file | {d['load']['requests']} requests over "
            f"{d['seconds']:.0f} s | served from the damaged version: **{d['served_corrupt']}**; failed requests "
            f"**{d['load']['failed']}**; /healthz names the refusal: {d['health_reports_refusal']}; `sidestep "
            f"rollback` rc {d['rollback_rc']} |")
    e = res.get("e")
    if e and "skipped" not in e:
        lines.append(
            f"| e. disk full during publish (tmpfs, room for 5–95% of a version) | {e['trials']} publishes | "
            f"publish failed with ENOSPC: {e['refused']}/{e['trials']} (other failures: "
            f"{e.get('other_failures', 0)}); a partial or invalid version current: **{e['partial_current']}**; staging "
            f"left: {e['staging_left']}; publish succeeded once space was back: {e['recovered']}/{e['trials']} |")
    elif e:
        lines.append(f"| e. disk full during publish | not run | {e['skipped']} |")
    f = res.get("f")
    if f:
        lines.append(
            f"| f. hot swap under a 60-second load | {f['requests']} requests, {f['clients']} clients, "
            f"{len(f['published'])} publishes | failed requests **{f['failed']}**; versions served "
            f"{len(f['versions_seen'])} |")
    if a:
        kinds = {k: [r["kill_at_s"] for r in a["rows"] if r["kind"] == k] for k in ("plain", "force")}
        lines += ["", "In scenario a, trials alternate between a nightly run with new documents, a new shop user and "
                  f"its interactions (undisturbed: {a['calibration_s']['plain']:.0f} s) and a forced one (codebook "
                  f"and token codec refit, tables retrained: {a['calibration_s']['force']:.0f} s); the kill lands "
                  f"uniformly in that time: {min(kinds['plain']):.1f}–{max(kinds['plain']):.1f} s and "
                  f"{min(kinds['force']):.1f}–{max(kinds['force']):.1f} s. After each kill every store's CURRENT is "
                  "verified and loaded (checksums, counts, golden queries); the rerun must publish the trial's new "
                  "recipe and field note. Two clients query /search on three domains and /recommend throughout."]
    lines += ["", "Per-trial rows are in `benchmarks/chaos_last_run.json`.", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated scenario letters")
    ap.add_argument("--trials", type=int, default=20, help="kill -9 trials of scenario a")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    ap.add_argument("--disk-full-inner", help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true", help="re-render the section from the last run's JSON")
    args = ap.parse_args()
    if args.render_only:
        splice(Path(args.out), render(read_last_run("chaos")),
               START, END)
        return
    if args.disk_full_inner:
        print(json.dumps(disk_full_inner(Path(args.disk_full_inner))))
        return
    only = set(args.only.split(","))
    last = last_run_path("chaos")
    res = json.loads(last.read_text()) if last.is_file() else {}
    res.update({"date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpus": os.cpu_count()})
    shared = None
    for letter in "abcdef":
        if letter not in only:
            continue
        t0 = time.monotonic()
        if letter == "a":
            res["a"] = kill_nightly(args.trials, args.seed)
        else:
            if shared is None:
                shared = make_root("ssb-chaos-")
                use_root(shared)
                if reindex(shared).get("rc") != 0:
                    raise SystemExit("reindex of the sample corpus failed")
            res[letter] = {"b": replica_kill, "c": overload, "d": corrupt_index, "e": disk_full,
                           "f": hot_swap}[letter](shared)
        res[letter]["wall_s"] = round(time.monotonic() - t0, 1)
        print(letter, json.dumps({k: v for k, v in res[letter].items() if k != "rows"}), flush=True)
        write_last_run("chaos", res, default=str)
    section = render(res)
    splice(Path(args.out), section, START, END)
    print(section)


if __name__ == "__main__":
    main()
