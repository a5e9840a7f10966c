"""Is this data root one that sidestep can write safely? Checked once per process before any writing command.

Every write under the data root is `write a temporary file, fsync it, os.replace it onto its name, fsync the
folder` (storage/atomic.py); a publish also renames a staging folder onto its version name, and ingest and
publish serialise on an flock. A root that cannot do these (a URL, a file, a read-only mount, a file system
without atomic rename or flock) would lose the guarantee that a crash leaves the last good version serving,
so it is refused with a clear error before anything is written. docs/data-root.md says which operation needs
what.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from pathlib import Path

# "s3://bucket", "gs://b", "file:///x"; pathlib folds "//" to "/", so "s3:/bucket" is a URL too
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
_probed: set[Path] = set()


class DataRootError(ValueError):
    """The data root cannot give what sidestep's writes need (atomic rename, fsync, flock)."""


def url_scheme(raw: str | os.PathLike) -> str | None:
    m = _SCHEME.match(str(raw))
    return m.group(1).lower() if m else None


def refuse_url(raw: str | os.PathLike) -> None:
    """A URL is not a data root: object stores have no atomic rename and no fsync of a folder."""
    scheme = url_scheme(raw)
    if scheme is None:
        return
    raise DataRootError(
        f"data root {str(raw)!r} is a {scheme}:// URL; object storage (s3://, gs://, az://, any fsspec URL) is not "
        "supported: publishing needs an atomic rename and fsync, which object stores do not give. Use a local "
        "path, or a shared POSIX file system (NFS, CephFS, Lustre, EFS, ...) mounted at the same path on every "
        "node" + (" (write the path without file://)" if scheme == "file" else "") + ". See docs/data-root.md.")


def check_root(root: str | os.PathLike) -> Path:
    """Probe ROOT once per process: create it if missing, then write a file, fsync it, os.replace it over
    another, fsync the folder, read the survivor back, take and release an flock. Raises DataRootError naming
    the step that failed; returns the resolved root."""
    refuse_url(root)
    path = Path(root).expanduser().resolve()
    if path in _probed:
        return path
    if path.exists() and not path.is_dir():
        raise DataRootError(f"data root {path} exists and is not a directory; point --home / $SIDESTEP_HOME / "
                            "data_root at a folder (it is created if missing). See docs/data-root.md.")
    step = "create the folder"
    tag = uuid.uuid4().hex[:12]
    a, b = path / f".sidestep-probe-{tag}.a", path / f".sidestep-probe-{tag}.b"
    try:
        path.mkdir(parents=True, exist_ok=True)
        step = "write and fsync a file"
        for p, data in ((a, b"old"), (b, b"new")):
            with open(p, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        step = "os.replace one file over another"
        os.replace(b, a)
        step = "fsync the folder"
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "read the replaced file back"
        if a.read_bytes() != b"new" or b.exists():
            raise OSError("os.replace did not atomically replace the target (old content or the source remains)")
        step = "take an flock"
        with open(a, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError as e:
        reason = e.strerror or str(e)
        raise DataRootError(f"data root {path} cannot be written safely: could not {step} ({reason}). sidestep "
                            "needs a writable local path or shared POSIX file system with atomic rename, fsync and "
                            "flock; a read-only mount can only be searched. See docs/data-root.md.") from e
    finally:
        for p in (a, b):
            with contextlib.suppress(OSError):
                p.unlink()
    _probed.add(path)
    return path
