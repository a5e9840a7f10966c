"""Incremental nightly benchmark: a full reindex of SciFact against a nightly run after 1% of its
documents changed; writes the incremental section of BENCHMARKS.md.

Both runs are the real `sidestep reindex` command (process start, model load, Prefect included) on one
fresh data root: the first builds everything (ingest, embed, summarize, index, token codes, publish),
the second sees 1% of the documents edited (a sentence appended) and must re-embed and re-summarize only
those, keep the token codec and the codes of unchanged documents, rebuild the index and publish.
A third run with nothing changed is reported too, and `--force` (the full refit of everything derived
from the embeddings) as the "one parameter away" figure.

Usage: .venv/bin/python benchmarks/incremental.py [--data ../shared/data] [--fraction 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import BENCHMARKS_MD, DATA, bench_env, read_last_run, sh, splice, write_last_run

START, END = "<!-- incremental:start -->", "<!-- incremental:end -->"
CONFIG = """default_domain = "scifact"
[[sources]]
domain = "scifact"
path = "{path}"
format = "jsonl"
id_field = "_id"
title_field = "title"
text_field = "text"
"""


def edit(corpus: Path, fraction: float, seed: int = 0) -> list[str]:
    """Append a sentence to `fraction` of the documents (chosen at random, reproducibly)."""
    lines = corpus.read_text().splitlines()
    rng = np.random.default_rng(seed)
    pick = set(rng.choice(len(lines), size=max(1, round(fraction * len(lines))), replace=False).tolist())
    changed = []
    for i in sorted(pick):
        rec = json.loads(lines[i])
        rec["text"] += " This abstract was revised after publication to correct the reported sample size."
        lines[i] = json.dumps(rec)
        changed.append(rec["_id"])
    tmp = corpus.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, corpus)
    return changed


def stage(out: dict) -> dict:
    d = out["domains"]["scifact"]
    tok = d["index"].get("tokens") or {}
    return {"encoded": out["encoded"], "reused": out["reused"], "summarized": out["summarized"],
            "published": bool(out["published"]), "tokens": tok}


def codec(r: dict) -> str:
    if not r["published"]:
        return "— (nothing published)"
    return f"{'reused' if r['tokens'].get('codec_reused') else 'refit'}, {r['tokens'].get('docs_copied', 0)} copied"


def render(res: dict) -> str:
    runs = res["runs"]
    full, inc = runs["full"], runs["incremental"]
    rows = [f"| {n} | {r['changed_docs']} | {r['encoded']} | {r['reused']} | {r['summarized']} | {codec(r)} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s'] / full['wall_s']:.3f} |" for n, r in runs.items()]
    return "\n".join([
        START, "## Operations: incremental nightly", "",
        f"Measured {res['date']} on this {res['cpus']}-core machine by `benchmarks/incremental.py`: the real "
        f"`sidestep reindex` on SciFact ({full['encoded']} documents) in one fresh data root; process start, model "
        "load and Prefect are in every figure. `incremental` follows an edit of "
        f"{inc['changed_docs']} documents ({res['fraction']:.0%}); `force` is the full refit of everything derived "
        "from the embeddings (`--force`: token codec refit, every index rebuilt; embeddings are cached by content "
        "hash and never recomputed for unchanged text).", "",
        "| run | documents changed | embedded | reused | summarized | token codec | wall s | CPU s | wall / full |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"- Incremental / full: **{res['ratio_wall']:.3f}** wall, {res['ratio_cpu']:.3f} CPU seconds "
        "(target ≤ 0.10).",
        END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    ap.add_argument("--render-only", action="store_true", help="re-render the section from the last run's JSON")
    args = ap.parse_args()
    if args.render_only:
        splice(Path(args.out), render(read_last_run("incremental")), START, END)
        return
    root = Path(tempfile.mkdtemp(prefix="ssb-inc-", dir="/tmp"))
    corpus = root / "src" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text((Path(args.data) / "scifact" / "corpus.jsonl").read_text())
    (root / "sidestep.toml").write_text(CONFIG.format(path=corpus))
    env = bench_env(root / "data", prefect_home=root / "prefect", config=root / "sidestep.toml", quiet=True)
    runs = {}
    for name in ("full", "incremental", "unchanged", "force"):
        changed = edit(corpus, args.fraction) if name == "incremental" else []
        out, wall, rss, cpu = sh(["reindex", "--json", *(["--force"] if name == "force" else [])], env)
        runs[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(rss),
                      "changed_docs": len(changed), **stage(out)}
        print(name, json.dumps(runs[name]), flush=True)
    full, inc = runs["full"], runs["incremental"]
    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "root": str(root),
           "documents": full["encoded"], "fraction": args.fraction, "runs": runs,
           "ratio_wall": inc["wall_s"] / full["wall_s"], "ratio_cpu": inc["cpu_s"] / full["cpu_s"]}
    write_last_run("incremental", res)
    section = render(res)
    splice(Path(args.out), section, START, END)
    print(section)


if __name__ == "__main__":
    main()
