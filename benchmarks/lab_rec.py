"""The gradient lab's rec task on Amazon Scientific and Office: `sidestep lab rec --seeds 3 --json`, timed.

Frozen OPQ/PQ codes against RQ-VAE codes learned end to end (straight-through), in-domain on both and table-only
transfer Office -> Scientific, with popularity and text-only controls and paired bootstrap intervals. Text
vectors are cached in the data root (lab/rec/<domain>/): the first run encodes ~6,800 items (minutes).

    .venv/bin/python benchmarks/lab_rec.py --root PATH [--budget-seconds 1200] [--users 1000]
    .venv/bin/python benchmarks/lab_rec.py --from-json benchmarks/lab_rec_last_run.json   # the section only
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import BENCHMARKS_MD, DATA, bench_env, machine, sh, splice, write_last_run

START, END = "<!-- lab-rec:start -->", "<!-- lab-rec:end -->"


def _ms(r: dict, m: str) -> str:
    return f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}"


def _ci(c: dict) -> str:
    return f"{c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def render(run: dict) -> str:
    """The BENCHMARKS.md section of one run (between the lab-rec markers)."""
    res, cfg = run["result"], run["result"]["config"]
    lines = [START, "## The gradient lab: rec, frozen codes against codes learned end to end", "",
             f"Run {run['date']} ({run.get('machine', '')}): `{run['command']}`; {run['wall_s']:.0f} s wall, "
             f"{run['cpu_s']:.0f} s CPU, peak RSS {run['peak_rss_mb']} MB, load average "
             f"{' '.join(run['loadavg_start'])} at the start and {' '.join(run['loadavg_end'])} at the end. "
             f"{run.get('note', '')}", "",
             f"Same sequence model for both arms ({cfg['layers']} Transformer layer, hidden {cfg['hidden']}, "
             f"{cfg['positions']} code positions x {1 << cfg['bits']} codewords), {cfg['steps']} Adam steps of batch "
             f"{cfg['batch']} per training run, a wall-clock cap of {res['run_cap_seconds'] or 0:.0f} s per run "
             f"(truncated: {res['truncated']}), {cfg['seeds']} seeds; best validation checkpoint tested. Protocol: "
             "leave-one-out, full ranking over the subsample's catalogue, nothing masked. Mean ± std over seeds; "
             "Δ = learned − frozen per test user, pooled over seeds, paired bootstrap 95% interval.", ""]
    for name, d in res["domains"].items():
        c = d["counts"]
        lines += [f"**{name}** ({d['notes'].get('subsample') or 'all users'}; {c['items']} items, {c['train_pairs']} "
                  f"training pairs, {c['test_users']} test users)", "",
                  "| in-domain | R@10 | N@10 | s / run | MB held for backward | steps |", "|---|---|---|---|---|---|"]
        for k, v in d["controls"].items():
            lines.append(f"| {k} (control) | {v['recall@10']:.4f} | {v['ndcg@10']:.4f} | | | |")
        for arm, r in d["arms"].items():
            lines.append(f"| {arm} codes | {_ms(r, 'recall@10')} | {_ms(r, 'ndcg@10')} | {r['seconds_mean']:.1f} | "
                         f"{r['saved_mb_mean']:.1f} | {r['steps_done']} |")
        dl = d["learned_minus_frozen"]
        lines += [f"| Δ learned − frozen | {_ci(dl['recall@10'])} | {_ci(dl['ndcg@10'])} | | | |", ""]
        codes = "; ".join(f"{arm}: entropy {np.mean([f['entropy_bits_mean'] for f in fs]):.2f} bits of "
                          f"{cfg['bits']}, {np.mean([f['colliding_items'] for f in fs]):.0f} colliding items, "
                          f"relative reconstruction error {np.mean([f['relative_error'] for f in fs]):.3f}"
                          for arm, fs in ((a, r["codes"]) for a, r in d["arms"].items()))
        lines += [f"Codes (mean over seeds): {codes}.", ""]
    t = res.get("transfer")
    if t:
        lines += [f"**Table-only transfer {t['source']} → {t['target']}** (the {t['source']} encoder frozen; learned "
                  f"codes: the {t['source']} quantiser assigns the {t['target']} codes, frozen; only the "
                  f"{t['target']} lookup table trains)", "",
                  "| setting | arm | R@10 | N@10 | s / run | Δ N@10 learned − frozen |", "|---|---|---|---|---|---|"]
        for setting, by_arm in t["settings"].items():
            for arm, r in by_arm.items():
                delta = _ci(t["learned_minus_frozen"][setting]["ndcg@10"]) if arm == "learned" else ""
                lines.append(f"| {setting} | {arm} | {_ms(r, 'recall@10')} | {_ms(r, 'ndcg@10')} | "
                             f"{r['seconds_mean']:.1f} | {delta} |")
        for k, v in t["controls"].items():
            lines.append(f"| {k} (control) | | {v['recall@10']:.4f} | {v['ndcg@10']:.4f} | | |")
        lines += ["", "Transfer − no-transfer (N@10, paired, pooled over seeds): " + "; ".join(
            f"{arm} {_ci(c['ndcg@10'])}" for arm, c in t["transfer_minus_no_transfer"].items()) + ".", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="a data root (gains lab/rec/ and the warehouse rows)")
    ap.add_argument("--budget-seconds", type=float, default=None)
    ap.add_argument("--users", type=int, default=None, help="user sample per domain (default: the CLI's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--from-json", type=Path, help="render the BENCHMARKS.md section of a stored run, run nothing")
    args = ap.parse_args()
    if args.from_json:
        splice(BENCHMARKS_MD, render(json.loads(args.from_json.read_text())), START, END)
        return
    env = bench_env(args.root, prefect_home=args.root.parent / "prefect-lab-rec", quiet=True)
    cmd = ["lab", "rec", "--dataset", f"scientific={DATA / 'amazon-scientific'}", "--dataset",
           f"office={DATA / 'amazon-office'}", "--seeds", "3", "--json"]
    cmd += ["--budget-seconds", str(args.budget_seconds)] if args.budget_seconds else []
    cmd += ["--users", str(args.users)] if args.users is not None else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    load = Path("/proc/loadavg").read_text().split()[:3]
    res, wall, rss, cpu = sh(cmd, env)
    run = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "command": "sidestep " + " ".join(cmd), "wall_s": round(wall, 1), "peak_rss_mb": round(rss),
           "cpu_s": round(cpu, 1), "loadavg_start": load, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
           "result": res}
    write_last_run("lab_rec", run)
    splice(BENCHMARKS_MD, render(run), START, END)


if __name__ == "__main__":
    main()
