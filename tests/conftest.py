"""Test session setup: a short temporary base for every data root (Ray's socket paths must stay
short), Prefect and Ray kept local, the encoder loaded once per session.

One Prefect server on loopback serves the whole session (PREFECT_API_URL), as it serves a deployment:
every flow, in this process or in a subprocess a test starts, reports to it instead of each process
starting (and migrating) a temporary server of its own."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

_BASE = Path(tempfile.mkdtemp(prefix="sst-", dir="/tmp"))
os.environ.update({
    "PREFECT_HOME": str(_BASE / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "SIDESTEP_HOME": str(_BASE / "default-root"),
})
os.environ.pop("SIDESTEP_CONFIG", None)

import pytest  # noqa: E402

from sidestep.flows.ui import LocalPrefect  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PREFECT: LocalPrefect | None = None


def pytest_configure(config):
    """Start the session's Prefect server, except in pytest-xdist's controller, which runs no test (each
    worker starts its own)."""
    global _PREFECT
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    _PREFECT = LocalPrefect(_BASE / "prefect", port=_free_port()).start(timeout=180, runner=False)
    os.environ["PREFECT_API_URL"] = _PREFECT.api_url


# Nothing this file imports may import prefect: Prefect reads its settings once, when prefect.context is
# imported, and PREFECT_API_URL is set only in pytest_configure, after this file is imported.
from sidestep.config import default_settings, load_settings  # noqa: E402
from sidestep.storage.paths import DataRoot  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_unconfigure(config):
    """Also after `pytest --help` or `--markers`, which configure but run no session."""
    if _PREFECT is not None:
        _PREFECT.stop()
    shutil.rmtree(_BASE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _cli_environment():
    """The CLI's callback writes --home and --config into os.environ (its subprocesses read them there): after a
    test that runs the CLI in this process they are put back as they were, whichever test runs next."""
    names = ("SIDESTEP_HOME", "SIDESTEP_CONFIG")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def base_dir() -> Path:
    return _BASE


@pytest.fixture
def data_root(tmp_path_factory, monkeypatch) -> DataRoot:
    """A fresh, empty data root for one test, made the process default."""
    p = Path(tempfile.mkdtemp(prefix="r-", dir=_BASE))
    monkeypatch.setenv("SIDESTEP_HOME", str(p))
    monkeypatch.delenv("SIDESTEP_CONFIG", raising=False)  # a CLI call's --config is undone by _cli_environment
    return DataRoot(p)


@pytest.fixture(scope="session")
def settings():
    return default_settings()


@pytest.fixture(scope="session")
def encoder(settings):
    """The real all-MiniLM-L6-v2, loaded once; the same object the pipeline's steps use in this process."""
    from sidestep.pipeline.common import encoder_for

    return encoder_for(settings)


def write_config(path: Path, body: str):
    path.write_text(body)
    return load_settings(path)


@pytest.fixture(scope="session")
def sample(encoder) -> SimpleNamespace:
    """A data root holding the sample corpus, reindexed once by the real nightly Prefect flow."""
    from sidestep.flows.reindex import nightly_reindex

    root = DataRoot(Path(tempfile.mkdtemp(prefix="sample-", dir=_BASE)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDESTEP_HOME", str(root.root))
        mp.delenv("SIDESTEP_CONFIG", raising=False)
        summary = nightly_reindex()
    assert not summary["failed"], summary["failed"]
    return SimpleNamespace(root=root, summary=summary)
