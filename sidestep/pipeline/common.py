"""What every pipeline step needs: the encoder, loaded once per process for given settings."""

from __future__ import annotations

import functools
from collections.abc import Callable

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.text.encoder import Encoder, encoder_key

Log = Callable[[str], None]


@functools.lru_cache(maxsize=2)
def _encoder(model_path: str | None, batch_size: int, num_threads: int | None, max_query_tokens: int,
             device: str = "cpu", backend: str = "torch", quantize: str = "none",
             max_batch_tokens: int = 8192) -> Encoder:
    return Encoder(model_path, batch_size=batch_size, num_threads=num_threads, max_query_tokens=max_query_tokens,
                   device=device, backend=backend, quantize=quantize, max_batch_tokens=max_batch_tokens)


def encoder_for(settings: Settings) -> Encoder:
    e = settings.encoder
    return _encoder(e.model_path, e.batch_size, e.num_threads, e.max_query_tokens, e.device, e.backend, e.quantize,
                    e.max_batch_tokens)


def store_key(settings: Settings) -> str:
    """The key document embeddings are stored under for these settings: the encoder's (int8 vectors have
    their own), and the chunking where it is not the default, since a shard holds chunks, not documents
    (cached embeddings of another chunking are never reused as if they were this one's)."""
    key = encoder_key(settings.encoder.model_path, settings.encoder.quantize)
    if settings.chunking.is_default():
        return key
    return f"{key}-chunks-{digest(settings.chunking.identity(), length=8)}"
