"""Runs as IR tools read them: TREC run files, ranx-style JSON runs, qrels files, any ir_measures measure,
and the comparison of two runs over the same queries with a paired significance test.

A run here is a list of ``(query_id, doc_id, rank, score)`` rows (ranks from 1 within each query), the
shape the evaluation warehouse stores. Pure logic: no storage, no Prefect, no Ray.

- TREC run: six whitespace-separated columns ``qid Q0 docid rank score tag``, one line per retrieved
  document. trec_eval and ir_measures order a query's documents by score (read in single precision),
  not by rank, and break ties by document id; so the writer keeps the scores strictly decreasing down
  each ranking: a score that ties with (or exceeds) the one above it is written a hair (2**-20 of it)
  below that one, and the file ranks exactly as the run does.
- ranx-style run: ``{qid: {docid: score}}`` (JSON), with the same scores as the TREC file.
- qrels: TREC qrels (``qid 0 docid relevance``) or a BEIR ``qrels/*.tsv`` (``query-id corpus-id score``).
- Comparison: per-query values of each measure from ir_measures over the qrels' queries (a judged query
  a run returned nothing for counts 0, as ``trec_eval -c`` does); the mean of each, ``delta = b - a``, a
  paired t-test (``scipy.stats.ttest_rel``) over the per-query values, and per-query wins (B above A),
  ties and losses (B below A).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sidestep.results import MeasureComparison

__all__ = [
    "DEFAULT_MEASURES", "FORMATS", "RunFormatError", "RunRow", "compare_runs", "format_trec", "paired",
    "parse_measures", "per_query", "read_qrels", "read_trec", "to_ranx", "trec_lines", "write_run",
]

RunRow = tuple[str, str, int, float]
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100")
FORMATS = ("trec", "ranx")
TEST = "paired t-test"


class RunFormatError(ValueError):
    """A run or qrels file that cannot be read, or a measure name ir_measures does not know."""


def _ordered(rows: Iterable[Sequence]) -> dict[str, list[tuple[str, int, float]]]:
    """Rows grouped by query (first-seen query order), each ranking sorted by rank then doc_id."""
    by_q: dict[str, list[tuple[str, int, float]]] = {}
    for q, d, r, s in rows:
        by_q.setdefault(str(q), []).append((str(d), int(r), float(s) if s is not None else 0.0))
    for ranked in by_q.values():
        ranked.sort(key=lambda x: (x[1], x[0]))
    return by_q


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _decreasing(scores: list[float]) -> list[float]:
    """The scores, each set just below the one above it where it is not already below it as trec_eval
    reads scores (single precision): ties and inversions. The step is 2**-20 of the score (8 single-
    precision steps), so it survives the file and the reader."""
    out: list[float] = []
    for s in scores:
        if out and not (math.isfinite(s) and _f32(s) < _f32(out[-1])):
            prev = out[-1]
            s = prev - max(abs(prev), 1e-6) * 2.0 ** -20
        out.append(s)
    return out


def _rankings(rows: Iterable[Sequence]) -> dict[str, list[tuple[str, int, float]]]:
    """Per query: (doc_id, rank renumbered 1..n, score strictly decreasing), in the run's order."""
    out = {}
    for q, ranked in _ordered(rows).items():
        scores = _decreasing([s for _, _, s in ranked])
        out[q] = [(d, i, s) for i, ((d, _, _), s) in enumerate(zip(ranked, scores, strict=True), 1)]
    return out


def _check_token(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise RunFormatError(f"{what} {value!r} cannot be written to a TREC run (empty or has whitespace)")


def trec_lines(rows: Iterable[Sequence], tag: str) -> Iterable[str]:
    """The run as TREC lines ``qid Q0 docid rank score tag`` (no newline), ranks from 1."""
    _check_token(tag, "tag")
    for q, ranked in _rankings(rows).items():
        _check_token(q, "query id")
        for d, r, s in ranked:
            _check_token(d, "document id")
            yield f"{q} Q0 {d} {r} {s!r} {tag}"


def format_trec(rows: Iterable[Sequence], tag: str) -> str:
    return "".join(line + "\n" for line in trec_lines(rows, tag))


def to_ranx(rows: Iterable[Sequence]) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` with the TREC file's scores (strictly decreasing down each ranking)."""
    return {q: {d: s for d, _, s in ranked} for q, ranked in _rankings(rows).items()}


def write_run(rows: Iterable[Sequence], path: str | os.PathLike, fmt: str = "trec", tag: str = "sidestep") -> int:
    """Write the run to PATH as ``trec`` or ``ranx`` (JSON) through a temporary file; the lines written."""
    if fmt not in FORMATS:
        raise RunFormatError(f"unknown run format {fmt!r}: expected one of {', '.join(FORMATS)}")
    rows = list(rows)
    text = format_trec(rows, tag) if fmt == "trec" else json.dumps(to_ranx(rows), indent=1) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return len(rows)


def read_trec(path: str | os.PathLike) -> list[RunRow]:
    """A TREC run file's rows; a ranx-style JSON run (``{qid: {docid: score}}``) is read too, its ranks
    from its scores. Raises RunFormatError naming the line that is not six columns."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            run = json.loads(text)
        except json.JSONDecodeError as e:
            raise RunFormatError(f"{path}: not a JSON run: {e}") from None
        return [(str(q), str(d), r, float(s)) for q, docs in run.items()
                for r, (d, s) in enumerate(sorted(docs.items(), key=lambda x: (-float(x[1]), x[0])), 1)]
    rows: list[RunRow] = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise RunFormatError(f"{path}:{n}: a TREC run line has 6 columns (qid Q0 docid rank score tag), "
                                 f"found {len(parts)}")
        try:
            rows.append((parts[0], parts[2], int(parts[3]), float(parts[4])))
        except ValueError:
            raise RunFormatError(f"{path}:{n}: rank must be an integer and score a number") from None
    return rows


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid rel``) or a BEIR qrels TSV (``query-id corpus-id score``, header)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 4:
            q, _, d, rel = parts
        elif len(parts) == 3:
            q, d, rel = parts
        else:
            raise RunFormatError(f"{path}:{n}: qrels lines have 4 columns (TREC) or 3 (BEIR), found {len(parts)}")
        try:
            qrels.setdefault(q, {})[d] = int(float(rel))
        except ValueError:
            if n == 1:  # a BEIR header
                continue
            raise RunFormatError(f"{path}:{n}: relevance must be a number, got {rel!r}") from None
    return qrels


def parse_measures(names: Iterable[str]) -> dict[str, Any]:
    """ir_measures measures by name (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``, ``P@5``, ... or a
    trec_eval name such as ``ndcg_cut_10``), keyed by the name given."""
    import ir_measures

    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = ir_measures.parse_measure(name)
        except (NameError, ValueError, TypeError):
            try:
                found = ir_measures.parse_trec_measure(name)
            except (NameError, ValueError, TypeError):
                found = []
            if len(found) != 1:
                raise RunFormatError(f"unknown measure {name!r}: use an ir_measures name such as "
                                     f"{', '.join(DEFAULT_MEASURES)}, AP or P@5") from None
            out[name] = found[0]
    if not out:
        raise RunFormatError("no measures requested")
    return out


def per_query(rows: Iterable[Sequence], qrels: Mapping[str, Mapping[str, int]],
              measures: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{measure name: {qid: value}}`` over every query of the qrels (0 where the run has none)."""
    import ir_measures

    run = to_ranx(rows)
    queries = list(qrels)
    by_measure = {m: name for name, m in measures.items()}
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(queries, 0.0) for name in measures}
    judged = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    for metric in ir_measures.iter_calc(list(by_measure), judged, {q: run[q] for q in run if q in judged}):
        name = by_measure.get(metric.measure)
        if name is not None and metric.query_id in values[name]:
            values[name][metric.query_id] = float(metric.value)
    return values


def paired(a: Sequence[float], b: Sequence[float]) -> MeasureComparison:
    """Means, b - a, the paired t-test's two-sided p-value, and per-query wins / ties / losses of B.
    Identical values everywhere give p_value 1.0 (nothing differs); fewer than two queries give None."""
    from scipy import stats

    n = len(a)
    mean_a = sum(a) / n if n else 0.0
    mean_b = sum(b) / n if n else 0.0
    wins = sum(1 for x, y in zip(a, b, strict=True) if y > x)
    losses = sum(1 for x, y in zip(a, b, strict=True) if y < x)
    p: float | None = None
    if wins == losses == 0 and n:
        p = 1.0
    elif n >= 2:
        p = float(stats.ttest_rel(b, a).pvalue)
        p = None if math.isnan(p) else p
    return MeasureComparison(a=mean_a, b=mean_b, delta=mean_b - mean_a, p_value=p, wins=wins, ties=n - wins - losses,
                       losses=losses)


def compare_runs(run_a: Iterable[Sequence], run_b: Iterable[Sequence], qrels: Mapping[str, Mapping[str, int]],
                 measures: Iterable[str] = DEFAULT_MEASURES) -> tuple[dict[str, MeasureComparison], int]:
    """Each measure for both runs over the qrels' queries, with the paired test; and the query count."""
    parsed = parse_measures(measures)
    if not qrels:
        raise RunFormatError("the qrels judge no query")
    va, vb = per_query(run_a, qrels, parsed), per_query(run_b, qrels, parsed)
    queries = list(qrels)
    return {name: paired([va[name][q] for q in queries], [vb[name][q] for q in queries])
            for name in parsed}, len(queries)
