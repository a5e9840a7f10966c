"""The gradient lab's retrieval task (`sidestep lab retrieval --json`) into its section of BENCHMARKS.md.

Every estimator trains the same query-side scorer through the hard top 10 of recall's 100 candidates on
SciFact (train -> validation -> test) and msmarco-5k (a fixed split of its 43 judged queries), 3 seeds, the
same steps and a wall-clock cap per run, with the untrained identity and the best untrained ranker in the same
run. It needs a data root where both corpora are already indexed (domains scifact and msmarco; e.g. a copy of
the root `make bench-verify` builds): the first run computes recall's candidates and the fixed evidence and
caches them under the root's lab/retrieval/ (about 3 CPU minutes for SciFact), later runs read the cache.
About 15-25 minutes on 2 loaded cores.

    .venv/bin/python benchmarks/lab_retrieval.py --root PATH [--budget-seconds 1500] [--out BENCHMARKS.md]
    .venv/bin/python benchmarks/lab_retrieval.py --from-json benchmarks/lab_retrieval_last_run.json  # re-render
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from common import BENCHMARKS_MD, DATA, bench_env, machine, sh, splice, write_last_run

START, END = "<!-- lab-retrieval:start -->", "<!-- lab-retrieval:end -->"
LABELS = {"scifact": "SciFact", "msmarco": "msmarco-5k"}


def measure(root: Path, budget: float, steps: int | None) -> dict:
    env = bench_env(root, prefect_home=root.parent / "prefect-lab", quiet=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    args = ["lab", "retrieval", "--dataset", f"scifact={DATA / 'scifact'}", "--dataset",
            f"msmarco={DATA / 'msmarco-5k'}", "--min-rel", "msmarco=2", "--seeds", "3", "--budget-seconds", str(budget),
            "--json"] + (["--steps", str(steps)] if steps else [])
    res, wall, rss, cpu = sh(args, env)
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "wall_s": round(wall, 1),
            "peak_rss_mb": round(rss), "cpu_s": round(cpu, 1), "loadavg_start": load,
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "result": res}


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def render(run: dict) -> str:
    res = run["result"]
    cfg = res["config"]
    trunc = " (some runs reached it before their last step: see the steps column)" if res["truncated"] else ""
    head = [
        f"Run {run['date']} ({run['machine']}; load average {' '.join(run['loadavg_start'])} at the start,",
        f"{' '.join(run['loadavg_end'])} at the end: the machine was shared): {run['wall_s']} s wall for the",
        f"whole command, peak RSS {run['peak_rss_mb']} MB, {run['cpu_s']} CPU s. Command: `sidestep lab retrieval",
        "--dataset scifact=../shared/data/scifact --dataset msmarco=../shared/data/msmarco-5k --min-rel msmarco=2",
        f"--seeds {cfg['seeds']} --budget-seconds {cfg['budget_seconds']:.0f} --json` (`benchmarks/lab_retrieval.py`)."]
    how = [
        "The trainable part is the query side only: a linear query adapter A (384 × 384, starting at the identity)",
        "on the pooled query vector, whose cosine with each candidate's best chunk is scaled by a learnable",
        "temperature, plus learned weights (starting at 0) on four fixed untrained list z-scores of each candidate",
        "(recall cosine, MaxSim, idf-weighted MaxSim, BM25). Between it and the loss: the hard top",
        f"{cfg['k']} of recall's 100 candidates by that score; the judge is 1 − ERR / best ERR of the selected",
        f"documents from the judgments. Every estimator: {cfg['steps']} Adam steps of {cfg['batch']} queries",
        f"(adapter lr {cfg['lr']}, head lr {cfg['head_lr']}), {cfg['samples']} samples per estimate for the",
        f"stochastic ones, Gumbel temperature annealed {cfg['tau_start']} → {cfg['tau_end']}, SoftSort τ",
        f"{cfg['softsort_tau']}, perturbation σ {cfg['sigma']}; a wall-clock cap of {res['run_cap_seconds']:.0f} s",
        f"per run{trunc}. The checkpoint with the best validation nDCG@10 (evaluated every {cfg['eval_every']}",
        f"steps) is tested; mean ± std over {cfg['seeds']} seeds. nDCG@10's ideal comes from all of a query's",
        "judgments (not only those recall found). \"Saved MB\" is what autograd holds between forward and backward",
        "for one step (the estimator's memory cost); training time is per run."]
    lines = [START, "## The gradient lab: retrieval through a hard top-k (`sidestep lab retrieval`)", "",
             " ".join(head), "", " ".join(how), ""]
    for ds, d in res["datasets"].items():
        q = d["queries"]
        lines += [f"### {LABELS.get(ds, ds)}", "",
                  f"{q['train']} training queries ({d['trainable_queries']} with a relevant document among the "
                  f"candidates), {q['val']} validation, {q['test']} test. Split: {d['notes']['split']}."]
        ctl = d["controls"]
        no = ctl["identity"]["test"]["no_overlap_queries"]
        if no:
            lines[-1] += (f" No-overlap test queries (none of their relevant documents is cited by a training or "
                          f"validation query): {no}.")
        lines += ["", "| ranker | test nDCG@10 | test Recall@10 | no-overlap nDCG@10 | no-overlap Recall@10 | "
                  "train s / run | steps done | saved MB |", "|---|---|---|---|---|---|---|---|"]
        for name in ("identity", "best_untrained"):
            c = ctl[name]
            label = "untrained identity (dense recall's order)" if name == "identity" else \
                f"best untrained ranker ({c['ranker']}, chosen on validation)"
            t = c["test"]
            lines.append(f"| {label} | {t['ndcg@10']:.4f} | {t['recall@10']:.4f} | {t['no_overlap_ndcg@10']:.4f} | "
                         f"{t['no_overlap_recall@10']:.4f} | – | – | – |")
        for name, r in sorted(d["estimators"].items(), key=lambda kv: -kv[1]["ndcg@10_mean"]):
            lines.append(f"| {name} | {_pm(r['ndcg@10_mean'], r['ndcg@10_std'])} | "
                         f"{_pm(r['recall@10_mean'], r['recall@10_std'])} | "
                         f"{_pm(r['no_overlap_ndcg@10_mean'], r['no_overlap_ndcg@10_std'])} | "
                         f"{_pm(r['no_overlap_recall@10_mean'], r['no_overlap_recall@10_std'])} | "
                         f"{r['seconds_mean']:.1f} | {'/'.join(map(str, r['steps_done']))} | {r['saved_mb']:.1f} |")
        est = d["estimators"]
        if "sidestep" in est:
            side = est["sidestep"]["ndcg@10_mean"]
            above = sorted(n for n, r in est.items() if r["ndcg@10_mean"] > side)
            best = max(est, key=lambda n: est[n]["ndcg@10_mean"])
            lines += ["", f"Read: best test nDCG@10 {best} ({est[best]['ndcg@10_mean']:.4f}); estimators above "
                      f"sidestep ({side:.4f}): {', '.join(above) or 'none'}. Gain of sidestep over the best untrained "
                      f"ranker: {side - ctl['best_untrained']['test']['ndcg@10']:+.4f}."]
        lines.append("")
    lines += ["Learning curves (validation nDCG@10 per step, per estimator, mean ± std over seeds) are in DuckDB "
              "(`lab_results`, section `curve`) and drawn by `sidestep report` (figures `lab-retrieval-curves-*`, "
              "`lab-retrieval-test-*`).", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="a data root with scifact and msmarco indexed (it gains lab/ and runs)")
    ap.add_argument("--budget-seconds", type=float, default=1500.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--from-json", type=Path, help="re-render a stored run instead of measuring")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.from_json:
        run = json.loads(args.from_json.read_text())
    else:
        if args.root is None:
            ap.error("--root is required unless --from-json is given")
        run = measure(args.root.resolve(), args.budget_seconds, args.steps)
        write_last_run("lab_retrieval", run)
    splice(args.out, render(run), START, END)
    print(f"lab retrieval: {time.perf_counter() - t0:.0f} s; section written to {args.out}")


if __name__ == "__main__":
    main()
