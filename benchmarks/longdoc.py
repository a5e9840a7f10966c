"""Document-maps benchmark: evidence retrieval inside long documents (L-Eval) and what summarizing
costs the nightly reindex; writes the longdoc section of BENCHMARKS.md.

1. `sidestep eval-longdoc natural_question.jsonl scientific_qa.jsonl`: bag-of-chunks against every map
   mode in one run, leave-one-file-out with map parameters learned on self-supervised questions (see
   sidestep/eval/longdoc_lofo.py), every question counted, into DuckDB.
2. The same documents through the real nightly flow (`sidestep reindex`: ingest, embed, summarize, index,
   publish) on fresh data roots, once with maps off and once with maps on, alternating, so the cost of
   summarizing is measured as a share of the reindex it belongs to.

Usage: .venv/bin/python benchmarks/longdoc.py [--data ../shared/data] [--reindex-repeats 1] [--render-only]
       [--eval-only] [--eval-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import BENCHMARKS_MD, DATA, bench_env, read_last_run, sh, splice, write_last_run

START, END = "<!-- longdoc:start -->", "<!-- longdoc:end -->"
FILES = ("natural_question", "scientific_qa")
CONFIG = """default_domain = "leval"
[maps]
enabled = {enabled}
[[sources]]
domain = "leval"
path = "{path}"
format = "jsonl"
"""


def env_for(root: Path) -> dict:
    env = bench_env(root, prefect_home=root / "prefect")
    env.pop("SIDESTEP_CONFIG", None)
    return env


def leval_corpus(files: list[Path], out: Path) -> int:
    """The unique documents of the L-Eval files as one JSONL corpus (id, title, text)."""
    seen: dict[str, str] = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                text = json.loads(line)["input"]
                seen.setdefault(text, f"{f.stem}-{len(seen)}")
    out.write_text("".join(json.dumps({"id": i, "title": "", "text": t}) + "\n" for t, i in seen.items()))
    return len(seen)


def reindex_once(corpus: Path, maps_on: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"ssb-longdoc-{'on' if maps_on else 'off'}-", dir="/tmp"))
    cfg = root / "sidestep.toml"
    cfg.write_text(CONFIG.format(enabled=str(maps_on).lower(), path=corpus))
    env = env_for(root) | {"SIDESTEP_CONFIG": str(cfg)}
    res, wall, peak, cpu = sh(["reindex", "--json"], env)
    d = res["domains"]["leval"]
    out = {"maps": maps_on, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak,
           "embed_s": d["embed"].get("seconds"), "summarize_s": d["summarize"].get("seconds", 0.0),
           "summarized": d["summarize"].get("summarized", 0), "maps_failed": d["summarize"].get("failed", 0),
           "documents": d["embed"]["documents"], "published": d["index"]["published"]}
    shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--reindex-repeats", type=int, default=1, help="Pairs of reindex runs (maps off, maps on).")
    ap.add_argument("--render-only", action="store_true", help="Rewrite the section from the last run's JSON.")
    ap.add_argument("--eval-only", action="store_true", help="Rerun eval-longdoc only; keep the last run's reindex "
                                                              "timings (they are marked with their own date).")
    ap.add_argument("--note", default="", help="Conditions of this run.")
    ap.add_argument("--eval-root", default=None, help="Data root for eval-longdoc (default: a fresh one); a root "
                                                      "kept between runs keeps the chunk encodings it cached.")
    args = ap.parse_args()
    if args.render_only:
        splice(BENCHMARKS_MD, render(read_last_run("longdoc")), START, END)
        return
    leval = Path(args.data).resolve() / "leval"
    files = [leval / f"{n}.jsonl" for n in FILES if (leval / f"{n}.jsonl").is_file()]
    if not files:
        raise SystemExit(f"no L-Eval files under {leval}")
    res: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "note": args.note,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory(prefix="ssb-longdoc-", dir="/tmp") as tmp:
        print("[bench-longdoc] eval-longdoc ...", file=sys.stderr, flush=True)
        rep, wall, peak, _ = sh(["eval-longdoc", *map(str, files), "--json"],
                                env_for(Path(args.eval_root) if args.eval_root else Path(tmp) / "eval"))
        res["eval"] = {"report": rep, "wall_s": wall, "peak_rss_mb": peak}
        corpus = Path(tmp) / "leval_docs.jsonl"
        res["documents"] = leval_corpus(files, corpus)
        res["reindex"] = []
        if args.eval_only:
            last = read_last_run("longdoc")
            res["reindex"], res["reindex_date"] = last["reindex"], last.get("reindex_date", last["date"])
        for r in range(0 if args.eval_only else args.reindex_repeats):
            for on in (False, True):
                print(f"[bench-longdoc] reindex {r + 1}, maps {'on' if on else 'off'} ...", file=sys.stderr,
                      flush=True)
                res["reindex"].append(reindex_once(corpus, on))
    last = write_last_run("longdoc", res)
    splice(BENCHMARKS_MD, render(res), START, END)
    print(f"wrote {last} and the longdoc section of BENCHMARKS.md", file=sys.stderr)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def render_crossfit(rep: dict) -> list[str]:
    lines = ["Evidence = the chunk holding the answer string. Protocol: " + rep["protocol"] + ". "
             f"{rep['repeats']} repeats; bag-of-chunks is the control from the same run, on the same questions. "
             "Δ R@3 is the map mode minus bag-of-chunks, with a paired bootstrap 95% interval over questions.", "",
             "| file | questions used / left out | mode | R@1 | R@3 | R@5 | Δ R@3 [95% CI] | R@3 per repeat |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in rep["files"].items():
        used, left = f["questions_with_evidence"], sum(f["questions_left_out"].values())
        per = f.get("within_document_recall@3_per_repeat", {})
        for mode, m in f["within_document"].items():
            d = f["within_document_delta_recall@3"].get(mode)
            delta = "" if d is None else (f"{d['delta'] * 100:+.1f} "
                                          f"[{d['ci95_low'] * 100:+.1f}, {d['ci95_high'] * 100:+.1f}]")
            reps = " / ".join(f"{x:.2f}" for x in per.get(mode, []))
            lines.append(f"| {name} | {used} / {left} | within document: {mode} | {m['recall@1']:.3f} | "
                         f"{m['recall@3']:.3f} | {m['recall@5']:.3f} | {delta} | {reps} |")
        halves = f.get("within_document_delta_recall@3_per_half", {}).get("map_conditioned")
        if halves:
            lines.append(f"| {name} | | map_conditioned Δ R@3 on each held-out half alone ({len(halves)} halves, what "
                         f"one split would report): {' / '.join(f'{x * 100:+.0f}' for x in halves)} | | | | | |")
        c = f["corpus"]
        for mode in ("bag_of_chunks", "map_routing"):
            m = c[mode]
            d = c["delta_recall@3"] if mode == "map_routing" else None
            delta = "" if d is None else (f"{d['delta'] * 100:+.1f} "
                                          f"[{d['ci95_low'] * 100:+.1f}, {d['ci95_high'] * 100:+.1f}]")
            lines.append(f"| {name} | {used} / {left} | corpus: {mode} | {m['recall@1']:.3f} | {m['recall@3']:.3f} | "
                         f"{m['recall@5']:.3f} | {delta} | |")
        lines.append(f"| {name} | | corpus: map routing reached the right document for "
                     f"{c['map_routing']['routing_accuracy']:.1%} of questions (best chunk alone: "
                     f"{c['bag_of_chunks']['doc_accuracy@R']:.1%}) | | | | | |")
    t = rep["tuned"]
    lines += ["", "Settings chosen most often over the folds (every fold's choice is in the JSON and DuckDB): "
              + "; ".join(f"{k} {json.dumps(v, sort_keys=True)}" for k, v in t.items()) + ".", "",
              "Modes: *map_query* conditions the query on the document's map (MiA-RAG: "
              "α·e(q) + (1−α)·e(global summary ⊕ q)); *section_aware* gives each chunk its section's map entry "
              "(normalize(e(chunk) + γ·e(heading path: summary)) + τ·e(heading path)); *map_conditioned* is both; "
              "*map_routing* picks documents by their maps first, then searches their chunks."]
    return lines


def _delta(d: dict | None) -> str:
    return "" if d is None else f"{d['delta'] * 100:+.1f} [{d['ci95_low'] * 100:+.1f}, {d['ci95_high'] * 100:+.1f}]"


def render_lofo(rep: dict) -> list[str]:
    lines = ["Protocol: " + rep["protocol"] + ". Recall@k counts every question whose answer string is in its "
             "document; Δ R@3 is the mode minus bag-of-chunks on the same questions, with a paired bootstrap 95% "
             "interval over questions. *self_supervised* is the method (nothing of the held-out file but its text); "
             "the other rows are controls from the same run.", "",
             "| file | questions counted (of them across chunks) / without evidence | mode | selected on | R@1 | R@3 "
             "| R@5 | Δ R@3 [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for name, f in rep["files"].items():
        counted = f"{f['questions_counted']} ({f['evidence'].get('across_chunks', 0)})"
        missing = ", ".join(f"{v} {k}" for k, v in f["questions_without_evidence"].items()) or "0"
        for key, m in f["modes"].items():
            mode, _, src = key.partition("[")
            src = src.rstrip("]") or ("-" if mode == "bag_of_chunks" else "config defaults")
            bold = "**" if key == "map_conditioned[self_supervised]" else ""
            lines.append(f"| {name} | {counted} / {missing} | {bold}{mode}{bold} | {src} | {m['recall@1']:.3f} | "
                         f"{bold}{m['recall@3']:.3f}{bold} | {m['recall@5']:.3f} | {_delta(m.get('delta_recall@3'))} |")
    lines += ["", "Selected settings (alpha: what the query keeps of itself against e(map ⊕ query), pooled over "
              "all tokens or the query's; gamma, tau: how much of its section's summary and heading a chunk "
              "carries):", ""]
    for name, f in rep["files"].items():
        ss = f["self_supervised"]
        lines.append(f"- {name}: {f['chunks']} sentence-aligned chunks; {ss['questions']} self-supervised questions "
                     f"({', '.join(f'{v} {k}' for k, v in ss['kinds'].items())}), their R@3 under bag-of-chunks "
                     f"{ss['recall@3_plain']:.3f}; " + "; ".join(
                         f"{src}: {json.dumps(s['map_conditioned'], sort_keys=True)}"
                         for src, s in f["settings"].items() if src != "shipped_constants") + ".")
    return lines


def render(res: dict) -> str:
    rep = res["eval"]["report"]
    lines = [START, "## Document maps: evidence retrieval inside long documents (`sidestep eval-longdoc`, L-Eval)", "",
             f"Run {res['date']} on {res['machine']}." + (f" {res['note']}" if res.get("note") else ""), ""]
    lines += render_crossfit(rep) if "repeats" in rep else render_lofo(rep)
    rx = res.get("reindex", [])
    if rx:
        off = [r for r in rx if not r["maps"]]
        on = [r for r in rx if r["maps"]]
        w_off, w_on = _mean([r["wall_s"] for r in off]), _mean([r["wall_s"] for r in on])
        c_off, c_on = _mean([r["cpu_s"] for r in off]), _mean([r["cpu_s"] for r in on])
        s_on = _mean([r["summarize_s"] for r in on])
        when = f", run {res['reindex_date']}" if res.get("reindex_date") else ""
        lines += ["", f"### What summarizing costs the nightly reindex ({res['documents']} L-Eval documents, "
                  f"`sidestep reindex` on fresh data roots{when})", "",
                  "| run | wall s | CPU s | summarize stage s | maps built / failed | peak RSS MB |",
                  "|---|---|---|---|---|---|"]
        for r in rx:
            lines.append(f"| maps {'on' if r['maps'] else 'off'} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                         f"{r['summarize_s']:.1f} | {r['summarized']} / {r['maps_failed']} | {r['peak_rss_mb']:.0f} |")
        lines += ["", f"Summarizing adds **{(w_on - w_off) / w_off:.1%}** to the reindex wall time "
                  f"({(c_on - c_off) / c_off:.1%} of its CPU time); the summarize stage alone is "
                  f"{s_on / w_off:.1%} of the reindex without maps. Target ≤ 30%."]
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
