"""The gradient lab's rec data: a recommendation source's items with their text vectors and its leave-one-out
splits, optionally on a seeded subsample of users; the text vectors are cached in the data root
(lab/rec/<name>/)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.ingest.readers import read_source
from sidestep.lab.rec import RecLabData
from sidestep.rec.data import build_splits
from sidestep.storage.atomic import write_with
from sidestep.storage.paths import DataRoot

from .common import Log, encoder_for, store_key

CACHE_VERSION = 1
WINDOW_TOKENS = 128  # item texts are titles and short descriptions: the first window is the item


def rec_lab_data(root: DataRoot, settings: Settings, dataset_dir: str, name: str, *, users: int | None = None,
                 seed: int = 0, max_history: int = 20, log: Log = print) -> RecLabData:
    """RecLabData of DATASET_DIR (a UniSRec, RecBole or LC-Rec folder). With ``users``, a seeded sample of that
    many users is kept (all of their rows) and the catalogue is the items they touch (full ranking over it)."""
    src = read_source(dataset_dir)
    if not src.interactions:
        raise ValueError(f"{dataset_dir} has no interactions: the rec lab needs a recommendation source")
    docs = {d.doc_id: d for d in src.documents}
    rows = src.interactions
    catalogue = sorted({i for r in rows for i in _items_of(r)} & docs.keys())  # every item any user touches
    vectors = _text_vectors(root, settings, name, [docs[i] for i in catalogue], log)
    all_users = sorted({r.user_id for r in rows})
    if users is not None and users < len(all_users):
        keep = set(np.random.default_rng(seed).choice(all_users, users, replace=False).tolist())
        rows = [r for r in rows if r.user_id in keep]
    item_ids = sorted({i for r in rows for i in _items_of(r)} & docs.keys())
    at = {i: n for n, i in enumerate(catalogue)}
    vectors = vectors[[at[i] for i in item_ids]]
    data = build_splits(rows, item_ids, max_history=max_history)
    if len(data.train) == 0 or len(data.valid) == 0 or len(data.test) == 0:
        raise ValueError(f"{dataset_dir}: {len(data.train)} train, {len(data.valid)} valid, {len(data.test)} test "
                         "pairs; leave-one-out needs users with at least 3 interactions")
    n_users = len({r.user_id for r in rows})
    notes = {"dataset": str(Path(dataset_dir).resolve()), "users": n_users, "users_in_source": len(all_users),
             "subsample": None if users is None or users >= len(all_users) else
             f"{n_users} of {len(all_users)} users (seed {seed}), the {len(item_ids)} items they touch",
             "unknown_item_rows": int(sum(data.unknown.values())), "text": f"first {WINDOW_TOKENS} tokens of "
             f"title + text, {store_key(settings)}", "bad_records": len(src.bad)}
    return RecLabData(name=name, vectors=vectors, data=data, notes=notes)


def _save(path: Path, vectors: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, vectors)


def _items_of(row) -> tuple[str, ...]:
    return (*row.history, *((row.target,) if row.target is not None else ()))


def _text_vectors(root: DataRoot, settings: Settings, name: str, docs: list, log: Log) -> np.ndarray:
    """(N, dim) unit vectors of the first window of each item's title + text, cached by content."""
    hashes = [d.content_hash for d in docs]
    key = digest({"v": CACHE_VERSION, "encoder": store_key(settings), "window": WINDOW_TOKENS}, hashes, length=16)
    path = root.lab("rec", name) / f"{key}.npy"
    if path.is_file():
        log(f"{name}: text vectors of {len(docs)} items from the cache {path}")
        return np.load(path)
    t0 = time.perf_counter()
    encoded = encoder_for(settings).encode_documents([(d.content_hash, d.title, d.text) for d in docs],
                                                     window_tokens=WINDOW_TOKENS, overlap_tokens=0, max_chunks=1)
    vectors = np.stack([e.pooled.mean(0) for e in encoded]).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda p: _save(p, vectors))
    log(f"{name}: encoded {len(docs)} items ({time.perf_counter() - t0:.0f} s), cached at {path}")
    return vectors
