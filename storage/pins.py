"""Pins: a rollback holds a domain on the version it chose until an operator unpins it or a newer ingest
supersedes it. The pin is a small JSON file beside CURRENT (`<kind>/<domain>/PIN`), written atomically.

A publisher (the nightly's index and tables steps) asks `active_pin` before it publishes: while the pin
stands it publishes nothing and reports "pinned"; when the domain's documents have a newer generation
than the pin recorded (new data was ingested since the rollback), the pin is cleared and publishing
resumes. GC never deletes a pinned version."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from .artifacts import IndexStore
from .atomic import write_text
from .documents import documents_generation

PIN = "PIN"
log = logging.getLogger("sidestep.storage")


def read_pin(store: IndexStore, domain: str) -> dict | None:
    """The domain's pin, or None. An unreadable pin file still pins (fail closed): its version is None."""
    p = store.base(domain) / PIN
    try:
        raw = p.read_text()
    except FileNotFoundError:
        return None
    try:
        pin = json.loads(raw)
        if not isinstance(pin, dict):
            raise ValueError("not an object")
    except ValueError as e:
        return {"version": None, "documents_generation": None, "reason": f"unreadable pin file ({e})"}
    return pin


def write_pin(store: IndexStore, domain: str, version: str, *, reason: str, previous: str | None = None) -> dict:
    """Pin `domain` to `version` (call it holding the domain's publish lock, as rollback does)."""
    pin = {"version": version, "kind": store.kind, "domain": domain, "reason": reason, "previous_version": previous,
           "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "documents_generation": documents_generation(store.root, domain)}
    write_text(store.base(domain) / PIN, json.dumps(pin, sort_keys=True) + "\n")
    return pin


def clear_pin(store: IndexStore, domain: str) -> dict | None:
    """Remove the pin; returns what it was (None when the domain was not pinned)."""
    pin = read_pin(store, domain)
    (store.base(domain) / PIN).unlink(missing_ok=True)
    return pin


def active_pin(store: IndexStore, domain: str) -> dict | None:
    """The pin a publisher must respect, or None. A pin whose domain has newer documents than it recorded
    (an ingest since the rollback) is cleared here and no longer holds."""
    pin = read_pin(store, domain)
    if pin is None:
        return None
    recorded = pin.get("documents_generation")
    now = documents_generation(store.root, domain)
    if isinstance(recorded, int) and now > recorded:
        clear_pin(store, domain)
        log.warning("%s %s: pin on %s cleared: documents generation %d is newer than the pin's %d",
                    store.kind, domain, pin.get("version"), now, recorded)
        return None
    return pin


def pinned_reason(pin: dict, domain: str) -> str:
    return (f"pinned to {pin.get('version')} ({pin.get('reason') or 'pinned'}, {pin.get('pinned_at', '?')}): "
            f"`sidestep unpin --domain {domain}` or a newer ingest into {domain} clears it")
