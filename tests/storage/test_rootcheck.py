"""A data root that cannot give atomic rename / fsync / flock is refused with a clear error before any write."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sidestep
from sidestep.cli import app
from sidestep.storage import rootcheck
from sidestep.storage.paths import DataRoot
from sidestep.storage.rootcheck import DataRootError, check_root

CI = os.environ.get("CI", "").lower() == "true"


@contextlib.contextmanager
def read_only_dir(tmp_path: Path):
    """A folder nobody can write: a read-only tmpfs as root (root ignores permission bits), mode 0555 otherwise."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        if CI:
            pytest.fail(f"cannot mount a read-only tmpfs as root: {r.stderr}")
        pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_a_writable_root_passes_and_leaves_nothing(tmp_path):
    root = tmp_path / "new" / "root"
    assert check_root(root) == root.resolve()
    assert root.is_dir() and list(root.iterdir()) == []


def test_a_file_is_not_a_root(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(DataRootError, match="is not a directory"):
        check_root(f)
    with pytest.raises(DataRootError, match="is not a directory"):
        sidestep.open(f).reindex()


@pytest.mark.parametrize("url", ["s3://bucket/sidestep", "gs://b/x", "file:///tmp/x"])
def test_a_url_is_refused_everywhere(url, monkeypatch):
    with pytest.raises(DataRootError, match="not supported"):
        check_root(url)
    with pytest.raises(DataRootError, match="not supported"):
        DataRoot.from_settings(None, override=url)
    monkeypatch.setenv("SIDESTEP_HOME", url)
    with pytest.raises(DataRootError, match="atomic rename"):
        sidestep.open()


def test_cli_refuses_an_s3_home_with_exit_2():
    r = CliRunner().invoke(app, ["--home", "s3://bucket/x", "reindex"])
    assert r.exit_code == 2, r.output
    assert "object storage" in r.output
    cli = Path(sys.executable).with_name("sidestep")
    p = subprocess.run([str(cli), "--home", "s3://bucket/x", "reindex", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert "object storage" in json.loads(p.stdout)["error"]


def test_a_read_only_root_is_refused_before_any_flow(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("sidestep.flows.reindex.nightly_reindex", lambda **kw: calls.append(kw))
    with read_only_dir(tmp_path) as d:
        with pytest.raises(DataRootError, match=r"could not write and fsync a file \(Read-only file system|"
                                                r"could not write and fsync a file \(Permission denied"):
            check_root(d)
        assert d.resolve() not in rootcheck._probed
        with pytest.raises(DataRootError, match="cannot be written safely"):
            sidestep.open(d).reindex()
    assert calls == []  # refused before the flow started
