"""The public Python API: what the `sidestep` command line does, as calls that return typed results.

    import sidestep

    eng = sidestep.open("./var")                           # a data root; config="my.toml" names the sources
    eng.ingest("corpus.jsonl", domain="recipes")           # -> IngestReport
    eng.reindex(domains=["recipes"])                       # -> ReindexReport
    hits = eng.search("query", domain="recipes", k=10)     # -> SearchResults, a list of Hit
    recs = eng.recommend(["item1"], domain="shop", k=10)   # -> Recommendations, a list of RecommendedItem
    client = sidestep.Client("http://127.0.0.1:8000")      # search / recommend / healthz over HTTP

An `Engine` runs the same Prefect flows as the command line (ingest, nightly-reindex, evaluate) and the
same in-process search and recommend services as a server replica. Everything heavy (Prefect, torch,
the encoder) is imported on the first call that needs it, so `import sidestep` stays light.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .results import (
    EvalReport,
    IndexReport,
    IngestReport,
    LabReport,
    Recommendations,
    ReindexReport,
    ReportResult,
    RunComparison,
    RunExport,
    SearchResults,
    StatusReport,
)

__all__ = ["Engine", "open", "Client", "APIError"]


def _plain(res: Any) -> dict:
    """A flow's result as a dict (flows return plain dicts; a typed report is read back the same way)."""
    return res.as_dict() if hasattr(res, "as_dict") else res


class Engine:
    """One data root (and its configuration): ingest, reindex, search, recommend, evaluate, status.

    The data root and config are handed to the flows the way the command line's ``--home`` and
    ``--config`` do (``SIDESTEP_HOME`` / ``SIDESTEP_CONFIG`` for the length of each call). The search and
    recommend services are built on first use and kept; each call first picks up newly published versions.
    """

    def __init__(self, root: str | os.PathLike | None = None, config: str | os.PathLike | None = None):
        from sidestep.config import load_settings
        from sidestep.storage import runtime
        from sidestep.storage.paths import DataRoot

        self.config: str | None = str(Path(config).resolve()) if config is not None else None
        self.settings = load_settings(self.config)
        self.root = DataRoot.from_settings(self.settings, override=Path(root).resolve() if root is not None else None)
        runtime.configure(self.root)  # keeps Prefect's state in the data root and everything on loopback
        self._search = None
        self._recommend = None

    def __repr__(self) -> str:
        return f"Engine(root={str(self.root.root)!r}, config={self.config!r})"

    @contextlib.contextmanager
    def _env(self) -> Iterator[None]:
        """The flows read the data root and config from the environment, as in a deployment. Every flow run
        here writes, so the root is probed first (a clear error before any flow starts)."""
        from sidestep.storage.rootcheck import check_root

        check_root(self.root.root)
        want = {"SIDESTEP_HOME": str(self.root.root)}
        if self.config is not None:
            want["SIDESTEP_CONFIG"] = self.config
        before = {k: os.environ.get(k) for k in want}
        os.environ.update(want)
        try:
            yield
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # the batch side: Prefect flows ------------------------------------------
    def ingest(self, path: str | os.PathLike, domain: str, format: str | None = None, *, id_field: str = "id",
               title_field: str | None = "title", text_field: str = "text", snapshot: bool = False,
               max_text_bytes: int | None = None) -> IngestReport:
        """Read a file or folder into DOMAIN (the `ingest` flow): incremental by content hash, bad records
        quarantined with their reason. Raises SourceError for an unreadable source, before writing anything."""
        from sidestep.config import check_name
        from sidestep.ingest.readers import SourceError, detect_format

        path = str(path)
        check_name(domain)
        if format is None:
            detect_format(path)
        elif "://" not in path and not Path(path).exists():
            raise SourceError(f"source not found: {path}")
        from sidestep.flows.ingest import ingest_flow

        with self._env():
            res = ingest_flow(path=str(Path(path).resolve()) if "://" not in path else path, domain=domain,
                              format=format, id_field=id_field, title_field=title_field or None,
                              text_field=text_field, snapshot=snapshot, max_text_bytes=max_text_bytes,
                              config_path=self.config)
        return IngestReport.from_dict(_plain(res))

    def reindex(self, domains: list[str] | str | None = None, *, force: bool = False,
                skip_ingest: bool = False, ray_address: str | None = None) -> ReindexReport:
        """The nightly flow, now: ingest the configured sources, embed what changed, rebuild and publish each
        domain's index (and tables for domains with interactions). All configured domains when None.
        Raises ReindexFailed (its ``summary`` is the report) when a domain failed. ``ray_address`` (or the
        config's ``[ray] address``) runs the embed stage as a Ray Data job on that cluster."""
        from sidestep.flows.reindex import nightly_reindex

        if isinstance(domains, str):
            domains = [domains]
        with self._env():
            res = nightly_reindex(domains=list(domains) if domains else None, force=force, skip_ingest=skip_ingest,
                                  config_path=self.config, ray_address=ray_address)
        return ReindexReport.from_dict(_plain(res))

    def index(self, path: str | os.PathLike, domain: str, format: str | None = None, **ingest_options: Any
              ) -> IndexReport:
        """Ingest PATH into DOMAIN, then reindex DOMAIN from what is stored: a corpus of your own made
        searchable in one call, under any domain name (no config needed: the data root records the source).
        ``ingest_options`` are `ingest`'s (id_field, title_field, text_field, snapshot, max_text_bytes)."""
        ingested = self.ingest(path, domain, format, **ingest_options)
        built = self.reindex([domain], skip_ingest=True)
        serving = built.domains[domain].index.version if domain in built.domains else None
        return IndexReport(domain=domain, quarantined=ingested.quarantined, encoded=built.encoded,
                           published=built.published, version=serving, ingest=ingested, reindex=built)

    def evaluate(self, dataset_dir: str | os.PathLike, domain: str, *, k: int = 100, verify: bool = True,
                 train_verifier: bool = True, verifier_from: str | None = None, out: str | os.PathLike | None = None,
                 split: str = "test", min_rel: int = 1, trec_out: str | os.PathLike | None = None) -> EvalReport:
        """Ingest and index a BEIR folder, run its SPLIT queries through the search path the server uses,
        store the runs in DuckDB; ``metrics`` (ndcg@10, mrr@10, recall@100) and ``baselines`` beside it.
        TREC_OUT: also write the run ``metrics`` describes as a TREC run file (``export``'s writer)."""
        from sidestep.flows.evaluate import evaluate_flow

        with self._env():
            res = evaluate_flow(dataset_dir=str(Path(dataset_dir).resolve()), domain=domain, k=k, split=split,
                                min_rel=min_rel, verify=verify, train_verifier=train_verifier,
                                verifier_from=verifier_from, out=str(out) if out is not None else None,
                                config_path=self.config)
        res = _plain(res)
        if trec_out is not None:
            res["trec_out"] = self.export(res["run_id"], "trec", out=trec_out).out
        return EvalReport.from_dict(res)

    def export(self, run_id: str, format: str = "trec", out: str | os.PathLike | None = None,  # noqa: A002
               *, tag: str | None = None) -> RunExport:
        """Stored run RUN_ID (``evaluate``'s run_id, or a baseline's ``<run_group>-<name>``) as a TREC run
        (``qid Q0 docid rank score tag``) or a ranx-style JSON run (``{qid: {docid: score}}``), written to
        OUT, or returned in ``content`` when OUT is None. Raises ValueError for an unknown run or format."""
        from sidestep.pipeline.runs import export_run

        return export_run(self.root, run_id, format, out, tag)

    def compare(self, run_a: str, run_b: str, measures: list[str] | None = None, *,
                qrels: str | os.PathLike | None = None) -> RunComparison:
        """Runs A and B (stored run ids or TREC run files) measure by measure (any ir_measures name;
        default nDCG@10, RR@10, R@100) over the same judged queries, with a paired t-test and per-query
        wins / ties / losses of B against A. The qrels stored with the runs' evaluation, unless QRELS (a
        TREC or BEIR qrels file) is given. Raises ValueError for an unknown run or measure."""
        from sidestep.pipeline.runs import compare

        return compare(self.root, run_a, run_b, measures, qrels)

    def lab(self, task: str = "planted", *, estimators: list[str] | None = None, seeds: int = 3,
            budget_seconds: float | None = None, options: dict | None = None) -> LabReport:
        """The gradient lab (the `lab` flow): every estimator of a top-k selection measured on TASK, stored in
        DuckDB. ``planted``: bias and variance against the exact gradient, computed by enumeration."""
        from sidestep.flows.lab import lab_flow

        with self._env():
            res = lab_flow(task=task, estimators=estimators, seeds=seeds, budget_seconds=budget_seconds,
                           config_path=self.config, options=options)
        return LabReport.from_dict(_plain(res))

    def report(self, out: str | os.PathLike = "report.html", *, domain: str | None = None,
               latency_json: str | os.PathLike | None = None) -> ReportResult:
        """Write one self-contained HTML page of figures from what this data root recorded (metrics per index
        version, per-query gains and losses, training curves, codebook usage, recommendation variants and
        controls, the gradient lab, long documents, benchmark latency). Sections without data say so.
        LATENCY_JSON (default: the config's ``[report] latency_json``) is a benchmark JSON with samples."""
        import json
        from datetime import UTC, datetime

        from sidestep.config import check_name
        from sidestep.eval.report import latency_series, render_report
        from sidestep.storage.atomic import write_text
        from sidestep.storage.recstore import codebook_usage
        from sidestep.storage.status import last_nightly
        from sidestep.storage.warehouse import Warehouse

        if domain is not None:
            check_name(domain)
        data: dict[str, Any] = {}
        if self.root.eval_db().exists():
            with Warehouse(self.root.eval_db(), read_only=True) as wh:
                data.update(wh.report_data(domain))
        data["codebook"] = codebook_usage(self.root, domain)
        data["nightly"] = last_nightly(self.root)
        source = latency_json if latency_json is not None else self.settings.report.latency_json
        if source is None:
            data["latency"] = {"note": "no latency file given"}
        else:
            try:  # the note shows only when the file holds no samples
                data["latency"] = {"source": str(source), "note": f"no latency samples in {source}",
                                   "series": latency_series(json.loads(Path(source).read_text()))}
            except (OSError, ValueError) as e:
                data["latency"] = {"note": f"cannot read {source} ({type(e).__name__}: {e})"}
        page, figures, notes = render_report(
            data, domain=domain, subtitle=f"data root {self.root.root} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        path = Path(out).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, page)
        return ReportResult(path=str(path), figures=figures, notes=notes)

    def status(self) -> StatusReport:
        """Published versions per domain, document counts, quarantine sizes, the last nightly run."""
        from sidestep.storage.status import domain_status

        return StatusReport.from_dict(domain_status(self.root))

    # the online side: the services a server replica runs, in this process -----
    def _encoder(self):
        """The encoder the flows of this process already loaded, when they did; a new one otherwise."""
        common = sys.modules.get("sidestep.tasks.common")
        if common is not None:
            return common.encoder_for(self.settings)
        return None

    def search(self, query: str, domain: str | None = None, k: int = 10, *, verify: bool = True,
               mode: str = "chunks", doc_id: str | None = None) -> SearchResults:
        """Search DOMAIN's published index (the default domain when None): recall, then the verifier where
        one is published. Raises LookupError for an unknown domain, ValueError for a bad request."""
        if self._search is None:
            from sidestep.serving.core import SearchService

            self._search = SearchService(self.settings, self.root, encoder=self._encoder())
        else:
            self._search.refresh_all()
        res = self._search.search(query, k=k, domain=domain, verify=verify, mode=mode, doc_id=doc_id)
        return SearchResults.from_dict(res)

    def recommend(self, history: list[str], domain: str | None = None, k: int = 10, *,
                  exclude_history: bool = False) -> Recommendations:
        """Items to recommend after HISTORY (item ids, oldest first) from DOMAIN's published tables.
        Ids the domain does not know are reported in ``unknown_items``."""
        if self._recommend is None:
            from sidestep.serving.recommend import RecommendService

            self._recommend = RecommendService(self.settings, self.root)
        else:
            self._recommend.refresh()
        res = self._recommend.recommend(list(history), k=k, domain=domain, exclude_history=exclude_history)
        return Recommendations.from_dict(res)


def open(root: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> Engine:  # noqa: A001
    """An engine over a data root (default: $SIDESTEP_HOME, the config's data_root, else ./var).
    CONFIG is a TOML file naming the sources (default: $SIDESTEP_CONFIG, else the shipped sample corpus)."""
    return Engine(root, config)


class APIError(Exception):
    """A request the server refused (4xx) or could not answer (5xx): ``status`` and the server's message."""

    def __init__(self, status: int, message: str, url: str = "", body: str = ""):
        self.status = status
        self.message = message
        self.url = url
        self.body = body  # the response body as sent
        super().__init__(f"HTTP {status}: {message}" + (f" ({url})" if url else ""))


class Client:
    """The same search and recommend calls against a running server (`sidestep serve`), over HTTP.

    The token (argument, else $SIDESTEP_API_TOKEN) is sent as ``Authorization: Bearer``; a refused request
    raises APIError with the server's message."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get("SIDESTEP_API_TOKEN") or None)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self._http.request(method, path, json=body)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise APIError(r.status_code, detail if isinstance(detail, str) else str(detail), self.url + path,
                           r.text)
        return r.json()

    def search(self, query: str, domain: str | None = None, k: int = 10, *, verify: bool = True,
               mode: str = "chunks", doc_id: str | None = None) -> SearchResults:
        return SearchResults.from_dict(self._call("POST", "/search", {
            "query": query, "k": k, "domain": domain, "verify": verify, "mode": mode, "doc_id": doc_id}))

    def recommend(self, history: list[str], domain: str | None = None, k: int = 10, *,
                  exclude_history: bool = False) -> Recommendations:
        return Recommendations.from_dict(self._call("POST", "/recommend", {
            "history": list(history), "k": k, "domain": domain, "exclude_history": exclude_history}))

    def healthz(self) -> dict:
        """The version each domain serves; a server that is not ready (503) raises APIError."""
        return self._call("GET", "/healthz")
