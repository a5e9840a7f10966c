"""What `sidestep status` shows: per domain, the serving version, counts, quarantine."""

from __future__ import annotations

import time
from datetime import datetime

from .artifacts import IndexStore
from .documents import DocumentStore, QuarantineStore
from .paths import SHARED, DataRoot


def domain_status(root: DataRoot) -> dict:
    store, docs, quarantine = IndexStore(root), DocumentStore(root), QuarantineStore(root)
    tables, books = IndexStore(root, "tables"), IndexStore(root, "codebooks")
    domains = sorted(set(root.domains_with_documents()) | set(root.domains_with_indexes()))
    out: dict = {"data_root": str(root.root), "domains": {}}
    for d in domains:
        t = docs.read(d).select(["deleted"]).to_pydict()["deleted"]
        current = store.current(d)
        manifest = store.manifest(d, current) if current else {}
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
            "tables_version": tables.current(d),
            "tables_versions": len(tables.versions(d)),
        }
    out["quarantined"] = quarantine.count()
    out["codebook_version"] = books.current(SHARED)
    return out
