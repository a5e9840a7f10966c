"""The search service a replica runs: encoder + loaded index versions + hot reload.

Plain Python (no Ray), so the command line can use the very same code in-process.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from sidestep.config import Settings
from sidestep.results import Hit
from sidestep.retrieval.search import (
    IndexedCorpus,
    MapParamsSearch,
    RecallStage,
    VerifyRequest,
    search_texts,
    search_vectors,
)
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_version
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import load_choice, ranker_store
from sidestep.storage.verifiers import verifier_store
from sidestep.text.encoder import Encoder, doc_text
from sidestep.text.lexical import BM25, rrf

from .verify import VerifierService
from .versions import VersionedDomains


class SearchService(VersionedDomains):
    def __init__(self, settings: Settings, root: DataRoot, encoder: Encoder | None = None,
                 verifier: VerifierService | None | bool = True, fast_encoder: bool = False):
        """verifier: True = verify in-process (command line, evaluation); None = the caller verifies
        (the Ray app sends `recall_stage`'s request to its verifier deployment). fast_encoder: encode
        one query at a time through an ONNX session (Encoder fast_single), which takes about 2.5 s to
        build: for a long-lived server replica, not for a command that answers one query."""
        super().__init__(IndexStore(root))
        self.settings = settings
        self.root = root
        e = settings.encoder
        self.encoder = encoder or Encoder(e.model_path, batch_size=e.batch_size, num_threads=e.num_threads,
                                          max_query_tokens=e.max_query_tokens, fast_single=fast_encoder,
                                          device=e.device)
        self.verifier = VerifierService(settings, root) if verifier is True else (verifier or None)
        self._choices: dict[str, tuple[str, dict]] = {}  # domain -> (choice version, choice)
        self.choice_errors: dict[str, str] = {}  # domain -> why its published ranker choice cannot be used
        self._bm25: dict[str, tuple[str, BM25]] = {}  # domain -> (index version, BM25 over its live documents)
        self.refresh()

    @property
    def corpora(self) -> dict[str, IndexedCorpus]:
        return self.loaded

    # versions ----------------------------------------------------------------
    def version_domains(self) -> list[str]:
        return self.root.domains_with_indexes()

    def load(self, domain: str, version: str) -> IndexedCorpus:
        ix = self.settings.index
        return load_version(self.store, domain, version, overfetch=ix.chunk_overfetch, doc_score=ix.doc_score,
                            ef_search=ix.hnsw_ef_search, nprobe=ix.ivf_nprobe,
                            refine_k=ix.ivf_refine_k)

    def version_of(self, loaded: IndexedCorpus) -> str:
        return loaded.version

    def describe(self, loaded: IndexedCorpus) -> str:
        return f"({loaded.n_docs} documents)"

    def refresh_all(self) -> dict[str, str]:
        swapped = self.refresh()
        if self.verifier is not None:
            swapped.update({f"verifier:{d}": v for d, v in self.verifier.refresh().items()})
        return swapped

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
        stage = self.recall_stage(query, k, domain, verify, mode, doc_id)
        verified = None
        if stage.request is not None and self.verifier is not None:
            verified = self.verifier.verify_batch([stage.request])[0]
        return self.finish(stage, verified)

    def recall_stage(self, query: str, k: int = 10, domain: str | None = None, verify: bool = True,
                     mode: str = "chunks", doc_id: str | None = None) -> RecallStage:
        """Validate, encode, recall. With verify (chunks mode, whole corpus), recall goes to the verify
        depth and `request` holds what the verify stage needs; `finish` composes the answer."""
        t0 = time.perf_counter()
        query = (query or "").strip()
        if not query:
            raise ValueError("query is empty")
        if len(query) > self.settings.serve.max_query_chars:
            raise ValueError(f"query is {len(query)} characters; the limit is {self.settings.serve.max_query_chars}")
        if not 1 <= k <= self.settings.serve.max_k:
            raise ValueError(f"k must be in 1..{self.settings.serve.max_k}, got {k}")
        name = self.resolve_domain(domain)
        corpus = self.get(name)
        v = self.settings.verify
        stage = RecallStage(t0=t0, corpus=corpus, domain=name, mode=mode, k=k, requested=verify)
        if verify and not v.enabled:
            stage.reason = "verification is disabled in this configuration (verify.enabled = false)"
        elif verify and (mode != "chunks" or doc_id is not None):
            stage.reason = "the verifier reranks whole-corpus chunk search only (mode 'chunks', no doc_id)"
        elif verify and not self._own_verifier(name):
            # no verifier of its own: the ranker chosen for it on its held-out self-supervised queries serves
            stage.choice = self.ranker_choice(name)
            ranker = (stage.choice or {}).get("ranker", "pooled_cosine")
            general = ((stage.choice or {}).get("verifier") or {}).get("domain")
            if ranker == "fusion":
                return self._fusion(stage, query)
            if self.verifier is not None:
                unavailable = ranker == "pooled_cosine" or bool(general and not self.verifier.has(general))
            else:  # the Ray app: its verifier deployment decides, unless pooled cosine was chosen outright
                unavailable = stage.choice is not None and ranker == "pooled_cosine"
            if unavailable and ranker == "pooled_cosine" and stage.choice is not None:
                stage.reason = self._why(stage)  # recall's order is the chosen ranker's
            elif unavailable:
                stage.reason = f"no verifier is published for domain {name!r}: results are recall only"
                if stage.choice is not None:
                    stage.reason += (f" (the chosen {ranker} is not loaded; the choice: {stage.choice['reason']})")
        if verify and stage.reason is None:
            t1 = time.perf_counter()
            qpieces = self.encoder.query_ids([query])[0]  # tokenized once: the encoder and the lexical features
            qvec, qtok = self.encoder.encode_ids([qpieces], want_tokens=True, role="query")
            t2 = time.perf_counter()
            hits = search_vectors(corpus, qvec, max(k, v.candidates))[0]
            stage.timings = {"encode": (t2 - t1) * 1e3, "recall": (time.perf_counter() - t2) * 1e3}
            stage.hits = hits
            # the verifier reads at most `verify.candidates` (the cost of a request is bounded whatever k is);
            # hits beyond them follow in recall order (`finish`)
            head = hits[:v.candidates]
            stage.request = VerifyRequest(domain=name, index_version=corpus.version,
                                          qtok=qtok[0].astype(np.float32), qpieces=list(qpieces),
                                          doc_ids=[h.doc_id for h in head],
                                          recall=np.asarray([h.recall_score for h in head], np.float32))
            if stage.choice is not None:  # no verifier of its own: the chosen ranker reranks recall's list
                stage.request.ranker = "maxsim" if stage.choice["ranker"] == "maxsim" else "verifier"
                stage.request.verifier_domain = (stage.choice.get("verifier") or {}).get("domain")
            return stage
        m = self.settings.maps
        params = MapParamsSearch(top_r=m.route_top_r, map_weight=m.map_weight, alpha=m.alpha, gamma=m.gamma,
                                 tau=m.tau)
        hits, timings = search_texts(self.encoder, corpus, [query], k, mode=mode, doc_id=doc_id, params=params)
        stage.hits, stage.timings = hits[0], timings
        return stage

    def _own_verifier(self, domain: str) -> bool:
        if self.verifier is not None:
            return self.verifier.has(domain)
        try:  # the Ray app's search replica
            return verifier_store(self.root).current(domain) is not None
        except (OSError, ValueError):  # an unusable CURRENT: the verifier deployment decides (it may hold one)
            return True

    def ranker_choice(self, domain: str) -> dict | None:
        """The domain's published ranker choice (storage/rankers.py), re-read when its CURRENT pointer moves;
        None where none is published or it names dense recall alone."""
        cached = self._choices.get(domain)
        try:
            version = ranker_store(self.root).current(domain)
            if version is None:
                return None
            if cached is None or cached[0] != version:
                cached = (version, load_choice(self.root, domain, version))
                self._choices[domain] = cached
            self.choice_errors.pop(domain, None)
        except (OSError, ValueError, RuntimeError) as e:  # a damaged choice costs only itself: keep the last good
            self.choice_errors[domain] = f"ranker choice unusable ({type(e).__name__}: {e})" + (
                f"; serving the previous choice {cached[0]}" if cached else "; serving recall order")
            return cached[1] if cached else None
        return cached[1]

    def _fusion(self, stage: RecallStage, query: str) -> RecallStage:
        """Reciprocal-rank fusion of BM25 over the domain's live documents and dense recall (each one's top
        100), the domain's chosen ranker; hits keep their recall scores, `score` is the fused one."""
        corpus, k = stage.corpus, stage.k
        t1 = time.perf_counter()
        cached = self._bm25.get(stage.domain)
        if cached is None or cached[0] != corpus.version:
            docs = DocumentStore(self.root).read(stage.domain, include_deleted=False)
            cached = (corpus.version, BM25(docs["doc_id"].to_pylist(), [doc_text(t or "", x) for t, x in zip(
                docs["title"].to_pylist(), docs["text"].to_pylist(), strict=True)]))
            self._bm25[stage.domain] = cached
        depth = max(k, 100)
        qvec = self.encoder.encode_queries([query])
        t2 = time.perf_counter()
        dense = search_vectors(corpus, qvec, depth)[0]
        lex = cached[1].search([query], depth)[0]
        rows = corpus.searcher.rows_by_doc
        fused = [(d, s) for d, s in rrf([[d for d, _ in lex if d in rows], [h.doc_id for h in dense]], depth)][:k]
        by_id = {h.doc_id: h for h in dense}
        missing = [d for d, _ in fused if d not in by_id]
        # BM25's own finds: their best chunk under the dense query, as recall would show them
        for d, sc in zip(missing, corpus.searcher.best_chunk_scores(qvec[0], missing), strict=True):
            r = int(rows[d][np.argmax(corpus.searcher.index.reconstruct_batch(rows[d]) @ qvec[0])])
            by_id[d] = Hit(d, float(sc), float(sc), corpus.titles[r], corpus.snippets[r], int(corpus.chunk_idx[r]))
        stage.hits = [replace(by_id[d], score=float(s)) for d, s in fused]
        stage.timings = {"encode": (t2 - t1) * 1e3, "recall": (time.perf_counter() - t2) * 1e3}
        stage.reason = None
        return stage

    def finish(self, stage: RecallStage, verified: dict | None) -> dict:
        """The response: verified order when the verify stage applied, recall order otherwise."""
        hits, timings, k = stage.hits, dict(stage.timings), stage.k
        info = {"requested": stage.requested, "applied": False}
        if stage.request is not None and verified and verified.get("applied"):
            scores = verified["scores"]
            order = np.argsort(-np.asarray(scores), kind="stable")[:k]
            hits = [replace(hits[i], score=float(scores[i])) for i in order] + hits[len(scores):k]
            timings.update(verified["timings_ms"])
            info.update(applied=True, verifier_version=verified["verifier_version"], candidates=len(scores),
                        verified=verified.get("verified", len(scores)))
            if verified.get("verifier_domain", stage.domain) != stage.domain:
                info.update(ranker=f"verifier:{verified['verifier_domain']}",
                            verifier_domain=verified["verifier_domain"], reason=self._why(stage))
        elif stage.request is not None and verified and verified.get("ranker") == "maxsim":
            scores = verified["scores"]
            order = np.argsort(-np.asarray(scores), kind="stable")[:k]
            hits = [replace(hits[i], score=float(scores[i])) for i in order] + hits[len(scores):k]
            timings.update(verified["timings_ms"])
            info.update(ranker="maxsim", candidates=len(scores), reason=self._why(stage))
        elif stage.choice is not None and stage.request is None and stage.reason is None:  # fusion, in recall
            hits = hits[:k]
            info.update(ranker="fusion", reason=self._why(stage))
        else:
            hits = hits[:k]
            reason = (verified or {}).get("reason") or stage.reason
            if stage.requested and reason:
                info["reason"] = reason
            if stage.requested and stage.request is None and (stage.choice or {}).get("ranker") == "pooled_cosine":
                info["ranker"] = "pooled_cosine"
        timings["total"] = (time.perf_counter() - stage.t0) * 1e3
        return {
            "index_version": stage.corpus.version,
            "domain": stage.domain,
            "mode": stage.mode,
            "results": [h.as_dict() for h in hits],
            "verify": info,
            "timings_ms": {k2: round(v, 3) for k2, v in timings.items()},
        }

    @staticmethod
    def _why(stage: RecallStage) -> str:
        c = stage.choice or {}
        return (f"no verifier of its own for domain {stage.domain!r}: {c.get('ranker')} serves, chosen on its "
                f"held-out self-supervised queries ({c.get('reason')})")

    def health(self) -> dict:
        """status: "ok" (every domain with a CURRENT pointer serves), "degraded" (some domain serves
        nothing: `unavailable` says which and why), "no_index" (nothing serves). `fallback` names domains
        served from an older version than CURRENT, `bad_entries` what under indexes/ is ignored."""
        unavailable = self.unavailable()
        status = "no_index" if not self.corpora else "degraded" if unavailable else "ok"
        out = {"status": status,
               "domains": {d: c.version for d, c in sorted(self.corpora.items())},
               "errors": dict(self.errors),
               "ranker_errors": dict(self.choice_errors),
               "fallback": dict(self.fallback),
               "unavailable": unavailable,
               "bad_entries": dict(self.bad_entries)}
        if self.verifier is not None:
            vh = self.verifier.health()
            out["verifiers"] = vh["verifiers"]
            out["bad_entries"].update(vh.get("bad_entries", {}))
        return out

    def heartbeat(self) -> dict[str, dict[str, str]]:
        """What this service serves, per artifact kind (storage/replicas.py)."""
        out = {"indexes": self.served()}
        if self.verifier is not None:
            out["verifiers"] = self.verifier.served()
        return out
