"""What every task needs: settings, the data root, the retry policies; the encoder comes from the pipeline."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from sidestep.config import Settings, load_settings
from sidestep.pipeline.common import encoder_for
from sidestep.storage.paths import DataRoot
from sidestep.storage.rootcheck import check_root

__all__ = ["RETRY", "TRAIN_RETRY", "encoder_for", "root_from", "settings_from"]

# Tasks that touch files or models: transient failures (a busy disk, a file another process is replacing)
# are retried twice, 2 s then 4 s later, with jitter so that parallel runs do not retry in step.
RETRY = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}
# Training runs are long: one retry, after 10 s.
TRAIN_RETRY = {"retries": 1, "retry_delay_seconds": 10}


def settings_from(config_path: str | None) -> Settings:
    return load_settings(config_path)


def root_from(settings: Settings) -> DataRoot:
    """The data root every writing flow uses, probed once per process (atomic rename, fsync, flock)."""
    root = DataRoot.from_settings(settings)
    check_root(root.root)
    return root
