"""The DuckDB evaluation warehouse (``eval.duckdb`` in the data root).

Every evaluation run stores its results, the qrels it was judged against and
the query ids it was evaluated on, so each run is self-contained. Metrics are
SQL views over those tables, not numbers computed in Python: whatever the
command line prints can be recomputed by anyone with ``duckdb eval.duckdb``.

Metric conventions (checked against ir_measures / pytrec_eval in the tests):

- ``ndcg_10``: trec_eval ``ndcg_cut_10``; linear gain ``rel / log2(pos + 1)``,
  every judgment with relevance > 0 counts as gain (``min_rel`` does not
  apply), ideal DCG from the run's qrels sorted by relevance.
- ``mrr_10``: 1 / position of the first result in the top 10 with relevance
  >= ``min_rel``; 0 when there is none.
- ``recall_100``: relevant (>= ``min_rel``) documents in the top 100 divided
  by all relevant documents in the qrels.
- A query with no results, or with no relevant document at all, scores 0 on
  every metric and still counts in the means (ir_measures does the same for
  any query present in the qrels).
- Positions come from ``rank`` (ties broken by doc_id), renumbered 1..n per
  query, so gaps in ranks cannot inflate a metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

__all__ = ["Warehouse"]

_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    group_id      VARCHAR NOT NULL,
    label         VARCHAR NOT NULL,
    dataset       VARCHAR NOT NULL,
    domain        VARCHAR NOT NULL,
    index_version VARCHAR NOT NULL,
    started_at    TIMESTAMP NOT NULL,  -- UTC
    config        VARCHAR NOT NULL,    -- JSON text: config::JSON, json_extract(config, '$.k')
    n_queries     INTEGER NOT NULL,
    min_rel       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS run_results (
    run_id   VARCHAR NOT NULL,
    query_id VARCHAR NOT NULL,
    doc_id   VARCHAR NOT NULL,
    rank     INTEGER NOT NULL,
    score    DOUBLE
);
CREATE TABLE IF NOT EXISTS run_qrels (
    run_id    VARCHAR NOT NULL,
    query_id  VARCHAR NOT NULL,
    doc_id    VARCHAR NOT NULL,
    relevance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS run_queries (
    run_id   VARCHAR NOT NULL,
    query_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS longdoc_runs (
    run_id     VARCHAR PRIMARY KEY,
    dataset    VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    config     VARCHAR
);
CREATE TABLE IF NOT EXISTS rec_runs (
    run_id           VARCHAR PRIMARY KEY,
    group_id         VARCHAR NOT NULL,   -- one eval-rec invocation: its variants share it
    variant          VARCHAR NOT NULL,   -- popularity, text_zero_shot, sidestep, shuffled_codes, ...
    protocol         VARCHAR NOT NULL,   -- full (nothing masked) or masked (history items excluded)
    split            VARCHAR NOT NULL,   -- test or valid
    dataset          VARCHAR NOT NULL,
    domain           VARCHAR NOT NULL,
    table_version    VARCHAR,
    codebook_version VARCHAR,
    started_at       TIMESTAMP NOT NULL,
    train_seconds    DOUBLE,
    peak_rss_mb      DOUBLE,
    config           VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS rec_ranks (
    run_id VARCHAR NOT NULL,
    row_id INTEGER NOT NULL,  -- position of the (history, target) pair in the split
    rank   INTEGER NOT NULL   -- 0-based rank of the target among all items, ties counted against it
);
CREATE TABLE IF NOT EXISTS rec_curves (
    run_id VARCHAR NOT NULL,
    epoch  INTEGER NOT NULL,
    metric VARCHAR NOT NULL,
    value  DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS verifier_curves (
    domain           VARCHAR NOT NULL,
    verifier_version VARCHAR NOT NULL,
    epoch            INTEGER NOT NULL,
    metric           VARCHAR NOT NULL,  -- loss, val_ndcg10
    value            DOUBLE NOT NULL,
    recorded_at      TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS codebook_diagnostics (
    codebook_version VARCHAR NOT NULL,
    domain           VARCHAR NOT NULL,
    metric           VARCHAR NOT NULL,  -- entropy_bits_mean, dead_codewords, colliding_items, quant_error, ...
    value            DOUBLE NOT NULL,
    recorded_at      TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS longdoc_metrics (
    run_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,  -- dotted path into the report, e.g. within_document.map_conditioned.recall@3
    value  DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS negation_runs (
    run_id     VARCHAR PRIMARY KEY,
    source     VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    config     VARCHAR
);
CREATE TABLE IF NOT EXISTS negation_metrics (
    run_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,  -- dotted path into the report, e.g. rankers.maxsim.pairwise_accuracy
    value  DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS lab_runs (
    run_id     VARCHAR PRIMARY KEY,
    task       VARCHAR NOT NULL,  -- planted, retrieval, rec
    started_at TIMESTAMP NOT NULL,
    seconds    DOUBLE,
    config     VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS lab_results (
    run_id      VARCHAR NOT NULL,
    section     VARCHAR NOT NULL,  -- headline, grid, optimisation, curve
    estimator   VARCHAR NOT NULL,  -- sidestep, reinforce, gumbel_softmax, ...
    k           INTEGER,
    temperature DOUBLE,            -- tau of a relaxation, sigma of the perturbed optimizer
    samples     INTEGER,           -- samples per gradient estimate
    seed        INTEGER,
    step        INTEGER,
    metric      VARCHAR NOT NULL,  -- bias, cosine, variance, expected_loss_mean, ...
    value       DOUBLE NOT NULL
);
"""

_REC_METRICS = """
CREATE OR REPLACE VIEW rec_metrics AS
SELECT r.run_id, r.group_id, r.variant, r.protocol, r.split, r.dataset, r.domain, r.table_version,
       r.train_seconds, r.peak_rss_mb, r.started_at, count(k.rank) AS n_users,
       avg(CASE WHEN k.rank < 10 THEN 1.0 ELSE 0.0 END) AS recall_10,
       avg(CASE WHEN k.rank < 10 THEN 1.0 / log2(k.rank + 2) ELSE 0.0 END) AS ndcg_10,
       avg(CASE WHEN k.rank < 50 THEN 1.0 ELSE 0.0 END) AS recall_50,
       avg(CASE WHEN k.rank < 50 THEN 1.0 / log2(k.rank + 2) ELSE 0.0 END) AS ndcg_50
FROM rec_runs r LEFT JOIN rec_ranks k USING (run_id)
GROUP BY ALL;
"""

_QUERY_METRICS = """
CREATE OR REPLACE VIEW query_metrics AS
WITH positioned AS (
    SELECT run_id, query_id, doc_id,
           row_number() OVER (PARTITION BY run_id, query_id ORDER BY rank, doc_id) AS pos
    FROM run_results
),
judged AS (  -- the top 100 of each evaluated query, with its grade (unjudged = 0)
    SELECT p.run_id, p.query_id, p.pos, coalesce(q.relevance, 0) AS rel, r.min_rel
    FROM positioned p
    JOIN runs r USING (run_id)
    JOIN run_queries e ON e.run_id = p.run_id AND e.query_id = p.query_id
    LEFT JOIN run_qrels q
           ON q.run_id = p.run_id AND q.query_id = p.query_id AND q.doc_id = p.doc_id
    WHERE p.pos <= 100
),
found AS (
    SELECT run_id, query_id,
           sum(CASE WHEN pos <= 10 AND rel > 0 THEN rel / log2(pos + 1) ELSE 0 END) AS dcg_10,
           min(CASE WHEN pos <= 10 AND rel >= min_rel THEN pos END)                 AS first_hit,
           count(*) FILTER (WHERE rel >= min_rel)                                   AS hits_100
    FROM judged
    GROUP BY run_id, query_id
),
ideal AS (
    SELECT run_id, query_id, relevance,
           row_number() OVER (PARTITION BY run_id, query_id ORDER BY relevance DESC) AS pos
    FROM run_qrels
    WHERE relevance > 0
),
ideal_dcg AS (
    SELECT run_id, query_id, sum(relevance / log2(pos + 1)) AS idcg_10
    FROM ideal WHERE pos <= 10
    GROUP BY run_id, query_id
),
relevant AS (
    SELECT q.run_id, q.query_id, count(*) AS n_rel
    FROM run_qrels q JOIN runs r USING (run_id)
    WHERE q.relevance >= r.min_rel
    GROUP BY q.run_id, q.query_id
)
SELECT e.run_id, e.query_id,
       coalesce(f.dcg_10 / nullif(i.idcg_10, 0), 0.0)::DOUBLE     AS ndcg_10,
       coalesce(1.0 / f.first_hit, 0.0)::DOUBLE                   AS mrr_10,
       coalesce(f.hits_100 / nullif(n.n_rel, 0), 0.0)::DOUBLE     AS recall_100
FROM run_queries e
LEFT JOIN found f     ON f.run_id = e.run_id AND f.query_id = e.query_id
LEFT JOIN ideal_dcg i ON i.run_id = e.run_id AND i.query_id = e.query_id
LEFT JOIN relevant n  ON n.run_id = e.run_id AND n.query_id = e.query_id;
"""

_RUN_METRICS = """
CREATE OR REPLACE VIEW run_metrics AS
SELECT r.run_id, r.label, r.group_id, r.dataset, r.domain, r.index_version, r.started_at,
       r.n_queries,
       avg(m.ndcg_10)    AS ndcg_10,
       avg(m.mrr_10)     AS mrr_10,
       avg(m.recall_100) AS recall_100,
       r.min_rel
FROM runs r
LEFT JOIN query_metrics m USING (run_id)
GROUP BY ALL;
"""

_RESULT_COLUMNS = ("query_id", "doc_id", "rank", "score")
_METRIC_KEYS = {"ndcg@10": "ndcg_10", "mrr@10": "mrr_10", "recall@100": "recall_100"}


class Warehouse:
    """One connection to the evaluation database; use as a context manager."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"evaluation database not found: {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path), read_only=read_only)
        if not read_only:
            self._create_schema()

    def _create_schema(self) -> None:
        """Tables if missing, views always replaced: reopening upgrades the metric SQL."""
        self._con.execute("BEGIN")
        try:
            self._con.execute(_TABLES)
            self._con.execute(_QUERY_METRICS)
            self._con.execute(_RUN_METRICS)
            self._con.execute(_REC_METRICS)
            self._con.execute("COMMIT")
        except Exception:
            self._con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Release the file lock so other processes (the duckdb CLI) can open it."""
        self._con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------

    def record_run(
        self,
        *,
        run_id: str,
        dataset: str,
        domain: str,
        index_version: str,
        config: Mapping[str, Any],
        results: pa.Table,
        qrels: Mapping[str, Mapping[str, int]],
        queries: Iterable[str] | None = None,
        min_rel: int = 1,
        label: str = "main",
        group_id: str | None = None,
    ) -> None:
        """Store one configuration's run atomically, replacing any earlier run_id.

        ``queries`` are the evaluated query ids (default: the qrels' queries);
        one with no results still counts with metrics 0. Only the qrels of the
        evaluated queries are stored, so the run needs nothing outside itself.
        """
        if min_rel < 1:
            raise ValueError(f"min_rel must be >= 1 (unjudged documents have relevance 0), got {min_rel}")
        evaluated = _unique_ids(qrels.keys() if queries is None else queries)
        if not evaluated:
            raise ValueError(f"run {run_id!r}: no queries to evaluate")
        results = _normalize_results(results)
        run_row = _run_row(run_id, group_id or run_id, label, dataset, domain, index_version,
                           config, len(evaluated), min_rel)
        qrels_table = _qrels_table(qrels, set(evaluated))
        queries_table = pa.table({"query_id": pa.array(evaluated, pa.string())})
        self._insert_run(run_id, run_row, results, qrels_table, queries_table)

    def _insert_run(self, run_id: str, run_row: pa.Table, results: pa.Table,
                    qrels: pa.Table, queries: pa.Table) -> None:
        """Delete then insert in one transaction: a crash leaves the old run or the new one."""
        con = self._con
        staged = {"_stage_run": run_row, "_stage_results": results,
                  "_stage_qrels": qrels, "_stage_queries": queries}
        for name, table in staged.items():
            con.register(name, table)
        con.execute("BEGIN")
        try:
            for table in ("runs", "run_results", "run_qrels", "run_queries"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.execute("INSERT INTO runs BY NAME SELECT * FROM _stage_run")
            con.execute("INSERT INTO run_results SELECT ?, query_id, doc_id, rank, score FROM _stage_results",
                        [run_id])
            con.execute("INSERT INTO run_qrels SELECT ?, query_id, doc_id, relevance FROM _stage_qrels",
                        [run_id])
            con.execute("INSERT INTO run_queries SELECT ?, query_id FROM _stage_queries", [run_id])
            _check_results(con, run_id)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            for name in staged:
                con.unregister(name)

    # -- reading -----------------------------------------------------------

    def metrics(self, run_id: str) -> dict[str, float]:
        """The run's means as the command line prints them, read from ``run_metrics``."""
        rows = self._con.sql(
            "SELECT ndcg_10, mrr_10, recall_100 FROM run_metrics WHERE run_id = ?", params=[run_id]
        ).fetchall()
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return {key: float(value) for key, value in zip(_METRIC_KEYS, rows[0], strict=True)}

    def per_query(self, run_id: str) -> pa.Table:
        """Per-query metrics of one run (every evaluated query), sorted by query_id."""
        return self.query("SELECT * FROM query_metrics WHERE run_id = ? ORDER BY query_id", [run_id])

    def runs(self) -> pa.Table:
        """All runs with their aggregate metrics, newest first."""
        return self.query("SELECT * FROM run_metrics ORDER BY started_at DESC, run_id")

    def run_info(self, run_id: str) -> dict[str, Any]:
        """The ``runs`` row of one run (config parsed); KeyError for an unknown run id."""
        t = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_pylist()
        if not t:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return {**t[0], "config": json.loads(t[0]["config"])}

    def run_rows(self, run_id: str) -> list[tuple[str, str, int, float]]:
        """The run's results as (query_id, doc_id, rank, score), by query then rank."""
        return self._con.sql("SELECT query_id, doc_id, rank, score FROM run_results WHERE run_id = ? "
                             "ORDER BY query_id, rank, doc_id", params=[run_id]).fetchall()

    def run_qrels(self, run_id: str) -> dict[str, dict[str, int]]:
        """The qrels the run was judged against, for each evaluated query (a query without judgments: {})."""
        out: dict[str, dict[str, int]] = {q: {} for (q,) in self._con.sql(
            "SELECT query_id FROM run_queries WHERE run_id = ? ORDER BY query_id", params=[run_id]).fetchall()}
        for q, d, rel in self._con.sql("SELECT query_id, doc_id, relevance FROM run_qrels WHERE run_id = ? "
                                       "ORDER BY query_id, doc_id", params=[run_id]).fetchall():
            out.setdefault(q, {})[d] = rel
        return out

    def record_longdoc(self, *, run_id: str, dataset: str, report: dict[str, Any], config: dict[str, Any]) -> int:
        """Store every numeric figure of an eval-longdoc report under its dotted path."""
        return self._record_figures("longdoc", run_id, dataset, report, config)

    def record_negation(self, *, run_id: str, source: str, report: dict[str, Any], config: dict[str, Any]) -> int:
        """Store every numeric figure of an eval-negation report under its dotted path."""
        return self._record_figures("negation", run_id, source, report, config)

    def _record_figures(self, table: str, run_id: str, dataset: str, report: dict[str, Any],
                        config: dict[str, Any]) -> int:
        rows: list[tuple[str, str, float]] = []

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(obj, list):
                for i, v in enumerate(obj):
                    walk(f"{prefix}.{i}", v)
            elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
                rows.append((run_id, prefix, float(obj)))

        walk("", report)
        self._con.execute("BEGIN")
        try:
            self._con.execute(f"DELETE FROM {table}_metrics WHERE run_id = ?", [run_id])
            self._con.execute(f"DELETE FROM {table}_runs WHERE run_id = ?", [run_id])
            self._con.execute(f"INSERT INTO {table}_runs VALUES (?, ?, now()::TIMESTAMP, ?)",
                              [run_id, dataset, json.dumps(config, sort_keys=True, default=str)])
            if rows:
                self._con.executemany(f"INSERT INTO {table}_metrics VALUES (?, ?, ?)", rows)
            self._con.execute("COMMIT")
        except Exception:
            self._con.execute("ROLLBACK")
            raise
        return len(rows)

    def record_rec_run(self, *, run_id: str, group_id: str, variant: str, protocol: str, split: str,
                       dataset: str, domain: str, ranks: Iterable[int], config: Mapping[str, Any],
                       table_version: str | None = None, codebook_version: str | None = None,
                       train_seconds: float | None = None, peak_rss_mb: float | None = None,
                       curve: Iterable[Mapping[str, Any]] = ()) -> dict[str, float]:
        """Store one recommendation variant's per-user ranks (metrics are the rec_metrics view)."""
        ranks_t = pa.table({"row_id": pa.array(range(len(r := list(ranks))), pa.int32()),
                            "rank": pa.array(r, pa.int32())})
        curve_rows = [(run_id, int(c["epoch"]), k, float(v)) for c in curve for k, v in c.items()
                      if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        con = self._con
        con.register("_stage_ranks", ranks_t)
        con.execute("BEGIN")
        try:
            for table in ("rec_runs", "rec_ranks", "rec_curves"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.execute("INSERT INTO rec_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?)",
                        [run_id, group_id, variant, protocol, split, dataset, domain, table_version,
                         codebook_version, train_seconds, peak_rss_mb, json.dumps(config, sort_keys=True,
                                                                                  default=str)])
            con.execute("INSERT INTO rec_ranks SELECT ?, row_id, rank FROM _stage_ranks", [run_id])
            if curve_rows:
                con.executemany("INSERT INTO rec_curves VALUES (?, ?, ?, ?)", curve_rows)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_stage_ranks")
        return self.rec_metrics(run_id)

    def rec_metrics(self, run_id: str) -> dict[str, float]:
        rows = self._con.sql("SELECT recall_10, ndcg_10, recall_50, ndcg_50 FROM rec_metrics WHERE run_id = ?",
                             params=[run_id]).fetchall()
        if not rows:
            raise KeyError(f"no recommendation run {run_id!r} in {self.path}")
        keys = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
        return {k: float(v or 0.0) for k, v in zip(keys, rows[0], strict=True)}

    def record_verifier_curve(self, domain: str, version: str, curve: list[dict[str, Any]]) -> int:
        """One row per (epoch, metric) of a verifier training run."""
        rows = [[domain, version, int(c["epoch"]), k, float(v)] for c in curve for k, v in c.items() if k != "epoch"]
        self._con.execute("DELETE FROM verifier_curves WHERE verifier_version = ? AND domain = ?", [version, domain])
        if rows:
            self._con.executemany("INSERT INTO verifier_curves VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP)", rows)
        return len(rows)

    def record_codebook(self, version: str, diagnostics: Mapping[str, Mapping[str, Any]]) -> int:
        """Numeric codebook diagnostics per domain (lists such as per-position entropy are left out)."""
        rows = [(version, d, k, float(v)) for d, m in diagnostics.items() for k, v in m.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._con.execute("BEGIN")
        try:
            self._con.execute("DELETE FROM codebook_diagnostics WHERE codebook_version = ?", [version])
            if rows:
                self._con.executemany("INSERT INTO codebook_diagnostics VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
                                      rows)
            self._con.execute("COMMIT")
        except Exception:
            self._con.execute("ROLLBACK")
            raise
        return len(rows)

    def record_lab(self, *, run_id: str, task: str, rows: Iterable[Mapping[str, Any]], config: Mapping[str, Any],
                   seconds: float | None = None) -> int:
        """One gradient-lab run and its long rows (``sidestep.lab.planted.report_rows``), replacing run_id."""
        types = {"section": pa.string(), "estimator": pa.string(), "k": pa.int32(), "temperature": pa.float64(),
                 "samples": pa.int32(), "seed": pa.int32(), "step": pa.int32(), "metric": pa.string(),
                 "value": pa.float64()}
        rows = list(rows)
        staged = pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in types.items()})
        con = self._con
        con.register("_stage_lab", staged)
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM lab_results WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM lab_runs WHERE run_id = ?", [run_id])
            con.execute("INSERT INTO lab_runs VALUES (?, ?, now()::TIMESTAMP, ?, ?)",
                        [run_id, task, seconds, json.dumps(dict(config), sort_keys=True, default=str)])
            con.execute(f"INSERT INTO lab_results SELECT ?, {', '.join(types)} FROM _stage_lab", [run_id])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_stage_lab")
        return len(rows)

    def report_data(self, domain: str | None = None) -> dict[str, Any]:
        """What ``sidestep report`` draws, as plain rows (one domain, or all when None):

        - ``eval_runs``: the main run of each evaluation (the configuration that ran, not the baselines
          beside it) with its metrics and index version, by domain and time;
        - ``query_deltas``: per domain, per-query nDCG@10 of its two latest main runs (``before``, ``after``);
        - ``verifier_curves``: the latest verifier version's per-epoch rows per domain (the query adapter's
          are its ``adapter_*`` metrics); ``rec_curves``: the lookup-table training curves of each domain's
          latest eval-rec; ``rec_metrics``: that eval-rec's variants and controls (test split);
        - ``lab``: the latest planted gradient-lab run (else the latest of any task), its headline rows and its
          optimisation curves; ``lab_retrieval``: the latest retrieval lab run, its results and controls (means
          over seeds) and its learning curves (mean and std over seeds per step);
        - ``longdoc``: the latest eval-longdoc run's metrics.
        """
        d = [domain, domain]
        runs = self.query(
            """WITH picked AS (
                   SELECT m.*, json_extract_string(r.config, '$.variant') AS variant,
                          row_number() OVER (PARTITION BY m.group_id ORDER BY
                              m.label <> coalesce(json_extract_string(r.config, '$.variant'), '') DESC,
                              json_extract_string(r.config, '$.variant') = 'verifier' DESC, m.run_id) AS pick
                   FROM run_metrics m JOIN runs r USING (run_id) WHERE ? IS NULL OR m.domain = ?)
               SELECT run_id, group_id, label, variant, dataset, domain, index_version, started_at, n_queries,
                      ndcg_10, mrr_10, recall_100
               FROM picked WHERE pick = 1 ORDER BY domain, started_at, run_id""", d).to_pylist()
        deltas = []
        for dom in sorted({r["domain"] for r in runs}):
            mine = [r for r in runs if r["domain"] == dom]
            if len(mine) >= 2:
                before, after = mine[-2]["run_id"], mine[-1]["run_id"]
                rows = self.query(
                    """SELECT a.query_id, a.ndcg_10 AS before, b.ndcg_10 AS after, b.ndcg_10 - a.ndcg_10 AS delta
                       FROM query_metrics a JOIN query_metrics b USING (query_id)
                       WHERE a.run_id = ? AND b.run_id = ? ORDER BY delta, query_id""", [before, after]).to_pylist()
                deltas.append({"domain": dom, "before": before, "after": after, "rows": rows})
        verifier = self.query(
            """SELECT c.domain, c.verifier_version, c.epoch, c.metric, c.value FROM verifier_curves c
               JOIN (SELECT domain, arg_max(verifier_version, recorded_at) AS verifier_version
                     FROM verifier_curves GROUP BY domain) l USING (domain, verifier_version)
               WHERE ? IS NULL OR c.domain = ? ORDER BY c.domain, c.metric, c.epoch""", d).to_pylist()
        latest_rec = """(SELECT domain, arg_max(group_id, started_at) AS group_id FROM rec_runs GROUP BY domain)"""
        rec_curves = self.query(
            f"""SELECT r.domain, r.group_id, r.variant, c.epoch, c.metric, c.value FROM rec_curves c
                JOIN rec_runs r USING (run_id) JOIN {latest_rec} l USING (domain, group_id)
                WHERE ? IS NULL OR r.domain = ? ORDER BY r.domain, r.variant, c.metric, c.epoch""", d).to_pylist()
        rec_metrics = self.query(
            f"""SELECT m.domain, m.group_id, m.dataset, m.variant, m.protocol, m.n_users, m.recall_10, m.ndcg_10,
                       m.recall_50, m.ndcg_50 FROM rec_metrics m JOIN {latest_rec} l USING (domain, group_id)
                WHERE m.split = 'test' AND (? IS NULL OR m.domain = ?)
                ORDER BY m.domain, m.protocol, m.ndcg_10 DESC, m.variant""", d).to_pylist()
        lab_run = self.query("SELECT run_id, task, started_at, seconds FROM lab_runs "
                             "ORDER BY task <> 'planted', started_at DESC, run_id LIMIT 1").to_pylist()
        lab = None
        if lab_run:
            lab_id = lab_run[0]["run_id"]
            lab = {**lab_run[0],
                   "headline": self.query("SELECT estimator, metric, value FROM lab_results WHERE run_id = ? AND "
                                          "section = 'headline' ORDER BY estimator, metric", [lab_id]).to_pylist(),
                   "curve": self.query("SELECT estimator, step, avg(value) AS value FROM lab_results WHERE run_id = ?"
                                       " AND section = 'curve' AND metric = 'expected_loss' GROUP BY ALL "
                                       "ORDER BY estimator, step", [lab_id]).to_pylist()}
        retrieval_run = self.query("SELECT run_id, task, started_at, seconds FROM lab_runs WHERE task = 'retrieval' "
                                   "ORDER BY started_at DESC, run_id LIMIT 1").to_pylist()
        lab_retrieval = None
        if retrieval_run:
            rid = retrieval_run[0]["run_id"]
            lab_retrieval = {**retrieval_run[0], "results": self.query(
                "SELECT section, estimator, metric, value FROM lab_results WHERE run_id = ? AND seed IS NULL AND "
                "section IN ('result', 'control') ORDER BY section, estimator, metric", [rid]).to_pylist(),
                "curve": self.query(
                    "SELECT estimator, metric, step, avg(value) AS value, stddev_pop(value) AS std FROM lab_results "
                    "WHERE run_id = ? AND section = 'curve' GROUP BY ALL ORDER BY estimator, metric, step",
                    [rid]).to_pylist()}
        rec_lab_run = self.query("SELECT run_id, task, started_at, seconds FROM lab_runs WHERE task = 'rec' "
                                 "ORDER BY started_at DESC, run_id LIMIT 1").to_pylist()
        lab_rec = None
        if rec_lab_run:
            lab_rec = {**rec_lab_run[0], "results": self.query(
                "SELECT section, estimator, metric, value FROM lab_results WHERE run_id = ? AND seed IS NULL AND "
                "section IN ('result', 'control', 'delta') ORDER BY section, estimator, metric",
                [rec_lab_run[0]["run_id"]]).to_pylist()}
        longdoc_run = self.query("SELECT run_id, dataset, started_at FROM longdoc_runs "
                                 "ORDER BY started_at DESC, run_id LIMIT 1").to_pylist()
        longdoc = None
        if longdoc_run:
            longdoc = {**longdoc_run[0], "metrics": self.query(
                "SELECT metric, value FROM longdoc_metrics WHERE run_id = ? ORDER BY metric",
                [longdoc_run[0]["run_id"]]).to_pylist()}
        return {"eval_runs": runs, "query_deltas": deltas, "verifier_curves": verifier, "rec_curves": rec_curves,
                "rec_metrics": rec_metrics, "lab": lab, "lab_retrieval": lab_retrieval, "longdoc": longdoc,
                "lab_rec": lab_rec}

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Any SQL against the warehouse, as an Arrow table."""
        return self._con.sql(sql, params=params).to_arrow_table()


def _unique_ids(ids: Iterable[str]) -> list[str]:
    """Query ids as strings, first occurrence kept, so n_queries counts each once."""
    return list(dict.fromkeys(str(i) for i in ids))


def _normalize_results(results: pa.Table) -> pa.Table:
    """The four result columns with the warehouse's types; a clear error if one is missing."""
    missing = [c for c in _RESULT_COLUMNS if c not in results.column_names]
    if missing:
        raise ValueError(f"results table lacks columns {missing}; has {results.column_names}")
    schema = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()),
                        ("rank", pa.int32()), ("score", pa.float64())])
    return results.select(list(_RESULT_COLUMNS)).cast(schema)


def _check_results(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Reject ranks below 1 and a document listed twice for one query (trec_eval would reject it too)."""
    found = con.sql(
        """SELECT query_id, doc_id, count(*) AS n, min(rank) AS min_rank FROM run_results
           WHERE run_id = ? GROUP BY query_id, doc_id HAVING n > 1 OR min_rank < 1 LIMIT 1""",
        params=[run_id],
    ).fetchall()
    if found:
        bad = found[0]
        raise ValueError(
            f"run {run_id!r}: query {bad[0]!r} has doc {bad[1]!r} {bad[2]} time(s), min rank {bad[3]}"
            " (each document once per query, ranks from 1)"
        )


def _run_row(run_id: str, group_id: str, label: str, dataset: str, domain: str, index_version: str,
             config: Mapping[str, Any], n_queries: int, min_rel: int) -> pa.Table:
    """The single ``runs`` row; started_at is naive UTC so the column sorts across machines."""
    return pa.table({
        "run_id": [run_id], "group_id": [group_id], "label": [label], "dataset": [dataset],
        "domain": [domain], "index_version": [index_version],
        "started_at": pa.array([datetime.now(UTC).replace(tzinfo=None)], pa.timestamp("us")),
        "config": [json.dumps(dict(config), sort_keys=True, default=str)],
        "n_queries": pa.array([n_queries], pa.int32()), "min_rel": pa.array([min_rel], pa.int32()),
    })


def _qrels_table(qrels: Mapping[str, Mapping[str, int]], evaluated: set[str]) -> pa.Table:
    """Flatten the qrels of the evaluated queries into columns for one bulk insert."""
    rows = [(str(q), str(d), int(rel)) for q, docs in qrels.items() if str(q) in evaluated
            for d, rel in docs.items()]
    query_ids, doc_ids, rels = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table({"query_id": pa.array(query_ids, pa.string()),
                     "doc_id": pa.array(doc_ids, pa.string()),
                     "relevance": pa.array(rels, pa.int32())})
