"""Embed: encode only documents whose content hash is not cached yet, in immutable shards."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sidestep.config import Settings
from sidestep.results import EmbedReport
from sidestep.storage.documents import DocumentStore
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.paths import DataRoot
from sidestep.text.encoder import encoder_key, model_dim

from .common import encoder_for

SHARD_DOCS = 512
NO_PROGRESS_ENV = "SIDESTEP_NO_PROGRESS"


def embed_domain(root: DataRoot, settings: Settings, domain: str, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None) -> EmbedReport:
    docs = DocumentStore(root).read(domain, include_deleted=False)
    key = encoder_key(settings.encoder.model_path)
    store = EmbeddingStore(root, key, model_dim(settings.encoder.model_path))
    known = store.known()
    todo = docs.filter(pc.invert(pc.is_in(docs["content_hash"], value_set=_arr(known))))
    # one entry per distinct content (two ids with the same text are encoded once)
    seen: dict[str, tuple[str, str, str]] = {}
    for h, t, x in zip(todo["content_hash"].to_pylist(), todo["title"].to_pylist(), todo["text"].to_pylist(),
                       strict=True):
        seen.setdefault(h, (h, t, x))
    pending = list(seen.values())
    t0 = time.perf_counter()
    chunks = 0
    if pending:
        enc = encoder_for(settings)
        ch = settings.chunking
        with _progress(show_progress) as bar:
            job = bar.add_task(f"embed {domain}", total=len(pending))
            for s in range(0, len(pending), SHARD_DOCS):
                batch = pending[s:s + SHARD_DOCS]
                encoded = enc.encode_documents(batch, window_tokens=ch.window_tokens, overlap_tokens=ch.overlap_tokens,
                                               max_chunks=ch.max_chunks_per_doc,
                                               progress=lambda n: bar.advance(job, n))
                info = store.write(encoded)
                chunks += info.rows
                done, el = s + len(batch), time.perf_counter() - t0
                if log:
                    log(f"embed {domain}: {done}/{len(pending)} documents, {chunks} chunks, "
                        f"{done / el:.1f} docs/s, shard {info.shard}")
    seconds = time.perf_counter() - t0
    return EmbedReport(domain=domain, encoder=key, documents=docs.num_rows, encoded=len(pending),
                       reused=docs.num_rows - todo.num_rows, chunks_encoded=chunks, seconds=round(seconds, 3),
                       docs_per_s=round(len(pending) / seconds, 2) if pending and seconds > 0 else None)


def _arr(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _progress(enabled: bool) -> Progress:
    """A progress bar on the terminal; off when logs go to a shipper as JSON (`sidestep --log-json`)."""
    enabled = enabled and not os.environ.get(NO_PROGRESS_ENV)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)
