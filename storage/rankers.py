"""Ranker choices: `rankers/<domain>/<version>/choice.json`, one small versioned artifact per domain saying
which ranker serves a domain that has no verifier of its own (pooled cosine, MaxSim, BM25 + dense fusion, or
the general verifier), why, and the held-out self-supervised figures it was chosen on. Published and
verified like every other artifact, so serving hot-loads and rolls it back the same way."""

from __future__ import annotations

import json

from .artifacts import IndexStore
from .atomic import write_text
from .paths import DataRoot

CHOICE_FILE = "choice.json"
GENERAL_DOMAIN = "general-verifier"  # where the general verifier is published (verifiers/<this>/<version>/)


def ranker_store(root: DataRoot) -> IndexStore:
    return IndexStore(root, "rankers")


def publish_choice(root: DataRoot, domain: str, version: str, choice: dict, keep: int) -> dict:
    store = ranker_store(root)
    with store.lock(domain):
        store.clean_staging(domain)
        with store.staging(domain) as staged:
            write_text(staged / CHOICE_FILE, json.dumps(choice, indent=2, sort_keys=True))
            out = store.publish(domain, staged, version, {"choice": choice})
    store.gc(domain, keep)
    return out


def load_choice(root: DataRoot, domain: str, version: str | None = None) -> dict | None:
    """The domain's current (or named) ranker choice, checksums verified; None when none is published."""
    store = ranker_store(root)
    version = version or store.current(domain)
    if version is None:
        return None
    store.verify(domain, version)
    choice = json.loads((store.path(domain, version) / CHOICE_FILE).read_text())
    return {**choice, "version": version}
