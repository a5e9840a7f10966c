"""What `sidestep status` shows: per domain, the serving version, counts, quarantine."""

from __future__ import annotations

import time
from datetime import datetime

from .artifacts import IndexStore
from .documents import DocumentStore, QuarantineStore
from .paths import SHARED, DataRoot
from .pins import read_pin
from .sources import SourceRegistry


def domain_status(root: DataRoot) -> dict:
    store, docs, quarantine = IndexStore(root), DocumentStore(root), QuarantineStore(root)
    tables, books = IndexStore(root, "tables"), IndexStore(root, "codebooks")
    verifiers, rankers = IndexStore(root, "verifiers"), IndexStore(root, "rankers")
    recorded: dict[str, list[str]] = {}
    for s in SourceRegistry(root).sources():
        recorded.setdefault(s.domain, []).append(s.path)
    domains = sorted(set(root.domains_with_documents()) | set(root.domains_with_indexes()) | set(recorded))
    out: dict = {"data_root": str(root.root), "domains": {}}
    for d in domains:
        t = docs.read(d).select(["deleted"]).to_pydict()["deleted"]
        current, problem = _current(store, d)
        try:
            manifest = store.manifest(d, current) if current else {}
        except (OSError, ValueError) as e:
            manifest, problem = {}, f"manifest of {current} unreadable: {e}"
        created = manifest.get("created_at")
        age = time.time() - datetime.fromisoformat(created).timestamp() if created else None
        out["domains"][d] = {
            "serving_version": current,
            "serving_created_at": created,
            "serving_age_s": round(age, 1) if age is not None else None,
            "documents": len(t) - sum(t),
            "tombstoned": sum(t),
            "interactions": docs.read_interactions(d).num_rows,
            "chunks": manifest.get("counts", {}).get("chunks"),
            "index": manifest.get("index", {}).get("kind"),
            "versions": store.versions(d),
            "quarantined": quarantine.count(d),
            "tables_version": _current(tables, d)[0],
            "tables_versions": len(tables.versions(d)),
            "verifier_version": _current(verifiers, d)[0],
            "ranker": _ranker(rankers, d, _current(verifiers, d)[0]),
            "sources": recorded.get(d, []),
            "pin": read_pin(store, d),
            "tables_pin": read_pin(tables, d),
        }
        if problem:
            out["domains"][d]["current_error"] = problem
    out["quarantined"] = quarantine.count()
    out["bad_entries"] = {k: v for kind in (store, tables, verifiers, rankers)
                          for k, v in kind.invalid_entries().items()}
    out["codebook_version"] = books.current(SHARED)
    out["last_nightly"] = last_nightly(root)
    return out


def _ranker(rankers: IndexStore, domain: str, own_verifier: str | None) -> dict | None:
    """Which ranker serves the domain's searches: its own verifier where it has one, else the ranker chosen for it
    on its held-out self-supervised queries (why, and the figures), else None (dense recall)."""
    if own_verifier:
        return {"ranker": "verifier", "reason": f"the domain's own verifier {own_verifier}"}
    try:
        m = rankers.current_manifest(domain)
    except (OSError, ValueError, RuntimeError) as e:  # a damaged choice: say so, do not fail the whole status
        return {"ranker": None, "reason": f"ranker choice unusable: {type(e).__name__}: {e}"}
    if not m:
        return None
    c = m.get("choice", {})
    return {"ranker": c.get("ranker"), "reason": c.get("reason"), "ndcg10": c.get("ndcg10"),
            "queries": c.get("queries"), "verifier": c.get("verifier"), "version": m.get("version"),
            "index_version": c.get("index_version")}


def record_nightly(root: DataRoot, summary: dict, *, run_name: str | None, started_at: str, seconds: float) -> None:
    """The last nightly run's outcome, for `sidestep status` (written atomically; one file, replaced)."""
    import json

    from .atomic import write_text

    doc = {"run": run_name, "started_at": started_at, "seconds": round(seconds, 1),
           "outcome": "failed" if summary.get("failed") else "completed",
           "failed": summary.get("failed", {}), "encoded": summary.get("encoded", 0),
           "published": summary.get("published", []), "quarantined": summary.get("quarantined", 0)}
    path = root.last_nightly()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, default=str))


def last_nightly(root: DataRoot) -> dict | None:
    import json

    try:
        return json.loads(root.last_nightly().read_text())
    except (FileNotFoundError, ValueError):
        return None


def _current(store: IndexStore, domain: str) -> tuple[str | None, str | None]:
    """CURRENT's version, or None and why it cannot be used (an invalid name, an unreadable file)."""
    try:
        return store.current(domain), None
    except (OSError, ValueError) as e:
        return None, f"CURRENT unusable: {e}"
