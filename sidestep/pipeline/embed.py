"""Embed: encode only documents whose content hash is not cached yet, in immutable shards.

A reader thread tokenizes and chunks the next shard's documents while the current one is encoded (the
encoder's graph runs outside the GIL), one shard ahead, so reading and tokenizing overlap encoding.
The plan (what to encode) and one shard's work (encode a batch, write its shard) are separate functions so
that the same code runs in this process or inside a Ray Data encoder actor (tasks/cluster.py)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sidestep.config import Settings
from sidestep.docmaps.sentences import split_sentences
from sidestep.results import EmbedReport
from sidestep.storage.documents import DocumentStore
from sidestep.storage.embeddings import EmbeddingStore, ShardInfo
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import model_dim

from .common import encoder_for, store_key

SHARD_DOCS = 512
NO_PROGRESS_ENV = "SIDESTEP_NO_PROGRESS"

Doc = tuple[str, str | None, str]  # (content_hash, title, text)


@dataclass
class EmbedPlan:
    """A domain's live documents, and the distinct contents among them that no shard holds yet."""

    domain: str
    key: str
    dim: int
    documents: int
    reused: int
    pending: list[Doc]


def plan_embed(root: DataRoot, settings: Settings, domain: str) -> EmbedPlan:
    docs = DocumentStore(root).read(domain, include_deleted=False)
    key = store_key(settings)
    dim = model_dim(settings.encoder.model_path)
    known = EmbeddingStore(root, key, dim).known()
    todo = docs.filter(pc.invert(pc.is_in(docs["content_hash"], value_set=_arr(known))))
    # one entry per distinct content (two ids with the same text are encoded once)
    seen: dict[str, Doc] = {}
    for h, t, x in zip(todo["content_hash"].to_pylist(), todo["title"].to_pylist(), todo["text"].to_pylist(),
                       strict=True):
        seen.setdefault(h, (h, t, x))
    return EmbedPlan(domain, key, dim, docs.num_rows, docs.num_rows - todo.num_rows, list(seen.values()))


def sentence_splitter(settings: Settings) -> Callable[[str], list[tuple[int, int]]] | None:
    """Sentence spans of a text where chunks follow sentences ([chunking] boundaries), else None."""
    return split_sentences if settings.chunking.boundaries == "sentences" else None


def encode_shard(settings: Settings, store: EmbeddingStore, batch: Sequence[Doc],
                 progress: Callable[[int], None] | None = None) -> ShardInfo:
    """Chunk and encode one batch of documents and write it as one immutable shard."""
    ch = settings.chunking
    encoded = encoder_for(settings).encode_documents(batch, window_tokens=ch.window_tokens,
                                                     overlap_tokens=ch.overlap_tokens,
                                                     max_chunks=ch.max_chunks_per_doc, progress=progress,
                                                     sentences=sentence_splitter(settings))
    return store.write(encoded)


def embed_report(plan: EmbedPlan, chunks: int, seconds: float, *, tokens: int = 0, **extra) -> EmbedReport:
    n = len(plan.pending)
    rate = n and seconds > 0
    return EmbedReport(domain=plan.domain, encoder=plan.key, documents=plan.documents, encoded=n,
                       reused=plan.reused, chunks_encoded=chunks, seconds=round(seconds, 3),
                       docs_per_s=round(n / seconds, 2) if rate else None, tokens_encoded=tokens,
                       tokens_per_s=round(tokens / seconds, 1) if rate and tokens else None, **extra)


def embed_domain(root: DataRoot, settings: Settings, domain: str, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None) -> EmbedReport:
    plan = plan_embed(root, settings, domain)
    pending = plan.pending
    store = EmbeddingStore(root, plan.key, plan.dim)
    t0 = time.perf_counter()
    chunks = tokens = 0
    backend = None
    if pending:
        enc = encoder_for(settings)
        backend = enc.prepare_documents(len(pending))
        ch = settings.chunking
        with _progress(show_progress) as bar:
            job = bar.add_task(f"embed {domain}", total=len(pending))
            shards = [pending[s:s + SHARD_DOCS] for s in range(0, len(pending), SHARD_DOCS)]
            done = 0

            def plan_shard(batch):
                return enc.plan_documents(batch, window_tokens=ch.window_tokens, overlap_tokens=ch.overlap_tokens,
                                          max_chunks=ch.max_chunks_per_doc, sentences=sentence_splitter(settings))

            for batch, planned in _ahead(shards, plan_shard):
                encoded = enc.encode_plan(planned, progress=lambda n: bar.advance(job, n))
                info = store.write(encoded)
                chunks += info.rows
                tokens += planned.tokens
                done, el = done + len(batch), time.perf_counter() - t0
                if log:
                    log(f"embed {domain}: {done}/{len(pending)} documents, {chunks} chunks, "
                        f"{done / el:.1f} docs/s, {tokens / el:.0f} tokens/s ({backend}), shard {info.shard}")
    return embed_report(plan, chunks, time.perf_counter() - t0, tokens=tokens, backend=backend)


def _ahead(items: list, fn: Callable, depth: int = 1):
    """(item, fn(item)) for each item, in order, with fn computed on a reader thread up to `depth` items
    ahead of the consumer. An exception in fn is raised to the consumer at that item; a consumer that
    stops early stops the reader."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        for item in items:
            if stop.is_set():
                return
            try:
                out = (item, fn(item), None)
            except BaseException as e:  # handed to the consumer, which raises it
                out = (item, None, e)
            while not stop.is_set():
                try:
                    q.put(out, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if out[2] is not None:
                return

    t = threading.Thread(target=reader, name="embed-reader", daemon=True)
    t.start()
    try:
        for _ in items:
            item, result, err = q.get()
            if err is not None:
                raise err
            yield item, result
    finally:
        stop.set()
        t.join()


def _arr(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _progress(enabled: bool) -> Progress:
    """A progress bar on the terminal; off when logs go to a shipper as JSON (`sidestep --log-json`)."""
    enabled = enabled and not os.environ.get(NO_PROGRESS_ENV)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)
