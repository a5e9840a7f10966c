"""`sidestep report`: one self-contained HTML page of figures, a thin layer over Engine.report."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DomainOpt, JsonOpt, _emit, _engine, _run, out


def report(
    out_path: Annotated[str, typer.Option("--out", "-o", help="The HTML file to write.")] = "report.html",
    domain: DomainOpt = None,
    latency_json: Annotated[str | None, typer.Option("--latency-json", help="A benchmark's JSON holding latency "
                                                     "samples (`latency_ms` lists), e.g. benchmarks/last_run.json; "
                                                     "default: the config's [report] latency_json.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a report people would rather look at than read: one HTML file (figures inlined, nothing loaded
    from elsewhere) with metrics per index version, per-query gains and losses between the two latest runs,
    training curves, codebook usage, recommendation variants beside their controls, the gradient lab and a
    latency histogram. A section without data shows a note instead of a figure."""
    res = _run(_engine().report, as_json, out_path, domain=domain, latency_json=latency_json).as_dict()
    _emit(res, as_json)
    if not as_json:
        empty = ", ".join(res["notes"]) or "none"
        out.print(f"{res['path']}: {len(res['figures'])} figure(s); sections with notes: {empty}")
