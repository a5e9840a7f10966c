"""The gradient lab's planted task (`sidestep lab planted --json`) into its section of BENCHMARKS.md.

A synthetic top-k selection small enough for the exact gradient of the expected loss by enumeration:
every estimator's bias, variance and cosine against it, and an optimisation run per estimator from the
same start (3 seeds). Runs in a fresh data root under a temporary folder; about 1-2 minutes on 2 cores.

    .venv/bin/python benchmarks/lab.py [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import BENCHMARKS_MD, bench_env, machine, sh, splice, write_last_run

START, END = "<!-- lab:start -->", "<!-- lab:end -->"


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="sidestep-lab-") as tmp:
        env = bench_env(Path(tmp) / "root", prefect_home=Path(tmp) / "prefect", quiet=True)
        res, wall, rss, cpu = sh(["lab", "planted", "--json"], env)
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "wall_s": round(wall, 1),
            "peak_rss_mb": round(rss), "cpu_s": round(cpu, 1), "result": res}


def render(run: dict) -> str:
    res = run["result"]
    p, opt = res["problem"], res["optimisation"]
    lines = [START, "## The gradient lab: planted top-k selection (`sidestep lab planted`)", "",
             f"Run {run['date']} ({run['machine']}): {run['wall_s']} s wall for the whole command, peak RSS "
             f"{run['peak_rss_mb']} MB. n = {p['n']} items, k = {p['k']}, {p['orders_enumerated']} ordered "
             f"selections enumerated; the loss is 1 − ERR / best ERR over the selected items in rank order "
             f"(not linear in the selection). The exact gradient g* is of the expected loss under Plackett–Luce "
             f"(Gumbel top-k) selection of the scores θ; at θ0: J = {p['expected_loss']:.3f}, loss of the "
             f"deterministic pick {p['hard_loss']:.3f}, ‖g*‖ = {p['exact_grad_norm']:.3f}.", "",
             "Estimators that target g* are compared by bias and variance; the deterministic surrogates "
             "(sidestep's listwise loss, marginal likelihood over the retrieved set, SoftSort) have an "
             "arbitrary scale, so their cosine with g* is the figure to read.", "",
             "| estimator | targets g* | cosine | bias ‖E[ĝ] − g*‖ | relative bias | variance |",
             "|---|---|---|---|---|---|"]
    for name, r in res["estimators"].items():
        lines.append(f"| {name} | {'yes' if r.get('targets_exact_gradient') else 'no'} | {r['cosine']:+.3f} | "
                     f"{r['bias']:.4f} | {r['relative_bias']:.3f} | {r['variance']:.2e} |")
    lines += ["", f"Optimisation: {opt['optimizer']}, {opt['steps']} steps, lr {opt['lr']}, the same θ0, mean ± std "
              f"over {opt['seeds']} seeds; J is the exact expected loss reached, the last column the loss of "
              f"the deterministic top-k pick of the final scores (what a frozen index would serve).", "",
              "| estimator | expected loss J | loss of the deterministic pick |", "|---|---|---|",
              f"| start | {opt['start']['expected_loss']:.4f} | {opt['start']['hard_loss']:.4f} |"]
    for name, r in sorted(opt["estimators"].items(), key=lambda kv: kv[1]["expected_loss_mean"]):
        lines.append(f"| {name} | {r['expected_loss_mean']:.4f} ± {r['expected_loss_std']:.4f} | "
                     f"{r['hard_loss_mean']:.4f} ± {r['hard_loss_std']:.4f} |")
    runs = opt["estimators"]
    best = min(runs, key=lambda n: runs[n]["expected_loss_mean"])
    side = runs.get("sidestep")
    lower = sorted(n for n in runs if side and runs[n]["expected_loss_mean"] < side["expected_loss_mean"])
    best_hard = min(r["hard_loss_mean"] for r in runs.values())
    read = f"Read: the lowest expected loss is {best}'s ({runs[best]['expected_loss_mean']:.4f})."
    if side:
        read += (f" Estimators below sidestep on the expected loss: {', '.join(lower) or 'none'}. Sidestep's "
                 f"deterministic pick reaches {side['hard_loss_mean']:.4f} (best of all: {best_hard:.4f}).")
    lines += ["", read + " The retrieval task has its own section below; the recommendation task is not built yet.",
              END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = measure()
    write_last_run("lab", run)
    splice(args.out, render(run), START, END)
    print(f"lab planted: {time.perf_counter() - t0:.0f} s; section written to {args.out}")


if __name__ == "__main__":
    main()
