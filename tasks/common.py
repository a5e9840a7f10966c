"""What every task needs: settings, the data root, the encoder (loaded once per process)."""

from __future__ import annotations

import functools

from sidestep.config import Settings, load_settings
from sidestep.encoder import Encoder
from storage.paths import DataRoot


def settings_from(config_path: str | None) -> Settings:
    return load_settings(config_path)


def root_from(settings: Settings) -> DataRoot:
    return DataRoot.from_settings(settings)


@functools.lru_cache(maxsize=2)
def _encoder(model_path: str | None, batch_size: int, num_threads: int | None, max_query_tokens: int) -> Encoder:
    return Encoder(model_path, batch_size=batch_size, num_threads=num_threads, max_query_tokens=max_query_tokens)


def encoder_for(settings: Settings) -> Encoder:
    e = settings.encoder
    return _encoder(e.model_path, e.batch_size, e.num_threads, e.max_query_tokens)
