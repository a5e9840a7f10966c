"""Runs as IR tools use them: export (TREC / ranx) and compare (measures with a paired test)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOpt, _emit, _engine, _run, out


def export(
    run_id: Annotated[str, typer.Argument(help="A stored run id (`eval --json`'s run_id; a baseline's is in "
                                          "its run_ids).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="trec (qid Q0 docid rank score tag) or ranx "
                                     "(JSON {qid: {docid: score}}).")] = "trec",
    out_path: Annotated[str | None, typer.Option("--out", "-o", help="Write the run here (default: stdout).")] = None,
    tag: Annotated[str | None, typer.Option(help="The TREC tag column (default: the run id).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a stored evaluation run as a TREC run file or a ranx-style JSON run. Without --out the run
    itself goes to stdout (with --json: a report whose `content` holds it)."""
    res = _run(_engine().export, as_json, run_id, fmt, out_path, tag=tag).as_dict()
    if as_json:
        _emit(res, True)
    elif out_path is None:
        content = res["content"]
        sys.stdout.write(content if isinstance(content, str) else json.dumps(content, indent=1) + "\n")
    else:
        out.print(f"{res['run_id']}: {res['documents']} lines, {res['queries']} queries -> {res['out']} "
                  f"({res['format']})")


def compare(
    run_a: Annotated[str, typer.Argument(help="Run A: a stored run id or a TREC run file.")],
    run_b: Annotated[str, typer.Argument(help="Run B: a stored run id or a TREC run file.")],
    measures: Annotated[list[str] | None, typer.Option("--measures", "-m", help="ir_measures names (repeat "
                                                       "or give several): nDCG@10, RR@10, R@100, AP, P@5, ... "
                                                       "(default: nDCG@10 RR@10 R@100).")] = None,
    qrels: Annotated[str | None, typer.Option(help="TREC or BEIR qrels file (default: the qrels stored "
                                              "with the runs' evaluation).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two runs on the same judged queries: each measure for both, delta (B - A), the paired
    t-test's p-value, and the queries B wins, ties and loses against A."""
    names = [n for m in measures or [] for n in m.replace(",", " ").split()] or None
    res = _run(_engine().compare, as_json, run_a, run_b, names, qrels=qrels).as_dict()
    _emit(res, as_json)
    if not as_json:
        a, b = res["runs"]
        t = Table("measure", "A", "B", "delta (B - A)", "p-value", "wins / ties / losses",
                  title=f"A = {a}\nB = {b}\n{res['queries']} queries, {res['test']}",
                  caption="wins: queries where B scores above A")
        for name, m in res["measures"].items():
            p = "-" if m["p_value"] is None else f"{m['p_value']:.4g}"
            t.add_row(name, f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['delta']:+.4f}", p,
                      f"{m['wins']} / {m['ties']} / {m['losses']}")
        out.print(t)
