"""The `sidestep` command line: every command has --help, and --json prints one JSON object on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="sidestep: batch indexing and serving for retrieval and recommendation.\n\n"
                       "Data lives under the data root (--home, $SIDESTEP_HOME, default ./var).")
err = Console(stderr=True)
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")]
DomainOpt = Annotated[str | None, typer.Option("--domain", "-d", help="Domain name (a-z 0-9 . _ -).")]


@app.callback()
def main(
    home: Annotated[Path | None, typer.Option("--home", help="Data root (overrides $SIDESTEP_HOME).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config ($SIDESTEP_CONFIG); default: "
                                                "the embedded sample corpus.")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs on stderr as one JSON object per line, with "
                                           "flow_run_id / task_run_id (for a log shipper).")] = False,
) -> None:
    if log_json:  # before Prefect is imported: its logging reads these once
        for h in ("CONSOLE", "CONSOLE_FLOW_RUNS", "CONSOLE_TASK_RUNS"):
            os.environ[f"PREFECT_LOGGING_HANDLERS_{h}_FORMATTER"] = "json"
        os.environ["SIDESTEP_NO_PROGRESS"] = "1"  # no progress bars between the JSON lines
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if home:
        os.environ["SIDESTEP_HOME"] = str(home.resolve())
    if config:
        os.environ["SIDESTEP_CONFIG"] = str(config.resolve())
    from sidestep.storage import runtime

    runtime.configure(_root())


def _settings():
    from sidestep.config import load_settings

    return load_settings()


def _root():
    from sidestep.storage.paths import DataRoot

    return DataRoot.from_settings(_settings())


@contextlib.contextmanager
def _quiet_stdout(as_json: bool):
    """With --json, anything the stack prints goes to stderr so stdout holds only the JSON object."""
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()


def _fail(msg: str, as_json: bool, code: int = 1) -> None:
    if as_json:
        _emit({"error": msg}, True)
    else:
        err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _run(fn, as_json: bool, *args, **kwargs):
    """Run a flow; expected failures become a clear message and a non-zero exit, not a traceback."""
    from sidestep.ingest.readers import SourceError

    try:
        with _quiet_stdout(as_json):
            return fn(*args, **kwargs)
    except (SourceError, ValueError, FileNotFoundError, RuntimeError) as e:
        summary = getattr(e, "summary", None)
        if summary and as_json:
            _emit({"error": str(e), **summary}, True)
            raise typer.Exit(1) from None
        _fail(str(e), as_json)


@app.command()
def ingest(
    path: Annotated[str, typer.Argument(help="File or folder to read.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to ingest into.")],
    format: Annotated[str | None, typer.Option("--format", "-f", help="beir|jsonl|csv|parquet|textdir|recbole|"
                                               "lcrec (detected when omitted).")] = None,
    id_field: Annotated[str, typer.Option(help="Id column/key (jsonl, csv, parquet).")] = "id",
    title_field: Annotated[str, typer.Option(help="Title column/key; '' for none.")] = "title",
    text_field: Annotated[str, typer.Option(help="Text column/key.")] = "text",
    snapshot: Annotated[bool, typer.Option(help="The source is the whole corpus: tombstone documents it "
                                           "no longer has.")] = False,
    max_text_bytes: Annotated[int | None, typer.Option(help="Quarantine texts longer than this.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a source into a domain: incremental by content hash; bad records go to quarantine."""
    from sidestep.config import check_name
    from sidestep.ingest.readers import SourceError, detect_format

    try:  # refuse an unreadable source before starting anything
        check_name(domain)
        if format is None:
            detect_format(path)
        elif not Path(path).exists():
            raise SourceError(f"source not found: {path}")
    except (SourceError, ValueError) as e:
        _fail(str(e), as_json, 2)
    from sidestep.flows.ingest import ingest_flow

    res = _run(ingest_flow, as_json, path=str(Path(path).resolve()) if "://" not in path else path, domain=domain,
               format=format, id_field=id_field, title_field=title_field or None, text_field=text_field,
               snapshot=snapshot, max_text_bytes=max_text_bytes)
    _emit(res, as_json)
    if not as_json:
        _table("ingest " + domain, {k: res[k] for k in ("read", "new", "updated", "unchanged", "tombstoned",
                                                         "quarantined", "duplicates", "interactions",
                                                         "live_documents")})
        if res["quarantined"]:
            err.print(f"[yellow]{res['quarantined']} record(s) quarantined[/yellow]: see `sidestep status`")


@app.command()
def reindex(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Domain(s) to reindex; all "
                                                     "configured domains when omitted.")] = None,
    force: Annotated[bool, typer.Option(help="Publish a new version even if nothing changed.")] = False,
    skip_ingest: Annotated[bool, typer.Option(help="Reuse the stored documents; do not read sources.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the nightly reindex now: ingest → embed → index → publish, per configured domain."""
    from sidestep.flows.reindex import nightly_reindex

    res = _run(nightly_reindex, as_json, domains=domain or None, force=force, skip_ingest=skip_ingest)
    _emit(res, as_json)
    if not as_json:
        t = Table("domain", "documents", "encoded", "reused", "version", "published")
        for d, r in res["domains"].items():
            t.add_row(d, str(r["embed"]["documents"]), str(r["embed"]["encoded"]), str(r["embed"]["reused"]),
                      str(r["index"]["version"]), "yes" if r["index"]["published"] else "no")
        out.print(t)


@app.command("eval")
def eval_(
    dataset_dir: Annotated[str, typer.Argument(help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to index the corpus into.")],
    k: Annotated[int, typer.Option(help="Results per query (Recall@100 needs 100).", min=1, max=1000)] = 100,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Rerank recall's candidates with the "
                                         "verifier; without one published, train it first on the folder's "
                                         "train qrels (see --train-verifier).")] = True,
    train_verifier: Annotated[bool, typer.Option("--train-verifier/--no-train-verifier", help="Train the "
                                                 "domain's verifier when none is published and the folder has "
                                                 "train qrels.")] = True,
    verifier_from: Annotated[str | None, typer.Option(help="Use this domain's verifier (for a corpus without "
                                                      "training queries).")] = None,
    out_path: Annotated[str | None, typer.Option("--out", help="Also write the run (query_id, doc_id, rank, "
                                                 "score) to this Parquet file.")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    min_rel: Annotated[int, typer.Option(help="Smallest grade counted relevant by MRR and Recall.", min=1)] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Ingest and index a BEIR folder, run its queries through the serving search path, store the runs
    in DuckDB and print nDCG@10, MRR@10 and Recall@100 (computed by SQL views), with the baselines of the
    same run: pooled cosine (recall only), MaxSim reranking the same candidates, BM25, and BM25 + dense
    reciprocal-rank fusion."""
    from sidestep.flows.evaluate import evaluate_flow

    res = _run(evaluate_flow, as_json, dataset_dir=str(Path(dataset_dir).resolve()), domain=domain, k=k,
               split=split, min_rel=min_rel, verify=verify, train_verifier=train_verifier,
               verifier_from=verifier_from, out=out_path)
    _emit(res, as_json)
    if not as_json:
        main = "recall -> verify" if res["verify"]["applied"] else "pooled cosine (recall only)"
        t = Table("configuration", "ndcg@10", "mrr@10", "recall@100",
                  title=f"{domain} {split} ({res['queries']} queries, {res['index_version']})")
        for name, m in {main: res["metrics"], **res["baselines"]}.items():
            t.add_row(name, *(f"{m[c]:.4f}" for c in ("ndcg@10", "mrr@10", "recall@100")))
        out.print(t)
        c = res.get("cost") or {}
        if c.get("verify_over_maxsim"):
            out.print(f"verify stage {c['per_query_token_maps_ms'] + c['per_query_verifier_ms']:.1f} ms/query (mean) = "
                      f"{c['verify_over_maxsim']:.2f}x MaxSim ({c['per_query_maxsim_ms']:.1f} ms), medians "
                      f"{c['p50_verify_stage_ms']:.1f} vs {c['p50_maxsim_ms']:.1f} ms; token store "
                      f"{c['token_store']}, {c['bytes_per_doc'] / 1024:.1f} KB/document; the model read "
                      f"{res['verify'].get('verify_top') or 'all'} of {res['verify']['candidates']} candidates")
        if res["verify"]["requested"] and not res["verify"]["applied"]:
            err.print(f"[yellow]note:[/yellow] {res['verify']['reason']}")
        out.print(f"runs stored as {res['run_group']}-* in {_root().eval_db()}")


@app.command("train-verifier")
def train_verifier(
    dataset_dir: Annotated[str, typer.Argument(help="A BEIR folder with qrels/train.tsv.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to index the corpus into and train for.")],
    split: Annotated[str, typer.Option(help="qrels split to train on (never test).")] = "train",
    seed: Annotated[int, typer.Option(help="Seed for near-misses, the validation split and training.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train and publish DOMAIN's verifier: positives from the train qrels, hard negatives from recall's top
    candidates, structural near-misses of each positive (negation, antonym, role swap, number, condition).
    Serving hot-loads the new version; curves go to DuckDB (verifier_curves)."""
    if not Path(dataset_dir).is_dir():
        _fail(f"folder not found: {dataset_dir}", as_json, 2)
    from sidestep.flows.evaluate import train_verifier_flow

    res = _run(train_verifier_flow, as_json, dataset_dir=str(Path(dataset_dir).resolve()), domain=domain,
               split=split, seed=seed)
    _emit(res, as_json)
    if not as_json:
        out.print(f"verifier {domain}/{res['version']}: {res['parameters']:,} parameters, {res['train_queries']} "
                  f"training queries, best validation nDCG@10 {res['val_ndcg10'] or 0:.4f} at epoch "
                  f"{res['best_epoch']}, {res['seconds']:.0f} s; near-misses {res['near_misses']}")


@app.command("eval-longdoc")
def eval_longdoc(
    paths: Annotated[list[str], typer.Argument(help="L-Eval JSONL files (input = document, instructions = "
                                               "questions, outputs = answers); several files are tuned "
                                               "together and reported each on its own.")],
    seed: Annotated[int, typer.Option(help="Seed of the first split of documents into halves (repeat r uses "
                                      "seed + r).")] = 0,
    repeats: Annotated[int, typer.Option(help="Repeats of the two-fold cross-fitting (parameters tuned on one "
                                         "half's questions, reported on the other's, then swapped).",
                                         min=1)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Evidence-chunk Recall@1/3/5 inside long documents: bag of chunks vs map-conditioned retrieval
    (and section-aware chunks, both together, and a corpus-level routing mode), in one run.
    The JSON's top-level bag_of_chunks / map_conditioned keys are the first file's."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        _fail(f"file not found: {', '.join(missing)}", as_json, 2)
    from sidestep.flows.longdoc import longdoc_flow

    res = _run(longdoc_flow, as_json, path=[str(Path(p).resolve()) for p in paths], seed=seed, repeats=repeats)
    _emit(res, as_json)
    if not as_json:
        for name, f in res.get("files", {}).items():
            t = Table("mode", "recall@1", "recall@3", "recall@5",
                      title=f"{name}: evidence-chunk recall on held-out questions "
                            f"(mean of {f.get('repeats', 1)} cross-fitted repeats)")
            for scope in ("within_document", "corpus"):
                for mode, m in f.get(scope, {}).items():
                    if isinstance(m, dict) and "recall@3" in m:
                        t.add_row(f"{scope}: {mode}", *(f"{m[k]:.3f}" for k in ("recall@1", "recall@3", "recall@5")))
            out.print(t)
        out.print(f"stored as {res['run_id']} in {_root().eval_db()}")


@app.command("eval-rec")
def eval_rec(
    dataset_dir: Annotated[str, typer.Argument(help="A RecBole folder (<name>.text + <name>.{train,valid,test}"
                                               ".inter) or an LC-Rec folder (<name>.item.json + .inter.json).")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to load the items and interactions into.")],
    pretrained_from: Annotated[str | None, typer.Option(help="Start from this domain's published model "
                                                        "(run eval-rec on it first).")] = None,
    mode: Annotated[str | None, typer.Option(help="table-only (train only this domain's lookup table), full "
                                             "(everything), scratch (no pre-training). Default: table-only "
                                             "with --pretrained-from, scratch without.")] = None,
    controls: Annotated[bool, typer.Option("--controls/--no-controls", help="Also train the shuffled-codes "
                                           "control (doubles training time).")] = True,
    refit: Annotated[bool, typer.Option(help="Refit the codebook even if the current one still fits.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping on valid NDCG@10); default "
                                               "from config.", min=1)] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Wall-clock budget per trained variant.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for training and the shuffled-codes control.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Sequential recommendation, leave-one-out: Recall@10/50 and NDCG@10/50 on the test split, full
    ranking over all items with nothing masked (the history-masked variant beside it), valid split for
    early stopping; popularity, text-only zero-shot and shuffled-codes controls in the same run. Trained
    variants are scored as served: code logits fused with the text cosine and the log-count popularity
    prior at weights chosen on the valid split ([rec] text_weights, popularity_weights); each is reported
    with its codes alone too (`*_codes_only`)."""
    if not Path(dataset_dir).is_dir():
        _fail(f"folder not found: {dataset_dir}", as_json, 2)
    if mode is not None and mode not in ("table-only", "full", "scratch"):
        _fail(f"unknown mode {mode!r}: expected table-only, full or scratch", as_json, 2)
    if mode in ("table-only", "full") and not pretrained_from:
        _fail(f"--mode {mode} needs --pretrained-from DOMAIN", as_json, 2)
    from sidestep.flows.rec import eval_rec_flow

    res = _run(eval_rec_flow, as_json, dataset_dir=str(Path(dataset_dir).resolve()), domain=domain, mode=mode,
               pretrained_from=pretrained_from, controls=controls, refit=refit, epochs=epochs,
               max_seconds=max_seconds, seed=seed)
    _emit(res, as_json)
    if not as_json:
        t = Table("variant", "recall@10", "ndcg@10", "recall@50", "ndcg@50", "train s",
                  title=f"{domain} test, full ranking, nothing masked ({res['counts']['test_users']} users)")
        f = res["training"]["sidestep"]["text_fusion"]
        rows = {f"sidestep ({res['mode']}, codes + {f['weight']:g} x text + {f.get('popularity', 0):g} x log pop)":
                res["metrics"],
                "sidestep_codes_only": res["metrics_codes_only"], **res["baselines"]}
        train = res["training"]
        for name, m in rows.items():
            secs = train.get(name.split(" ")[0].removesuffix("_codes_only"), {}).get("seconds")
            t.add_row(name, *(f"{m[k]:.4f}" for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")),
                      "-" if secs is None else f"{secs:.0f}")
        out.print(t)
        out.print(f"tables {res.get('table_version')} (codebook {res['codebook_version']}); "
                  f"runs stored as {res['run_group']}-* in {_root().eval_db()}")


@app.command()
def pretrain(
    domain: Annotated[list[str], typer.Option("--domain", "-d", help="A domain with interactions (repeat the "
                                              "option for several; ingest them first).")],
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping on mean valid NDCG@10).",
                                               min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the sequence encoder over several domains mixed (in-batch negatives across domains plus
    semi-synthetic negatives) and publish every domain's table with it; then `eval-rec NEW --pretrained-from
    D` fine-tunes a new domain's table only."""
    from sidestep.flows.rec import pretrain_flow

    res = _run(pretrain_flow, as_json, domains=domain, epochs=epochs)
    _emit(res, as_json)
    if not as_json:
        t = Table("domain", "tables version", "recall@10", "ndcg@10",
                  title=f"pre-trained in {res['seconds']:.0f} s, {res['epochs_run']} epochs")
        for d, r in res["domains"].items():
            t.add_row(d, r["version"], f"{r['test']['recall@10']:.4f}", f"{r['test']['ndcg@10']:.4f}")
        out.print(t)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Query text.")],
    domain: DomainOpt = None,
    k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Rerank recall's candidates with the "
                                         "domain's verifier (when one is published).")] = True,
    mode: Annotated[str, typer.Option(help="chunks (bag of chunks) or map (route by document maps, then "
                                      "map-conditioned chunk choice).")] = "chunks",
    doc_id: Annotated[str | None, typer.Option(help="With --mode map: rank the chunks of this document.")] = None,
    url: Annotated[str | None, typer.Option(help="Ask a running server (e.g. http://127.0.0.1:8000) instead "
                                            "of searching in-process.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a domain's published index (in-process, or through a running server with --url)."""
    body = {"query": query, "k": k, "domain": domain, "verify": verify, "mode": mode, "doc_id": doc_id}
    if url:
        import httpx

        r = httpx.post(url.rstrip("/") + "/search", json=body, timeout=60)
        if r.status_code >= 400:
            _fail(f"HTTP {r.status_code}: {r.text}", as_json)
        res = r.json()
    else:
        from sidestep.serving.core import SearchService

        with _quiet_stdout(as_json):
            try:
                res = SearchService(_settings(), _root()).search(**body)
            except LookupError as e:
                _fail(str(e), as_json)
            except ValueError as e:
                _fail(str(e), as_json, 2)
    _emit(res, as_json)
    if not as_json:
        t = Table("#", "doc_id", "chunk", "score", "title / snippet",
                  title=f"{res['domain']} @ {res['index_version']} ({res['mode']})")
        for i, h in enumerate(res["results"], 1):
            t.add_row(str(i), h["doc_id"], str(h.get("chunk", 0)), f"{h['score']:.4f}",
                      (h.get("snippet", "") if doc_id else h.get("title") or h.get("snippet", ""))[:80])
        out.print(t)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    preset: Annotated[str, typer.Option(help="Deployment preset from serving/options.py.")] = "local",
) -> None:
    """Start the Ray Serve application (POST /search, GET /healthz, /docs) until Ctrl-C."""
    from sidestep.serving.run import ServeHandle

    s = _settings()
    with ServeHandle(_root(), host=host or s.serve.host, port=port or s.serve.port, preset=preset) as h:
        err.print(f"serving on {h.url}  (docs: {h.url}/docs)  Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            err.print("stopping")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Published versions per domain, document counts and quarantine sizes."""
    from sidestep.storage.status import domain_status

    res = domain_status(_root())
    _emit(res, as_json)
    if not as_json:
        t = Table("domain", "serving_version", "age", "documents", "tombstoned", "chunks", "versions",
                  "quarantined", "tables_version", "verifier_version", title=f"data root {res['data_root']}")
        for d, r in res["domains"].items():
            t.add_row(d, str(r["serving_version"]), _age(r["serving_age_s"]), str(r["documents"]),
                      str(r["tombstoned"]), str(r["chunks"]), str(len(r["versions"])), str(r["quarantined"]),
                      str(r["tables_version"] or "-"), str(r["verifier_version"] or "-"))
        out.print(t)
        if res.get("codebook_version"):
            out.print(f"codebook {res['codebook_version']}")
        n = res.get("last_nightly")
        out.print("last nightly: " + (f"{n['outcome']} at {n['started_at']} in {n['seconds']:.0f} s, encoded "
                                      f"{n['encoded']}, published {len(n['published'])}, run {n['run']}"
                                      + (f", failed: {n['failed']}" if n["failed"] else "") if n else "never"))


KindOpt = Annotated[str, typer.Option("--kind", help="indexes (search) or tables (recommendation).")]


@app.command()
def rollback(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to roll back.")],
    to: Annotated[str | None, typer.Option("--to", help="Version to serve; default: the one before the current.")]
    = None,
    kind: KindOpt = "indexes",
    as_json: JsonOpt = False,
) -> None:
    """Point a domain's CURRENT at an earlier complete version (checksums verified first); serving replicas
    pick it up on their next poll."""
    from sidestep.storage.artifacts import CorruptArtifact, IndexStore

    try:
        if kind not in ("indexes", "tables"):
            raise ValueError(f"unknown kind {kind!r}: indexes or tables")
        old, new = IndexStore(_root(), kind).rollback(domain, to)
    except (ValueError, CorruptArtifact) as e:
        _fail(str(e), as_json, 2)
    _emit({"domain": domain, "kind": kind, "previous_version": old, "current_version": new}, as_json)
    if not as_json:
        out.print(f"{kind} {domain}: CURRENT {old} → {new}")


@app.command()
def gc(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to clean.")],
    keep: Annotated[int, typer.Option(help="Newest versions to keep (the current one is always kept).", min=1)] = 5,
    kind: KindOpt = "indexes",
    as_json: JsonOpt = False,
) -> None:
    """Delete old published versions of a domain, never the one CURRENT names."""
    from sidestep.storage.artifacts import IndexStore

    try:
        if kind not in ("indexes", "tables"):
            raise ValueError(f"unknown kind {kind!r}: indexes or tables")
        removed = IndexStore(_root(), kind).gc(domain, keep)
    except ValueError as e:
        _fail(str(e), as_json, 2)
    _emit({"domain": domain, "kind": kind, "removed": removed}, as_json)
    if not as_json:
        out.print(f"{kind} {domain}: removed {len(removed)} version(s)")


@app.command()
def deploy(
    port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    host: Annotated[str, typer.Option(help="Bind address; keep loopback unless behind an authenticating "
                                      "proxy.")] = "127.0.0.1",
) -> None:
    """Start a local Prefect server (SQLite under the data root) with its UI, and a runner serving every
    deployment (the nightly one on its cron schedule) until Ctrl-C."""
    from sidestep.flows.ui import LocalPrefect

    root = _root()
    with LocalPrefect(root.prefect_home(), host=host, port=port, env={"SIDESTEP_HOME": str(root.root)}) as p:
        names = sorted(f"{d['name']}" for d in p.deployments())
        err.print(f"Prefect UI on {p.ui_url}  ·  {len(names)} deployments  ·  Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            err.print("stopping the runner, then the server")


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="HTTP port for the demo server.")] = 8000,
) -> None:
    """The Quickstart: reindex the sample corpus, evaluate it, serve it, query it over HTTP, summarize."""
    from sidestep.flows.demo import run_demo

    raise typer.Exit(run_demo(_settings(), _root(), port=port, console=out))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds / 60:.0f}m"


def _table(title: str, row: dict) -> None:
    t = Table(*row.keys(), title=title)
    t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    out.print(t)


if __name__ == "__main__":
    app()
