"""How much of the CPU serving keeps while a batch job runs beside it, for each way of lowering the job.

Two CPU-bound "serving" processes run in this session at niceness 0; a "nightly" runs in its own
session (as cron or a scheduler starts it) with two CPU-bound children, lowered in one of three ways:
not at all, with plain niceness (`nice -n 10`), or with `sidestep.priority.lower_priority(10)` (niceness
and, leading its session, its autogroup). Reported: serving's share of the work done in the same
seconds. On Linux with autogroup scheduling (sched(7)), niceness alone changes nothing between sessions.

Usage: .venv/bin/python benchmarks/nightly_priority.py [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import REPO, machine, write_last_run

BURN = "import time\nn = 0\nt = time.time()\nwhile time.time() - t < {s}: n += 1\nprint(n)"
LOWER = {
    "none": "",
    "nice": "import os\nos.nice(10)\n",
    "lower_priority": f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom sidestep.priority import lower_priority\n"
                      "lower_priority(10)\n",
}


def share(mode: str, seconds: float) -> float:
    burn = BURN.format(s=seconds)
    nightly = LOWER[mode] + ("import subprocess, sys\n"
                             f"ps = [subprocess.Popen([sys.executable, '-c', {burn!r}], stdout=subprocess.PIPE, "
                             "text=True) for _ in range(2)]\nprint(sum(int(p.communicate()[0]) for p in ps))")
    serving = [subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    job = subprocess.Popen([sys.executable, "-c", nightly], stdout=subprocess.PIPE, text=True, start_new_session=True)
    done = sum(int(p.communicate()[0]) for p in serving)
    other = int(job.communicate()[0])
    return round(done / (done + other), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args()
    autogroup = Path("/proc/self/autogroup")
    res = {"machine": machine(), "seconds": args.seconds,
           "autogroup": autogroup.read_text().strip() if autogroup.exists() else None,
           "serving_share": {mode: share(mode, args.seconds) for mode in LOWER}}
    write_last_run("nightly_priority", res)
    print(json.dumps(res) if args.json else "\n".join(f"{m}: serving keeps {s:.0%} of the work"
                                                        for m, s in res["serving_share"].items()))


if __name__ == "__main__":
    main()
