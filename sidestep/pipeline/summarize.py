"""Summarize: build each document's map (sections → summaries → global summary) from the token
vectors the embed step stored, cached by content hash; a failed map is quarantined, and the
document stays searchable without it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sidestep.config import Settings
from sidestep.docmaps.docmap import MapError, MapParams
from sidestep.docmaps.maps import embed_maps, map_encoded
from sidestep.docmaps.summarizers import ExtractiveSummarizer, LLMSummarizer
from sidestep.fingerprint import digest
from sidestep.ingest.records import BadRecord
from sidestep.results import SummarizeReport
from sidestep.storage.documents import DocumentStore, QuarantineStore
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.maps import MapStore, encoded_docs
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import doc_text, model_dim

from .common import encoder_for, store_key

BATCH = 256


def summarizer_for(settings: Settings):
    m = settings.maps
    if m.summarizer == "llm":
        if not m.llm_endpoint or not m.llm_model:
            raise ValueError("maps.summarizer = 'llm' needs maps.llm_endpoint and maps.llm_model")
        return LLMSummarizer(m.llm_endpoint, m.llm_model, api_key_env=m.llm_api_key_env)
    return ExtractiveSummarizer()


def map_params(settings: Settings) -> MapParams:
    m = settings.maps
    return MapParams(section_budget_chars=m.section_budget_chars, global_budget_chars=m.global_budget_chars)


def map_key(settings: Settings) -> str:
    """Maps depend on the encoder (token vectors), the summarizer, the map sizes and which map
    vectors are stored (2: heading paths have their own)."""
    s = summarizer_for(settings)
    return s.name + "-" + digest({"encoder": store_key(settings), "summarizer": s.params(),
                                  "vectors": 2, "name": s.name, "params": map_params(settings).__dict__,
                                  "chunking": settings.chunking.identity()}, length=10)


def summarize_domain(root: DataRoot, settings: Settings, domain: str,
                     log: Callable[[str], None] | None = None) -> SummarizeReport:
    docs = DocumentStore(root).read(domain, include_deleted=False)
    if not settings.maps.enabled:
        return SummarizeReport(domain=domain, enabled=False)
    dim = model_dim(settings.encoder.model_path)
    store = MapStore(root, map_key(settings), dim)
    known = store.known()
    emb = EmbeddingStore(root, store_key(settings), dim)  # where the embed stage wrote them
    hashes = set(docs["content_hash"].to_pylist())
    wanted = map_wanted(settings, emb, hashes)
    rows = [r for r in docs.select(["doc_id", "title", "text", "content_hash"]).to_pylist()
            if r["content_hash"] not in known and r["content_hash"] in wanted]
    pending = list({r["content_hash"]: r for r in rows}.values())
    t0 = time.perf_counter()
    done, failed = 0, []
    if pending:
        enc = encoder_for(settings)
        summ, params = summarizer_for(settings), map_params(settings)
        for s in range(0, len(pending), BATCH):
            batch = pending[s:s + BATCH]
            encoded = encoded_docs(emb, [r["content_hash"] for r in batch])
            maps = []
            for r in batch:
                try:
                    if r["content_hash"] not in encoded:
                        raise MapError("no stored embeddings for this document")
                    maps.append(map_encoded(enc, encoded[r["content_hash"]], doc_text(r["title"], r["text"]),
                                            title=r["title"], summarizer=summ, params=params))
                except MapError as e:
                    failed.append(BadRecord(r["doc_id"], f"map_failed: {e.reason}", r["doc_id"],
                                            r["content_hash"]))
            store.write(maps, embed_maps(enc, maps))
            done += len(maps)
            if log:
                log(f"summarize {domain}: {s + len(batch)}/{len(pending)} documents, {len(failed)} failed")
    if failed:
        QuarantineStore(root).write(domain, f"maps-{uuid.uuid4().hex[:8]}", "summarize", failed)
    seconds = time.perf_counter() - t0
    short = sum(h not in wanted for h in docs["content_hash"].to_pylist())
    return SummarizeReport(domain=domain, enabled=True, summarizer=store.dir.name, summarized=done,
                           reused=docs.num_rows - len(rows) - short, failed=len(failed), unmapped_short=short,
                           seconds=round(seconds, 3))


def map_wanted(settings: Settings, emb: EmbeddingStore, hashes: set[str]) -> set[str]:
    """The contents that get a map: every one of at least maps.min_chunks chunks, and every one with no
    stored chunks (its map fails, and is quarantined, saying so)."""
    if settings.maps.min_chunks <= 1:
        return set(hashes)
    counts = emb.chunk_counts()
    return {h for h in hashes if counts.get(h, 0) >= settings.maps.min_chunks or h not in counts}
