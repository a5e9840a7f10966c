"""The verify stage a replica runs: each domain's published verifier, hot-reloaded, plus the
token vectors of the index versions it is asked about.

Plain Python (no Ray): the command line and evaluation call it in-process; the Ray Serve
verifier deployment wraps `verify_batch` in `@serve.batch`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np

from sidestep.config import Settings, check_name
from sidestep.search import TokenView, rerank
from storage.indexes import load_token_view
from storage.paths import DataRoot
from storage.verifiers import LoadedVerifier, load_verifier, verifier_store

log = logging.getLogger("sidestep.serving")
TOKEN_VIEWS_KEPT = 2  # per process: the serving version and the one being swapped in


class VerifierService:
    def __init__(self, settings: Settings, root: DataRoot):
        self.settings = settings
        self.root = root
        self.store = verifier_store(root)
        self.verifiers: dict[str, LoadedVerifier] = {}
        self.pinned: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._views: OrderedDict[tuple[str, str], TokenView] = OrderedDict()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> dict[str, str]:
        swapped = {}
        for domain in self.store.domains():
            want = self.pinned.get(domain) or self.store.current(domain)
            have = self.verifiers.get(domain)
            if not want or (have and have.version == want):
                continue
            try:
                loaded = load_verifier(self.root, domain, want)
            except Exception as e:  # a bad version never replaces a good one
                msg = f"refused verifier {domain}/{want}: {type(e).__name__}: {e}"
                if self.errors.get(domain) != msg:
                    log.error(msg)
                self.errors[domain] = msg
                continue
            if loaded is not None:
                with self._lock:
                    self.verifiers[domain] = loaded
                self.errors.pop(domain, None)
                swapped[domain] = want
                log.info("verifier %s/%s loaded", domain, want)
        return swapped

    def pin(self, pins: dict[str, str]) -> dict[str, str]:
        self.pinned = {check_name(d): check_name(v, "version") for d, v in (pins or {}).items()}
        return self.refresh()

    def health(self) -> dict:
        return {"status": "ok", "verifiers": {d: v.version for d, v in sorted(self.verifiers.items())},
                "errors": dict(self.errors)}

    def has(self, domain: str) -> bool:
        return domain in self.verifiers

    def view(self, domain: str, index_version: str) -> TokenView:
        key = (domain, index_version)
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        v = load_token_view(self.root, self.settings, domain, index_version)
        with self._lock:
            self._views[key] = v
            while len(self._views) > TOKEN_VIEWS_KEPT:
                self._views.popitem(last=False)
        return v

    def verify_batch(self, requests: list[dict]) -> list[dict]:
        """Score each request's candidates. A request: domain, index_version, qtok (nq, d) with specials,
        qpieces (its word-piece ids, specials included), doc_ids, recall (scores)."""
        out: list[dict] = [{}] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            ver = self.verifiers.get(r["domain"])
            if ver is None:
                out[i] = {"applied": False, "reason": f"no verifier is published for domain {r['domain']!r}"}
                continue
            todo.append((i, r, ver))
        t0 = time.perf_counter()
        by_model: dict[str, list] = {}  # maps are per query; one model forward per verifier version
        for i, r, ver in todo:
            by_model.setdefault(f"{r['domain']}/{ver.version}", []).append((i, r, ver))
        for group in by_model.values():
            ver = group[0][2]
            scored = rerank(ver.model, [self.view(r["domain"], r["index_version"]) for _, r, _ in group],
                            [np.asarray(r["qtok"], np.float32) for _, r, _ in group],
                            [r["qpieces"] for _, r, _ in group], [r["doc_ids"] for _, r, _ in group],
                            [np.asarray(r["recall"], np.float32) for _, r, _ in group],
                            self.settings.verify.max_doc_tokens)
            for (i, _, v), (scores, timings) in zip(group, scored, strict=True):
                out[i] = {"applied": True, "verifier_version": v.version, "scores": scores.tolist(),
                          "timings_ms": timings, "batch": len(group)}
        log.debug("verified %d requests in %.1f ms", len(todo), (time.perf_counter() - t0) * 1e3)
        return out
