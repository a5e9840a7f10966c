"""What every task needs: settings, the data root, the encoder (loaded once per process)."""

from __future__ import annotations

import functools

from prefect.tasks import exponential_backoff
from sidestep.storage.paths import DataRoot

from sidestep.config import Settings, load_settings
from sidestep.text.encoder import Encoder

# Tasks that touch files or models: transient failures (a busy disk, a file another process is replacing)
# are retried twice, 2 s then 4 s later, with jitter so that parallel runs do not retry in step.
RETRY = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}
# Training runs are long: one retry, after 10 s.
TRAIN_RETRY = {"retries": 1, "retry_delay_seconds": 10}


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
