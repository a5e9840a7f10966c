"""The gradient lab's rec task on Amazon Scientific and Office: `sidestep lab rec --seeds 3 --json`, timed.

Frozen OPQ/PQ codes against RQ-VAE codes learned end to end (straight-through), in-domain on both and table-only
transfer Office -> Scientific, with popularity and text-only controls and paired bootstrap intervals. Text
vectors are cached in the data root (lab/rec/<domain>/): the first run encodes ~6,800 items (minutes).

    .venv/bin/python benchmarks/lab_rec.py --root PATH [--budget-seconds 1200] [--users 1000]
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from common import DATA, bench_env, machine, sh, write_last_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="a data root (gains lab/rec/ and the warehouse rows)")
    ap.add_argument("--budget-seconds", type=float, default=None)
    ap.add_argument("--users", type=int, default=None, help="user sample per domain (default: the CLI's)")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    env = bench_env(args.root, prefect_home=args.root.parent / "prefect-lab-rec", quiet=True)
    cmd = ["lab", "rec", "--dataset", f"scientific={DATA / 'amazon-scientific'}", "--dataset",
           f"office={DATA / 'amazon-office'}", "--seeds", "3", "--json"]
    cmd += ["--budget-seconds", str(args.budget_seconds)] if args.budget_seconds else []
    cmd += ["--users", str(args.users)] if args.users is not None else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    load = Path("/proc/loadavg").read_text().split()[:3]
    res, wall, rss, cpu = sh(cmd, env)
    write_last_run("lab_rec", {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                               "command": "sidestep " + " ".join(cmd), "wall_s": round(wall, 1),
                               "peak_rss_mb": round(rss), "cpu_s": round(cpu, 1), "loadavg_start": load,
                               "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "result": res})


if __name__ == "__main__":
    main()
