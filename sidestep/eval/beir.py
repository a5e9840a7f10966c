"""Pure readers for BEIR folders (``queries.jsonl``, ``qrels/<split>.tsv``).

They only read: ingesting the corpus and writing anything is the job of the
ingest flow and ``storage/``. Malformed input raises with the file and line,
because an evaluation on silently truncated qrels reports wrong numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["available_splits", "load_qrels", "load_queries"]


def _folder(folder: str | Path) -> Path:
    """Resolve ``folder`` and fail early with its path if it is not a directory."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {path}")
    return path


def _qrels_path(folder: Path, split: str) -> Path:
    """Path of one split's qrels; a missing split names the ones that exist."""
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"qrels for split {split!r} not found: {path} (available: {available_splits(folder)})"
        )
    return path


def available_splits(folder: str | Path) -> list[str]:
    """Split names that have a ``qrels/<split>.tsv`` file, sorted; [] without a qrels folder."""
    qrels_dir = _folder(folder) / "qrels"
    if not qrels_dir.is_dir():
        return []
    return sorted(p.stem for p in qrels_dir.glob("*.tsv") if p.is_file())


def _split_fields(line: str) -> list[str]:
    """Tab-separated when there is a tab (ids may then hold spaces), else any whitespace."""
    return line.split("\t") if "\t" in line else line.split()


def _parse_score(text: str) -> int | None:
    """An integer grade, or None when the field is not one (a header, or garbage)."""
    try:
        return int(text)
    except ValueError:
        return None


def load_qrels(folder: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Read ``qrels/<split>.tsv`` as {query_id: {doc_id: relevance}}.

    The header line ``query-id corpus-id score`` is optional (msmarco-5k has
    none): the first line counts as a header when its score is not an integer.
    Judgments of relevance 0 are kept; they are judgments, not absences.
    """
    path = _qrels_path(_folder(folder), split)
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = [f.strip() for f in _split_fields(line)]
            score = _parse_score(fields[-1]) if len(fields) == 3 else None
            if score is None:
                if lineno == 1 and len(fields) == 3:
                    continue  # header line
                raise ValueError(f"{path}:{lineno}: expected 'query-id corpus-id score(int)', got {line!r}")
            query_id, doc_id = fields[0], fields[1]
            previous = qrels.setdefault(query_id, {}).get(doc_id)
            if previous is not None and previous != score:
                raise ValueError(
                    f"{path}:{lineno}: conflicting judgments for ({query_id}, {doc_id}): {previous} and {score}"
                )
            qrels[query_id][doc_id] = score
    return qrels


def _parse_query(path: Path, lineno: int, line: str) -> tuple[str, str]:
    """One queries.jsonl record as (id, text), with the location in any error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(record, dict) or "_id" not in record or not isinstance(record.get("text"), str):
        raise ValueError(f"{path}:{lineno}: expected an object with '_id' and string 'text'")
    return str(record["_id"]), record["text"]


def load_queries(folder: str | Path, split: str | None = None) -> dict[str, str]:
    """Read ``queries.jsonl`` as {query_id: text}, in file order.

    With ``split``, keep only the queries judged in ``qrels/<split>.tsv``:
    BEIR ships one queries file for all splits (scifact tags its test queries
    ``validation`` in metadata, so the qrels are the only reliable filter).
    """
    root = _folder(folder)
    path = root / "queries.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"queries file not found: {path}")
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            query_id, text = _parse_query(path, lineno, raw)
            if query_id in queries:
                raise ValueError(f"{path}:{lineno}: duplicate query id {query_id!r}")
            queries[query_id] = text
    if split is None:
        return queries
    judged = load_qrels(root, split)
    return {qid: text for qid, text in queries.items() if qid in judged}
