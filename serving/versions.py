"""What every serving replica shares: each domain's loaded version, swapped when its CURRENT pointer
(or a pin) names another one. A version that fails to load or validate is refused, its error kept for
/healthz, and the old one keeps serving.

One bad entry costs only its own domain: a folder whose name is no valid domain (`Handbook-BAK`) is
skipped and reported (`bad_entries`), a CURRENT that cannot be read or names an invalid version is that
domain's error, and the other domains keep loading and hot-reloading. A replica that has nothing loaded
for a domain whose CURRENT is damaged (a fresh or restarted replica) falls back to the newest complete
version that verifies on disk, and says so (`fallback`)."""

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
        self.fallback: dict[str, dict] = {}  # domain -> {"serving", "current", "reason"}
        self.bad_entries: dict[str, str] = {}  # "indexes/Handbook-BAK" -> why it is ignored
        self._lock = threading.Lock()

    def version_domains(self) -> list[str]:
        return self.store.domains()

    def load(self, domain: str, version: str) -> Any:
        raise NotImplementedError

    def version_of(self, loaded: Any) -> str:
        raise NotImplementedError

    def describe(self, loaded: Any) -> str:
        return ""

    def _error(self, domain: str, msg: str, version: str | None = None) -> None:
        if self.errors.get(domain) != msg:
            log.error(msg)
        self.errors[domain] = msg
        if version:
            self.refused.setdefault(domain, set()).add(version)

    def refresh(self) -> dict[str, str]:
        """Load any domain whose CURRENT (or pin) changed; returns {domain: new_version} for the swaps made.
        Never raises for one domain's bad entry: that domain keeps what it served (or serves nothing),
        with the reason in `errors` / `bad_entries`."""
        swapped = {}
        label = f"{self.what} " if self.what else ""
        try:
            self.bad_entries = self.store.invalid_entries()
        except OSError as e:
            self.bad_entries = {self.store.kind: f"cannot list: {e}"}
        for domain in self.version_domains():
            try:
                want = self.pinned.get(domain) or self.store.current(domain)
            except (OSError, ValueError) as e:  # an unreadable CURRENT, or one naming an invalid version
                want, msg = None, f"refused {label}{domain}: CURRENT unusable: {type(e).__name__}: {e}"
                self._error(domain, msg)
                if domain not in self.loaded:
                    self._fall_back(domain, None, msg, label, swapped)
                continue
            have = self.loaded.get(domain)
            if not want or (have is not None and self.version_of(have) == want):
                continue
            try:
                loaded = self.load(domain, want)
            except Exception as e:  # a bad version never replaces a good one
                msg = f"refused {label}{domain}/{want}: {type(e).__name__}: {e}"
                self._error(domain, msg, want)
                if have is None:
                    self._fall_back(domain, want, msg, label, swapped)
                continue
            if loaded is None:
                continue
            with self._lock:
                self.loaded[domain] = loaded
            self.errors.pop(domain, None)
            self.fallback.pop(domain, None)
            swapped[domain] = want
            log.info("serving %s%s/%s %s", label, domain, want, self.describe(loaded))
        return swapped

    def _fall_back(self, domain: str, current: str | None, reason: str, label: str, swapped: dict) -> None:
        """Nothing is loaded and CURRENT cannot be: load the newest complete version that verifies on disk,
        versions older than CURRENT first (the last good one before it), then newer ones."""
        try:
            versions = self.store.versions(domain)
        except (OSError, ValueError):
            return
        older = [v for v in versions if current is None or v < current]
        newer = [v for v in versions if current is not None and v > current]
        for v in [*reversed(older), *newer]:
            if v == current or v in self.refused.get(domain, set()):
                continue
            try:
                check_name(v, "version")
                loaded = self.load(domain, v)
            except Exception as e:
                self.refused.setdefault(domain, set()).add(v)
                log.error("fallback %s%s/%s refused too: %s: %s", label, domain, v, type(e).__name__, e)
                continue
            if loaded is None:
                continue
            with self._lock:
                self.loaded[domain] = loaded
            self.fallback[domain] = {"serving": v, "current": current, "reason": reason}
            swapped[domain] = v
            log.warning("serving %s%s/%s instead of CURRENT %s: %s", label, domain, v, current, reason)
            return

    def version_state(self) -> dict:
        """What /metrics reports: each domain's served version, and how many versions it refused."""
        with self._lock:
            versions = {d: self.version_of(x) for d, x in self.loaded.items()}
        return {"kind": self.what or "index", "versions": versions,
                "refused": {d: len(v) for d, v in self.refused.items()}}

    def served(self) -> dict[str, str]:
        """{domain: version} this replica serves now (for its heartbeat)."""
        with self._lock:
            return {d: self.version_of(x) for d, x in self.loaded.items()}

    def unavailable(self) -> dict[str, str]:
        """Domains that have a CURRENT pointer but nothing loaded, with why (an empty dict when all serve)."""
        try:
            domains = self.version_domains()
        except OSError:
            domains = []
        return {d: self.errors.get(d, "not loaded yet") for d in domains if d not in self.loaded}

    def pin(self, pins: dict[str, str]) -> dict[str, str]:
        self.pinned = {check_name(d): check_name(v, "version") for d, v in (pins or {}).items()}
        return self.refresh()

    def get(self, domain: str) -> Any:
        with self._lock:
            return self.loaded[domain]
