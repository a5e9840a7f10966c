"""Commands over a data root: ingest, reindex, search, status, rollback, unpin, gc."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sidestep.results import SearchResults, skipped_preview

from .common import (
    DomainOpt,
    FormatOpt,
    JsonOpt,
    _age,
    _check_source,
    _emit,
    _engine,
    _fail,
    _quiet_stdout,
    _root,
    _run,
    _table,
    err,
    out,
)


def ingest(
    path: Annotated[str, typer.Argument(help="File or folder to read.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to ingest into.")],
    format: FormatOpt = None,
    id_field: Annotated[str, typer.Option(help="Id column/key (jsonl, csv, parquet).")] = "id",
    title_field: Annotated[str, typer.Option(help="Title column/key; '' for none.")] = "title",
    text_field: Annotated[str, typer.Option(help="Text column/key.")] = "text",
    snapshot: Annotated[bool, typer.Option(help="The source is the whole corpus: tombstone documents it "
                                           "no longer has.")] = False,
    max_text_bytes: Annotated[int | None, typer.Option(help="Quarantine texts longer than this.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a source into a domain: incremental by content hash; bad records go to quarantine."""
    _check_source(path, domain, format, as_json)
    res = _run(_engine().ingest, as_json, path, domain, format, id_field=id_field,
               title_field=title_field or None, text_field=text_field, snapshot=snapshot,
               max_text_bytes=max_text_bytes).as_dict()
    _emit(res, as_json)
    if not as_json:
        _table("ingest " + domain, {k: res[k] for k in ("read", "new", "updated", "unchanged", "tombstoned",
                                                         "quarantined", "duplicates", "interactions",
                                                         "live_documents")})
        if res["quarantined"]:
            err.print(f"[yellow]{res['quarantined']} record(s) quarantined[/yellow]: see `sidestep status`")
        _say_skipped(res["skipped"], res["skipped_files"])


def index(
    path: Annotated[str, typer.Argument(help="File or folder to read.")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to index into (any name: a-z 0-9 . _ -; "
                                        "no config needed).")],
    format: FormatOpt = None,
    id_field: Annotated[str, typer.Option(help="Id column/key (jsonl, csv, parquet).")] = "id",
    title_field: Annotated[str, typer.Option(help="Title column/key; '' for none.")] = "title",
    text_field: Annotated[str, typer.Option(help="Text column/key.")] = "text",
    snapshot: Annotated[bool, typer.Option(help="The source is the whole corpus: tombstone documents it "
                                           "no longer has.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a source and reindex its domain in one step: your own corpus, searchable, under any domain.

    The data root records the source, so later `reindex` and the nightly run re-read it."""
    _check_source(path, domain, format, as_json)
    res = _run(_engine().index, as_json, path, domain, format, id_field=id_field, title_field=title_field or None,
               text_field=text_field, snapshot=snapshot).as_dict()
    _emit(res, as_json)
    if not as_json:
        _table("index " + domain, {"read": res["ingest"]["read"], "new": res["ingest"]["new"],
                                   "quarantined": res["quarantined"], "encoded": res["encoded"],
                                   "published": ", ".join(p["version"] for p in res["published"]) or "nothing new",
                                   "serving": res["version"] or "-"})
        _say_skipped(res["ingest"].get("skipped") or 0, res["ingest"].get("skipped_files") or [])
        err.print(f'next: sidestep search "..." --domain {domain}')


def _say_skipped(count: int, paths: list[str]) -> None:
    if count:
        err.print(f"[yellow]{count} file(s) not read[/yellow] (a text folder reads only .txt and .md): "
                  f"{escape(skipped_preview(count, paths))}")


def reindex(
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Domain(s) to reindex; all "
                                                     "configured domains when omitted.")] = None,
    force: Annotated[bool, typer.Option(help="Publish a new version even if nothing changed.")] = False,
    skip_ingest: Annotated[bool, typer.Option(help="Reuse the stored documents; do not read sources.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Run the embed stage as a Ray Data job "
                                                    "on this Ray cluster (HOST:PORT of its head; overrides the "
                                                    "config's [ray] address).")] = None,
    nice: Annotated[int | None, typer.Option("--nice", min=0, max=19, help="CPU niceness of this run (default: "
                                             "the config's nightly_niceness, 0; 10 beside serving), so that "
                                             "serving on the same machine keeps the cores; started in its own "
                                             "session (setsid), the run also lowers its session's autogroup.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the nightly reindex now: ingest → embed → index → publish, per configured domain."""
    from sidestep.priority import lower_priority

    engine = _engine()
    priority = lower_priority(engine.settings.nightly_niceness if nice is None else nice)
    res = _run(engine.reindex, as_json, domain or None, force=force, skip_ingest=skip_ingest,
               ray_address=ray_address).as_dict()
    res["priority"] = priority.as_dict()
    _emit(res, as_json)
    if not as_json:
        t = Table("domain", "documents", "encoded", "reused", "version", "published")
        for d, r in res["domains"].items():
            t.add_row(d, str(r["embed"]["documents"]), str(r["embed"]["encoded"]), str(r["embed"]["reused"]),
                      str(r["index"]["version"]), "yes" if r["index"]["published"] else "no")
        out.print(t)


def search(
    query: Annotated[str, typer.Argument(help="Query text.")],
    domain: DomainOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Documents returned.", min=1, max=1000)] = 10,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Rerank recall's candidates with the "
                                         "domain's verifier, or, for a domain without one, with the ranker "
                                         "its indexing chose (the general verifier, MaxSim, BM25 + dense "
                                         "fusion or pooled cosine); --no-verify: recall's order alone.")] = True,
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
        from sidestep.api import APIError, Client

        try:
            with Client(url) as client:
                res = client.search(**body).as_dict()
        except APIError as e:
            _fail(f"HTTP {e.status}: {e.body}", as_json)
    else:
        with _quiet_stdout(as_json):
            try:
                res = _engine().search(**body).as_dict()
            except LookupError as e:
                _fail(str(e), as_json)
            except ValueError as e:
                _fail(str(e), as_json, 2)
    _emit(res, as_json)
    if not as_json:
        t = Table("#", "doc_id", "chunk", "score", "title / snippet",
                  title=f"{res['domain']} @ {res['index_version']} ({res['mode']})",
                  caption=f"ranked by {SearchResults.from_dict(res).ranked_by}")
        for i, h in enumerate(res["results"], 1):
            t.add_row(str(i), h["doc_id"], str(h.get("chunk", 0)), f"{h['score']:.4f}",
                      (h.get("snippet", "") if doc_id else h.get("title") or h.get("snippet", ""))[:80])
        out.print(t)


STATUS_TABLE_WIDTH = 160  # columns the one-row-per-domain table needs to stay readable
STATUS_FIELDS = ("serving_version", "age", "documents", "tombstoned", "chunks", "versions", "quarantined",
                 "tables_version", "verifier_version", "ranker")


def status(as_json: JsonOpt = False) -> None:
    """Published versions per domain, document counts and quarantine sizes."""
    res = _engine().status().as_dict()
    _emit(res, as_json)
    if not as_json:
        rows = {d: {"serving_version": str(r["serving_version"]), "age": _age(r["serving_age_s"]),
                    "documents": str(r["documents"]), "tombstoned": str(r["tombstoned"]), "chunks": str(r["chunks"]),
                    "versions": str(len(r["versions"])), "quarantined": str(r["quarantined"]),
                    "tables_version": str(r["tables_version"] or "-"),
                    "verifier_version": str(r["verifier_version"] or "-"),
                    "ranker": ("own verifier" if r["verifier_version"] else
                               str((r.get("ranker") or {}).get("ranker") or "-"))}
                for d, r in res["domains"].items()}
        if out.width >= STATUS_TABLE_WIDTH:
            t = Table("domain", *STATUS_FIELDS, title=f"data root {res['data_root']}")
            for d, row in rows.items():
                t.add_row(d, *row.values())
            out.print(t)
        else:  # a narrow terminal would cut every column to a few letters: one small table per domain instead
            out.print(f"data root {res['data_root']}")
            for d, row in rows.items():
                t = Table("field", "value", title=d, title_justify="left")
                for k, v in row.items():
                    t.add_row(k, v)
                out.print(t)
        for d, r in res["domains"].items():
            for what in ("pin", "tables_pin"):
                if r.get(what):
                    out.print(f"{d}: {'tables ' if what == 'tables_pin' else ''}pinned to {r[what].get('version')} "
                              f"({r[what].get('reason')}, {r[what].get('pinned_at')}); `sidestep unpin --domain {d}`")
        for path, why in (res.get("bad_entries") or {}).items():
            err.print(f"[yellow]ignored[/yellow] {path}: {why}")
        if res.get("codebook_version"):
            out.print(f"codebook {res['codebook_version']}")
        n = res.get("last_nightly")
        out.print("last nightly: " + (f"{n['outcome']} at {n['started_at']} in {n['seconds']:.0f} s, encoded "
                                      f"{n['encoded']}, published {len(n['published'])}, run {n['run']}"
                                      + (f", failed: {n['failed']}" if n["failed"] else "") if n else "never"))


KindOpt = Annotated[str, typer.Option("--kind", help="indexes (search) or tables (recommendation).")]


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
    _emit({"domain": domain, "kind": kind, "previous_version": old, "current_version": new, "pinned": new},
          as_json)
    if not as_json:
        out.print(f"{kind} {domain}: CURRENT {old} → {new}, pinned (the nightly publishes nothing over it until "
                  f"`sidestep unpin --domain {domain}` or a newer ingest)")


def unpin(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to unpin.")],
    kind: Annotated[str | None, typer.Option("--kind", help="indexes or tables; both when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift the pin a rollback set, so that the next reindex may publish over the rolled-back version."""
    from sidestep.storage.artifacts import IndexStore
    from sidestep.storage.pins import clear_pin

    try:
        if kind not in (None, "indexes", "tables"):
            raise ValueError(f"unknown kind {kind!r}: indexes or tables")
        cleared = {k: clear_pin(IndexStore(_root(), k), domain) for k in ([kind] if kind else ["indexes", "tables"])}
    except ValueError as e:
        _fail(str(e), as_json, 2)
    _emit({"domain": domain, "unpinned": {k: v for k, v in cleared.items() if v}}, as_json)
    if not as_json:
        for k, v in cleared.items():
            out.print(f"{k} {domain}: " + (f"unpinned (was pinned to {v.get('version')})" if v else "not pinned"))


def gc(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Domain whose old versions to delete "
                                               "(at once, as before); without it: data-root housekeeping.")] = None,
    keep: Annotated[int, typer.Option(help="Newest versions to keep (the current one is always kept).", min=1)] = 5,
    kind: KindOpt = "indexes",
    apply: Annotated[bool, typer.Option("--apply", help="Housekeeping: remove what the dry run lists.")] = False,
    quarantine_days: Annotated[float, typer.Option(help="Housekeeping: quarantine files older than this are "
                                                   "collected.", min=0)] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """With --domain: delete old published versions of a domain, never the one CURRENT names, a pinned one or
    one a live replica serves. Without --domain: housekeeping over the data root (old quarantine files,
    embedding shards nothing uses, folders without a manifest, interrupted writes, stale replica records),
    a dry run listing each with its reason and size unless --apply."""
    from sidestep.storage.artifacts import IndexStore

    if domain is None:
        from sidestep.storage import housekeeping

        plan = housekeeping.plan(_root(), quarantine_days=quarantine_days)
        if apply:
            housekeeping.apply(_root(), plan)
        res = plan.as_dict()
        _emit(res, as_json)
        if not as_json:
            t = Table("kind", "path", "bytes", "reason", title=("removed" if apply else "would remove (dry run; "
                                                                  "--apply removes)") + f" in {res['data_root']}")
            for i in res["items"]:
                t.add_row(i["kind"], i["path"], str(i["bytes"]), i["reason"])
            out.print(t)
            out.print(f"{len(res['items'])} item(s), {res['bytes']} bytes" + (
                f"; removed {len(res['removed'])}" if apply else ""))
            for path, why in res["skipped"].items():
                err.print(f"[yellow]skipped[/yellow] {path}: {why}")
        return
    try:
        if kind not in ("indexes", "tables"):
            raise ValueError(f"unknown kind {kind!r}: indexes or tables")
        removed = IndexStore(_root(), kind).gc(domain, keep)
    except ValueError as e:
        _fail(str(e), as_json, 2)
    _emit({"domain": domain, "kind": kind, "removed": removed}, as_json)
    if not as_json:
        out.print(f"{kind} {domain}: removed {len(removed)} version(s)")
