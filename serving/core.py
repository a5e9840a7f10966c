"""The search service a replica runs: encoder + loaded index versions + hot reload.

Plain Python (no Ray), so the command line can use the very same code in-process.
"""

from __future__ import annotations

import logging
import threading
import time

from sidestep.config import Settings, check_name
from sidestep.encoder import Encoder
from sidestep.search import IndexedCorpus, MapParamsSearch, search_texts
from storage.artifacts import IndexStore
from storage.indexes import load_version
from storage.paths import DataRoot

log = logging.getLogger("sidestep.serving")


class SearchService:
    def __init__(self, settings: Settings, root: DataRoot, encoder: Encoder | None = None):
        self.settings = settings
        self.root = root
        self.store = IndexStore(root)
        e = settings.encoder
        self.encoder = encoder or Encoder(e.model_path, batch_size=e.batch_size, num_threads=e.num_threads,
                                          max_query_tokens=e.max_query_tokens)
        self.corpora: dict[str, IndexedCorpus] = {}
        self.pinned: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self.refresh()

    # versions ----------------------------------------------------------------
    def refresh(self) -> dict[str, str]:
        """Load any domain whose CURRENT (or pin) changed. A version that fails validation is refused
        and the old one keeps serving. Returns {domain: new_version} for the swaps made."""
        swapped = {}
        for domain in self.root.domains_with_indexes():
            want = self.pinned.get(domain) or self.store.current(domain)
            have = self.corpora.get(domain)
            if not want or (have and have.version == want):
                continue
            try:
                ix = self.settings.index
                corpus = load_version(self.store, domain, want, overfetch=ix.chunk_overfetch,
                                      doc_score=ix.doc_score, ef_search=ix.hnsw_ef_search)
            except Exception as e:  # a bad version never replaces a good one
                msg = f"refused {domain}/{want}: {type(e).__name__}: {e}"
                if self.errors.get(domain) != msg:
                    log.error(msg)
                self.errors[domain] = msg
                continue
            with self._lock:
                self.corpora[domain] = corpus
            self.errors.pop(domain, None)
            swapped[domain] = want
            log.info("serving %s/%s (%d documents)", domain, want, corpus.n_docs)
        return swapped

    def pin(self, pins: dict[str, str]) -> dict[str, str]:
        self.pinned = {check_name(d): check_name(v, "version") for d, v in (pins or {}).items()}
        return self.refresh()

    def domains(self) -> list[str]:
        return sorted(self.corpora)

    def resolve_domain(self, domain: str | None) -> str:
        if domain is None:
            d = self.settings.default_domain
            if d and d in self.corpora:
                return d
            if len(self.corpora) == 1:
                return next(iter(self.corpora))
            raise ValueError(f"no domain given and no default; choose one of {self.domains()}")
        if domain not in self.corpora:
            raise LookupError(f"unknown domain {domain!r}; published domains: {self.domains()}")
        return domain

    # queries -----------------------------------------------------------------
    def search(self, query: str, k: int = 10, domain: str | None = None, verify: bool = True,
               mode: str = "chunks", doc_id: str | None = None) -> dict:
        t0 = time.perf_counter()
        query = (query or "").strip()
        if not query:
            raise ValueError("query is empty")
        if len(query) > self.settings.serve.max_query_chars:
            raise ValueError(f"query is {len(query)} characters; the limit is {self.settings.serve.max_query_chars}")
        if not 1 <= k <= self.settings.serve.max_k:
            raise ValueError(f"k must be in 1..{self.settings.serve.max_k}, got {k}")
        name = self.resolve_domain(domain)
        with self._lock:
            corpus = self.corpora[name]
        m = self.settings.maps
        params = MapParamsSearch(top_r=m.route_top_r, map_weight=m.map_weight, alpha=m.alpha, gamma=m.gamma)
        hits, timings = search_texts(self.encoder, corpus, [query], k, mode=mode, doc_id=doc_id, params=params)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return {
            "index_version": corpus.version,
            "domain": name,
            "mode": mode,
            "results": [h.as_dict() for h in hits[0]],
            "verify": {"requested": verify, "applied": False,
                       **({"reason": "no verifier is published yet: results are recall only"} if verify else {})},
            "timings_ms": {k2: round(v, 3) for k2, v in timings.items()},
        }

    def health(self) -> dict:
        return {"status": "ok" if self.corpora else "no_index",
                "domains": {d: c.version for d, c in sorted(self.corpora.items())},
                "errors": dict(self.errors)}
