"""Sequential recommendation data: interaction rows -> leave-one-out splits over integer item indices.

Index 0 is padding, items are 1..N in the order of `item_ids`. UniSRec folders
ship their own train/valid/test rows (train already expands every prefix);
LC-Rec and RecBole atomic files give one chronological sequence per user, split here the
standard way: last item = test, second last = valid, every earlier prefix = train.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sidestep.ingest.records import Interaction

MAX_HISTORY = 50


@dataclass
class Split:
    """(history, target) pairs; histories are right-padded with 0 to `width` and hold the last items."""

    history: np.ndarray  # (n, width) int64, item indices, 0 = padding after the last real item
    lengths: np.ndarray  # (n,) int64, >= 1
    target: np.ndarray  # (n,) int64
    users: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target.shape[0])


@dataclass
class RecData:
    item_ids: list[str]  # position i holds the id of item index i + 1
    train: Split
    valid: Split
    test: Split
    unknown: dict[str, int] = field(default_factory=dict)  # item id -> rows dropped because of it
    source_fingerprint: str | None = None  # what the interactions looked like when they were read

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index_of(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


def build_splits(rows: Iterable[Interaction], item_ids: Sequence[str], *, max_history: int = MAX_HISTORY) -> RecData:
    """Leave-one-out splits. Rows naming an item without text are dropped and counted in `unknown`
    (an item the model cannot represent cannot be scored fairly)."""
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    unknown: dict[str, int] = {}
    pairs: dict[str, list[tuple[str, list[int], int]]] = {"train": [], "valid": [], "test": []}
    for row in rows:
        for split, user, hist, target in _expand(row):
            ids = [index.get(i) for i in (*hist, target)]
            if any(i is None for i in ids):
                for i, raw in zip(ids, (*hist, target), strict=True):
                    if i is None:
                        unknown[raw] = unknown.get(raw, 0) + 1
                continue
            if hist and split in pairs:
                pairs[split].append((user, ids[:-1], ids[-1]))
    splits = {name: _to_split(p, max_history) for name, p in pairs.items()}
    return RecData(list(item_ids), splits["train"], splits["valid"], splits["test"], unknown)


def _expand(row: Interaction) -> Iterable[tuple[str, str, tuple[str, ...], str]]:
    if row.target is not None:
        yield row.split, row.user_id, row.history, row.target
        return
    seq = row.history  # a whole chronological sequence: leave-one-out
    n = len(seq)
    for t in range(1, n):
        split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
        yield split, row.user_id, seq[:t], seq[t]


def _to_split(pairs: list[tuple[str, list[int], int]], max_history: int) -> Split:
    hist = np.zeros((len(pairs), max_history), dtype=np.int64)
    lengths = np.zeros(len(pairs), dtype=np.int64)
    target = np.zeros(len(pairs), dtype=np.int64)
    for r, (_, h, t) in enumerate(pairs):
        h = h[-max_history:]
        hist[r, : len(h)] = h
        lengths[r] = len(h)
        target[r] = t
    return Split(hist, lengths, target, [u for u, _, _ in pairs])


def encode_history(history: Sequence[str], index: dict[str, int], *, max_history: int = MAX_HISTORY,
                   ) -> tuple[np.ndarray, list[str]]:
    """A request's history as item indices (last `max_history` known items) and the ids it did not know."""
    known = [index[i] for i in history if i in index]
    unknown = [i for i in history if i not in index]
    return np.asarray(known[-max_history:], dtype=np.int64), unknown


def popularity(data: RecData) -> np.ndarray:
    """Interaction counts per item index (0..N) from the training split: targets plus the first history
    of each user, so that every training interaction counts once."""
    counts = np.bincount(data.train.target, minlength=data.n_items + 1).astype(np.float64)
    first = data.train.lengths == 1
    counts += np.bincount(data.train.history[first, 0], minlength=data.n_items + 1)
    counts[0] = 0
    return counts
