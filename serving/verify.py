"""The verify stage a replica runs: each domain's published verifier, hot-reloaded, plus the
token vectors of the index versions it is asked about.

Plain Python (no Ray): the command line and evaluation call it in-process; the Ray Serve
verifier deployment wraps `verify_batch` in `@serve.batch`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from sidestep.config import Settings
from sidestep.retrieval.search import TokenView, VerifyRequest, maxsim_rerank, rerank
from sidestep.storage.indexes import load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import LoadedVerifier, load_verifier, verifier_store
from sidestep.verify.features import warm_up

from .versions import VersionedDomains

TOKEN_VIEWS_KEPT = 2  # per process: the serving version and the one being swapped in


class VerifierService(VersionedDomains):
    what = "verifier"

    def __init__(self, settings: Settings, root: DataRoot):
        super().__init__(verifier_store(root))
        self.settings = settings
        self.root = root
        self._views: OrderedDict[tuple[str, str], TokenView] = OrderedDict()
        warm_up()
        self.refresh()

    @property
    def verifiers(self) -> dict[str, LoadedVerifier]:
        return self.loaded

    def load(self, domain: str, version: str) -> LoadedVerifier | None:
        return load_verifier(self.root, domain, version)

    def version_of(self, loaded: LoadedVerifier) -> str:
        return loaded.version

    def health(self) -> dict:
        return {"status": "ok", "verifiers": {d: v.version for d, v in sorted(self.loaded.items())},
                "errors": dict(self.errors), "fallback": dict(self.fallback), "bad_entries": dict(self.bad_entries)}

    def heartbeat(self) -> dict[str, dict[str, str]]:
        return {"verifiers": self.served()}

    def has(self, domain: str) -> bool:
        return domain in self.loaded

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

    def verify_batch(self, requests: list[VerifyRequest]) -> list[dict]:
        """Score each request's candidates (recall's, in a search's RecallStage.request)."""
        out: list[dict] = []
        groups: dict[str, list[int]] = {}  # maps are per query; one model forward per verifier version
        owner: dict[int, str] = {}  # request -> the domain whose verifier scores it
        for i, r in enumerate(requests):
            # the domain's own verifier first; else the ranker chosen for it (the general verifier, or MaxSim)
            by = r.domain if r.domain in self.loaded else (r.verifier_domain if r.ranker == "verifier" else None)
            ver = self.loaded.get(by) if by else None
            out.append({"applied": False, "reason": f"no verifier is published for domain {r.domain!r}"})
            if ver is not None:
                owner[i] = by
                groups.setdefault(f"{by}/{ver.version}", []).append(i)
            elif r.ranker == "maxsim" and r.domain not in self.loaded:
                t0 = time.perf_counter()
                ms, ms_time = maxsim_rerank(self.view(r.domain, r.index_version), np.asarray(r.qtok, np.float32),
                                            r.doc_ids, self.settings.verify.max_doc_tokens)
                out[i] = {"applied": False, "ranker": "maxsim", "scores": ms.tolist(),
                          "timings_ms": {"maxsim": ms_time, "token_view": (time.perf_counter() - t0) * 1e3 - ms_time},
                          "reason": f"no verifier is published for domain {r.domain!r}: MaxSim, its chosen ranker"}
        for idx in groups.values():
            by = owner[idx[0]]
            ver = self.loaded[by]
            batch = [requests[i] for i in idx]
            scored = rerank(ver.model, [self.view(r.domain, r.index_version) for r in batch],
                            [np.asarray(r.qtok, np.float32) for r in batch], [r.qpieces for r in batch],
                            [r.doc_ids for r in batch], [np.asarray(r.recall, np.float32) for r in batch],
                            self.settings.verify.max_doc_tokens, self.settings.verify.verify_top)
            for i, (scores, timings, verified) in zip(idx, scored, strict=True):
                out[i] = {"applied": True, "verifier_version": ver.version, "scores": scores.tolist(),
                          "timings_ms": timings, "batch": len(idx), "verified": verified}
                if by != requests[i].domain:
                    out[i]["verifier_domain"] = by
        return out
