"""What every serving replica shares: each domain's loaded version, swapped when its CURRENT pointer
(or a pin) names another one. A version that fails to load or validate is refused, its error kept for
/healthz, and the old one keeps serving."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sidestep.config import check_name
from sidestep.storage.artifacts import IndexStore

log = logging.getLogger("sidestep.serving")


class VersionedDomains:
    """Subclasses say which domains exist, how a version loads and what names it in logs."""

    what = ""  # "tables", "verifier": prefixes messages

    def __init__(self, store: IndexStore):
        self.store = store
        self.loaded: dict[str, Any] = {}
        self.pinned: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.refused: dict[str, set[str]] = {}  # domain -> versions refused (for /metrics)
        self._lock = threading.Lock()

    def version_domains(self) -> list[str]:
        return self.store.domains()

    def load(self, domain: str, version: str) -> Any:
        raise NotImplementedError

    def version_of(self, loaded: Any) -> str:
        raise NotImplementedError

    def describe(self, loaded: Any) -> str:
        return ""

    def refresh(self) -> dict[str, str]:
        """Load any domain whose CURRENT (or pin) changed; returns {domain: new_version} for the swaps made."""
        swapped = {}
        label = f"{self.what} " if self.what else ""
        for domain in self.version_domains():
            want = self.pinned.get(domain) or self.store.current(domain)
            have = self.loaded.get(domain)
            if not want or (have is not None and self.version_of(have) == want):
                continue
            try:
                loaded = self.load(domain, want)
            except Exception as e:  # a bad version never replaces a good one
                msg = f"refused {label}{domain}/{want}: {type(e).__name__}: {e}"
                if self.errors.get(domain) != msg:
                    log.error(msg)
                self.errors[domain] = msg
                self.refused.setdefault(domain, set()).add(want)
                continue
            if loaded is None:
                continue
            with self._lock:
                self.loaded[domain] = loaded
            self.errors.pop(domain, None)
            swapped[domain] = want
            log.info("serving %s%s/%s %s", label, domain, want, self.describe(loaded))
        return swapped

    def version_state(self) -> dict:
        """What /metrics reports: each domain's served version, and how many versions it refused."""
        with self._lock:
            versions = {d: self.version_of(x) for d, x in self.loaded.items()}
        return {"kind": self.what or "index", "versions": versions,
                "refused": {d: len(v) for d, v in self.refused.items()}}

    def pin(self, pins: dict[str, str]) -> dict[str, str]:
        self.pinned = {check_name(d): check_name(v, "version") for d, v in (pins or {}).items()}
        return self.refresh()

    def get(self, domain: str) -> Any:
        with self._lock:
            return self.loaded[domain]
