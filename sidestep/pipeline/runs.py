"""Stored runs out of the warehouse: export as a TREC or ranx run, and compare two runs.

A run reference is a run id in the data root's warehouse (``eval --json``'s ``run_id``; each baseline run
beside it is ``<run_group>-<name>``, e.g. ``...-bm25``) or the path of a TREC (or ranx JSON) run file.
The formats, measures and the paired test are sidestep.eval.runs'; this module only finds the runs and
the qrels they were judged against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sidestep.eval.runs import (
    DEFAULT_MEASURES,
    FORMATS,
    TEST,
    RunFormatError,
    compare_runs,
    read_qrels,
    read_trec,
    to_ranx,
    trec_lines,
    write_run,
)
from sidestep.results import RunComparison, RunExport
from sidestep.storage.paths import DataRoot
from sidestep.storage.warehouse import Warehouse


class UnknownRun(RunFormatError):
    """A run reference that is neither a stored run id nor a run file."""


_WHERE_IDS = "run ids are `sidestep eval --json`'s run_id, and run_ids for the baselines beside it"


@dataclass
class LoadedRun:
    name: str
    rows: list
    qrels: dict[str, dict[str, int]] | None = None  # those stored with the run's evaluation
    info: dict = field(default_factory=dict)


def _stored(root: DataRoot, run_id: str) -> LoadedRun | None:
    if not root.eval_db().exists():
        return None
    with Warehouse(root.eval_db(), read_only=True) as wh:
        try:
            info = wh.run_info(run_id)
        except KeyError:
            return None
        return LoadedRun(run_id, wh.run_rows(run_id), wh.run_qrels(run_id), info)


def load_run(root: DataRoot, ref: str) -> LoadedRun:
    """A stored run by id, else a run file by path; UnknownRun (a ValueError) when it is neither."""
    found = _stored(root, ref)
    if found is not None:
        return found
    if Path(ref).is_file():
        return LoadedRun(str(ref), read_trec(ref))
    raise UnknownRun(f"unknown run {ref!r}: no such run id in {root.eval_db()} and no such file ({_WHERE_IDS})")


def export_run(root: DataRoot, run_id: str, fmt: str = "trec", out: str | os.PathLike | None = None,
               tag: str | None = None) -> RunExport:
    """Write stored run RUN_ID to OUT as ``trec`` or ``ranx`` (the content is returned when OUT is None)."""
    if fmt not in FORMATS:
        raise RunFormatError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    run = _stored(root, run_id)
    if run is None:
        raise UnknownRun(f"unknown run {run_id!r}: no such run id in {root.eval_db()} ({_WHERE_IDS})")
    tag = tag or run_id
    queries = len({r[0] for r in run.rows})
    if out is not None:
        write_run(run.rows, out, fmt, tag)
        return RunExport(run_id=run_id, format=fmt, out=str(Path(out).resolve()), queries=queries,
                         documents=len(run.rows))
    content = "".join(f"{x}\n" for x in trec_lines(run.rows, tag)) if fmt == "trec" else to_ranx(run.rows)
    return RunExport(run_id=run_id, format=fmt, out=None, queries=queries, documents=len(run.rows), content=content)


def compare(root: DataRoot, run_a: str, run_b: str, measures: list[str] | None = None,
            qrels: str | os.PathLike | None = None) -> RunComparison:
    """Every measure for both runs over the same judged queries, with a paired t-test per measure.

    The qrels: QRELS (a TREC or BEIR qrels file) when given, else those stored with the runs' evaluation
    (two stored runs judged against different qrels need QRELS)."""
    a, b = load_run(root, run_a), load_run(root, run_b)
    if qrels is not None:
        judged, source = read_qrels(qrels), str(Path(qrels).resolve())
    else:
        stored = [r.qrels for r in (a, b) if r.qrels is not None]
        if not stored:
            raise RunFormatError("neither run is stored with its qrels: pass --qrels FILE")
        if len(stored) == 2 and stored[0] != stored[1]:
            raise RunFormatError(f"{run_a} and {run_b} were judged against different qrels (or queries): "
                                 "pass --qrels FILE to compare them on one set")
        judged, source = stored[0], "stored"
    results, n = compare_runs(a.rows, b.rows, judged, list(measures or DEFAULT_MEASURES))
    return RunComparison(runs=[a.name, b.name], measures=results, queries=n, test=TEST, qrels=source)
