"""The paired negation check (`sidestep eval-negation`) on text no verifier trained on; writes the
negation section of BENCHMARKS.md.

The verifiers scored are those published in the data root given by --verifiers-from (only its
`verifiers/` folder is copied, into a fresh data root: the source is never written to).

Usage: .venv/bin/python benchmarks/negation.py [--verifiers-from /tmp/bench/root] [--source DIR_OR_FILE ...]
       [--pairs 300] [--render-only]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import BENCHMARKS_MD, DATA, bench_env, machine, read_last_run, sh, splice, write_last_run

START, END = "<!-- negation:start -->", "<!-- negation:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verifiers-from", default="/tmp/bench/root", help="Data root whose published verifiers "
                                                                        "are scored (copied, never written).")
    ap.add_argument("--source", nargs="*", default=[str(DATA / "msmarco-5k")])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if args.render_only:
        splice(BENCHMARKS_MD, render(read_last_run("negation")), START, END)
        return
    res = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "note": args.note,
           "runs": []}
    with tempfile.TemporaryDirectory(prefix="ssb-negation-", dir="/tmp") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        src = Path(args.verifiers_from) / "verifiers"
        if src.is_dir():
            shutil.copytree(src, root / "verifiers")
        env = bench_env(root, prefect_home=Path(tmp) / "prefect", quiet=True)
        env.pop("SIDESTEP_CONFIG", None)
        for source in args.source:
            print(f"[bench-negation] {source} ...", file=sys.stderr, flush=True)
            rep, wall, peak, cpu = sh(["eval-negation", source, "--pairs", str(args.pairs), "--seed",
                                       str(args.seed), "--json"], env)
            res["runs"].append({"report": rep, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak})
    last = write_last_run("negation", res)
    splice(BENCHMARKS_MD, render(res), START, END)
    print(f"wrote {last} and the negation section of BENCHMARKS.md", file=sys.stderr)


def render(res: dict) -> str:
    lines = [START, "## Paired negation check (`sidestep eval-negation`)", "",
             f"Run {res['date']} on {res['machine']}." + (f" {res['note']}" if res.get("note") else ""), "",
             "Each pair: a sentence of a passage changed by the near-miss generator (a negation inserted or removed, "
             "or a condition inverted: with/without, before/after, if/unless, ...); the two queries are the same "
             "crop of the sentence before and after the change, each with its own relevant document (the passage "
             "before and after it). Each query ranks the pair's two documents; a pair counts when both rank their "
             "own first (ties count as a coin toss; random = 0.25). 95% intervals: bootstrap over pairs. The text "
             "is not SciFact, so the SciFact verifier never trained on it.", "",
             "| text | pairs (negation / condition) | ranker | pairwise accuracy [95% CI] | query accuracy | "
             "negation | condition |", "|---|---|---|---|---|---|---|"]
    for run in res["runs"]:
        r = run["report"]
        name = Path(r["source"]).name
        kinds = f"{r['pairs']} ({r['kinds'].get('negation', 0)} / {r['kinds'].get('condition', 0)})"
        for ranker, s in r["rankers"].items():
            bk = s["by_kind"]
            lines.append(f"| {name} | {kinds} | {ranker} | {s['pairwise_accuracy']:.3f} [{s['ci95_low']:.3f}, "
                         f"{s['ci95_high']:.3f}] | {s['query_accuracy']:.3f} | {bk.get('negation', float('nan')):.3f} "
                         f"| {bk.get('condition', float('nan')):.3f} |")
        lines.append(f"| {name} | | run time {run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU | | | | |")
    ex = res["runs"][0]["report"].get("examples", []) if res["runs"] else []
    if ex:
        lines += ["", "Example pair: " + f"“{ex[0]['queries'][0]}” / “{ex[0]['queries'][1]}” ({ex[0]['changed']})."]
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
