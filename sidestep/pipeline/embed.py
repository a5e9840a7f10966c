"""Embed: encode only documents whose content hash is not cached yet, in immutable shards.

The plan (what to encode) and one shard's work (encode a batch, write its shard) are separate functions so
that the same code runs in this process or inside a Ray Data encoder actor (tasks/cluster.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sidestep.config import Settings
from sidestep.results import EmbedReport
from sidestep.storage.documents import DocumentStore
from sidestep.storage.embeddings import EmbeddingStore, ShardInfo
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import encoder_key, model_dim

from .common import encoder_for

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
    key = encoder_key(settings.encoder.model_path)
    dim = model_dim(settings.encoder.model_path)
    known = EmbeddingStore(root, key, dim).known()
    todo = docs.filter(pc.invert(pc.is_in(docs["content_hash"], value_set=_arr(known))))
    # one entry per distinct content (two ids with the same text are encoded once)
    seen: dict[str, Doc] = {}
    for h, t, x in zip(todo["content_hash"].to_pylist(), todo["title"].to_pylist(), todo["text"].to_pylist(),
                       strict=True):
        seen.setdefault(h, (h, t, x))
    return EmbedPlan(domain, key, dim, docs.num_rows, docs.num_rows - todo.num_rows, list(seen.values()))


def encode_shard(settings: Settings, store: EmbeddingStore, batch: Sequence[Doc],
                 progress: Callable[[int], None] | None = None) -> ShardInfo:
    """Chunk and encode one batch of documents and write it as one immutable shard."""
    ch = settings.chunking
    encoded = encoder_for(settings).encode_documents(batch, window_tokens=ch.window_tokens,
                                                     overlap_tokens=ch.overlap_tokens,
                                                     max_chunks=ch.max_chunks_per_doc, progress=progress)
    return store.write(encoded)


def embed_report(plan: EmbedPlan, chunks: int, seconds: float, **extra) -> EmbedReport:
    n = len(plan.pending)
    return EmbedReport(domain=plan.domain, encoder=plan.key, documents=plan.documents, encoded=n,
                       reused=plan.reused, chunks_encoded=chunks, seconds=round(seconds, 3),
                       docs_per_s=round(n / seconds, 2) if n and seconds > 0 else None, **extra)


def embed_domain(root: DataRoot, settings: Settings, domain: str, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None) -> EmbedReport:
    plan = plan_embed(root, settings, domain)
    pending = plan.pending
    store = EmbeddingStore(root, plan.key, plan.dim)
    t0 = time.perf_counter()
    chunks = 0
    if pending:
        with _progress(show_progress) as bar:
            job = bar.add_task(f"embed {domain}", total=len(pending))
            for s in range(0, len(pending), SHARD_DOCS):
                batch = pending[s:s + SHARD_DOCS]
                info = encode_shard(settings, store, batch, progress=lambda n: bar.advance(job, n))
                chunks += info.rows
                done, el = s + len(batch), time.perf_counter() - t0
                if log:
                    log(f"embed {domain}: {done}/{len(pending)} documents, {chunks} chunks, "
                        f"{done / el:.1f} docs/s, shard {info.shard}")
    return embed_report(plan, chunks, time.perf_counter() - t0)


def _arr(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _progress(enabled: bool) -> Progress:
    """A progress bar on the terminal; off when logs go to a shipper as JSON (`sidestep --log-json`)."""
    enabled = enabled and not os.environ.get(NO_PROGRESS_ENV)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)
