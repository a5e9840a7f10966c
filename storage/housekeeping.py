"""`sidestep gc` housekeeping: what the data root holds that nothing needs any more.

- quarantine files older than a retention (their records were reported when they were quarantined);
- embedding shards no index version references and no live document needs (a shard a live document
  needs is kept, so the next reindex reuses it instead of encoding again), and shards whose write was
  interrupted (a `.tokens.npy` without its `.parquet`);
- leftover folders of versioned artifacts without a manifest (a publish killed mid-way, a GC
  interrupted) and staging folders no publisher holds;
- temporary files of interrupted atomic writes, and records of replicas that stopped reporting.

`plan` only looks; `apply` removes what a plan listed, re-checking each entry. Nothing a complete
version, CURRENT, a pin or a live replica references is ever listed."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from .artifacts import MANIFEST, IndexStore, PublishBusy
from .documents import DocumentStore
from .paths import ARTIFACT_KINDS, SHARED, DataRoot
from .replicas import read_heartbeats

DEFAULT_QUARANTINE_DAYS = 30.0
MIN_AGE_S = 3600.0  # an unfinished write younger than this may still be in progress: left alone


@dataclass
class GcItem:
    path: str  # relative to the data root
    kind: str  # quarantine | embedding_shard | partial_shard | leftover_folder | staging | temp_file | heartbeat
    reason: str
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GcPlan:
    data_root: str
    apply: bool
    items: list[GcItem] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it was left after all

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def as_dict(self) -> dict:
        by_kind: dict[str, dict] = {}
        for i in self.items:
            k = by_kind.setdefault(i.kind, {"count": 0, "bytes": 0})
            k["count"] += 1
            k["bytes"] += i.bytes
        return {"data_root": self.data_root, "apply": self.apply, "dry_run": not self.apply,
                "items": [i.as_dict() for i in self.items], "bytes": self.bytes, "by_kind": by_kind,
                "removed": self.removed, "skipped": self.skipped}


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def _age(p: Path, now: float) -> float:
    return now - p.stat().st_mtime


def plan(root: DataRoot, *, quarantine_days: float = DEFAULT_QUARANTINE_DAYS, now: float | None = None,
         min_age_s: float = MIN_AGE_S) -> GcPlan:
    now = time.time() if now is None else now
    out = GcPlan(str(root.root), apply=False)
    rel = lambda p: str(p.relative_to(root.root))  # noqa: E731

    def add(p: Path, kind: str, reason: str) -> None:
        out.items.append(GcItem(rel(p), kind, reason, _size(p)))

    # quarantine files past their retention
    q = root.quarantine_root()
    if q.is_dir():
        for f in sorted(q.rglob("*.parquet")):
            age = _age(f, now)
            if age > quarantine_days * 86400:
                add(f, "quarantine", f"quarantined {age / 86400:.1f} days ago; retention {quarantine_days:g} days")

    # versioned artifacts: folders without a manifest, staging folders, temporary files
    referenced: dict[str, set[str]] = {}  # encoder key -> shards some index version references
    unsure: list[str] = []  # index versions whose shards could not be read: no shard is collected then
    for kind in ARTIFACT_KINDS:
        base = root.root / kind
        if not base.is_dir():
            continue
        domains = [SHARED] if kind == "codebooks" else [p.name for p in sorted(base.iterdir()) if p.is_dir()]
        for domain in domains:
            if kind != "codebooks" and not _is_domain_name(domain):
                # a folder that is no domain (a stray copy, `Handbook-BAK`): not ours to touch, but the shards its
                # versions read stay (an operator may rename it back)
                if kind == "indexes":
                    for v in sorted(q for q in (base / domain).iterdir() if q.is_dir() and (q / MANIFEST).is_file()):
                        if not _references(v, referenced):
                            unsure.append(rel(v))
                continue
            store = IndexStore(root, kind)
            folder = store.base(domain)
            keep = set(store.protected(domain)) if folder.is_dir() else set()
            for p in sorted(folder.iterdir()) if folder.is_dir() else []:
                if p.name.startswith(".staging-") and p.is_dir():
                    if _age(p, now) > min_age_s or not _busy(store, domain):
                        add(p, "staging", "staging folder of a publish that did not finish")
                elif p.name.startswith(".") and p.name.endswith(".tmp") and _age(p, now) > min_age_s:
                    add(p, "temp_file", "temporary file of an interrupted write")
                elif p.is_dir() and not p.name.startswith("."):
                    if (p / MANIFEST).is_file():
                        if kind == "indexes" and not _references(p, referenced):
                            unsure.append(rel(p))
                    elif p.name not in keep:
                        add(p, "leftover_folder", "version folder without a manifest (an interrupted publish "
                                                  "or GC): never loaded")

    # embedding shards
    emb = root.root / "embeddings"
    if unsure:
        out.skipped["embeddings"] = f"shards not collected: cannot tell what {', '.join(unsure)} references"
    elif emb.is_dir():
        live = _live_hashes(root)
        for key_dir in sorted(p for p in emb.iterdir() if p.is_dir()):
            refs = referenced.get(key_dir.name, set())
            for f in sorted(key_dir.iterdir()):
                if f.name.endswith(".tokens.npy"):
                    shard = f.name[: -len(".tokens.npy")]
                    if not (key_dir / f"{shard}.parquet").is_file() and _age(f, now) > min_age_s:
                        add(f, "partial_shard", "token file of an interrupted shard write (no .parquet)")
                elif f.name.endswith(".parquet") and not f.name.startswith("."):
                    shard = f.name[: -len(".parquet")]
                    if shard in refs:
                        continue
                    try:
                        hashes = set(pq.read_table(f, columns=["content_hash"])["content_hash"].to_pylist())
                    except Exception:  # unreadable: leave it for an operator, never guess
                        continue
                    if hashes & live:
                        continue
                    for part in (f, key_dir / f"{shard}.tokens.npy"):
                        if part.exists():
                            add(part, "embedding_shard", "no index version references this shard and no live "
                                                         "document needs it")
                elif f.name.startswith(".") and f.name.endswith(".tmp") and _age(f, now) > min_age_s:
                    add(f, "temp_file", "temporary file of an interrupted write")

    # ingest leftovers beside each domain's partition: a killed run's staging file (nobody holds its lock) and
    # temporary files of interrupted atomic writes (documents and quarantine)
    for base in (root.root / "documents", q):
        if not base.is_dir():
            continue
        for f in sorted(base.rglob(".*")):
            if not f.is_file():
                continue
            if f.name.startswith(".staging-") and f.name.endswith(".parquet"):
                if not _file_busy(f):
                    add(f, "staging", "staged documents of an ingest run that did not finish")
            elif f.name.endswith(".tmp") and _age(f, now) > min_age_s:
                add(f, "temp_file", "temporary file of an interrupted write")

    # replicas that stopped reporting
    for p, beat in read_heartbeats(root):
        if beat is None:
            if _age(p, now) > min_age_s:
                add(p, "heartbeat", "unreadable replica record")
        elif beat.expired(now):
            add(p, "heartbeat", f"replica {beat.replica} has not reported for {now - beat.written_at:.0f} s "
                                f"(TTL {beat.ttl_s:g} s): stopped or crashed")
    return out


def apply(root: DataRoot, p: GcPlan) -> GcPlan:
    """Remove what `p` lists. Version folders and staging folders are removed holding their domain's
    publish lock (a busy domain is skipped), and a folder that gained a manifest meanwhile is kept. Embedding
    shards are checked again just before (an ingest or publish since the plan may need one now)."""
    p.apply = True
    still_orphan = None
    if any(i.kind == "embedding_shard" for i in p.items):
        still_orphan = {i.path for i in plan(root).items if i.kind == "embedding_shard"}
    for item in p.items:
        path = root.root / item.path
        if not path.exists():
            continue
        if item.kind == "embedding_shard" and item.path not in still_orphan:
            p.skipped[item.path] = "referenced or needed again since the plan"
            continue
        if item.kind == "staging" and path.is_file():
            if _file_busy(path):
                p.skipped[item.path] = "an ingest run holds it"
                continue
            path.unlink()
            p.removed.append(item.path)
            continue
        try:
            if item.kind in ("leftover_folder", "staging"):
                kind, domain = Path(item.path).parts[0], Path(item.path).parts[1]
                store = IndexStore(root, kind)
                domain = SHARED if kind == "codebooks" else domain
                with store.lock(domain, wait=False):
                    if item.kind == "leftover_folder" and ((path / MANIFEST).is_file()
                                                           or path.name in store.protected(domain)):
                        p.skipped[item.path] = "complete or referenced now"
                        continue
                    shutil.rmtree(path)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            p.removed.append(item.path)
        except PublishBusy:
            p.skipped[item.path] = "a publisher holds the domain"
        except OSError as e:
            p.skipped[item.path] = f"{type(e).__name__}: {e}"
    return p


def _is_domain_name(name: str) -> bool:
    from sidestep.config import check_name

    with contextlib.suppress(ValueError):
        check_name(name)
        return True
    return False


def _busy(store: IndexStore, domain: str) -> bool:
    try:
        with store.lock(domain, wait=False):
            return False
    except PublishBusy:
        return True


def _file_busy(path: Path) -> bool:
    """True while a live ingest run holds the staging file's lock (storage/staging.py)."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return True


def _references(version: Path, out: dict[str, set[str]]) -> bool:
    """Add the embedding shards an index version reads (its manifest's list, else its chunk table's);
    False when that cannot be told."""
    import json

    try:
        m = json.loads((version / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    key = m.get("encoder") or (m.get("embeddings") or {}).get("encoder")
    if not key:
        return False
    shards = (m.get("embeddings") or {}).get("shards")
    if shards is None:
        try:
            shards = pq.read_table(version / "chunks.parquet", columns=["shard"])["shard"].to_pylist()
        except Exception:
            return False
    out.setdefault(key, set()).update(shards)
    return True


def _live_hashes(root: DataRoot) -> set[str]:
    docs, out = DocumentStore(root), set()
    for d in root.domains_with_documents():
        with contextlib.suppress(ValueError, OSError):
            t = docs.columns(d, ["content_hash", "deleted"])  # never the texts
            out.update(h for h, gone in zip(t["content_hash"].to_pylist(), t["deleted"].to_pylist(), strict=True)
                       if not gone)
    return out
