"""Crash-safe writes: write to a temporary name, fsync, os.replace, fsync the folder.

A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FAULT_ENV = "SIDESTEP_FAULT_POINT"


def fault_point(name: str) -> None:
    """Crash tests set $SIDESTEP_FAULT_POINT=<name>; reaching it writes a marker and hangs until killed.

    This lets a test kill -9 the process at an exact point of a publish, which is
    the only honest way to prove that a crash leaves the old state intact.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or wanted != name:
        return
    marker = os.environ.get(FAULT_ENV + "_MARKER")
    if marker:
        Path(marker).write_text(name)
    while True:  # pragma: no cover - the test kills us here
        time.sleep(0.5)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and os.replace it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_parquet(path: Path, table: pa.Table, verify: bool = True) -> None:
    """Write a Parquet file atomically and, if asked, re-read its metadata before replacing."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        if verify:
            rows = pq.ParquetFile(tmp).metadata.num_rows
            if rows != table.num_rows:
                raise OSError(f"parquet verify failed for {path}: wrote {table.num_rows} rows, read {rows}")


LOW_SPACE_BYTES = 1 << 20


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through a library's own writer (faiss, numpy). Libraries report a full disk in their
    own words (faiss: "write error", numpy: "N requested and M written"); it is turned back into ENOSPC so
    that the cause is plain. Free space is read while the partial file still exists, before it is removed."""
    with atomic_path(path) as tmp:
        try:
            writer(tmp)
        except Exception as e:
            if getattr(e, "errno", None) == errno.ENOSPC:
                raise
            free = shutil.disk_usage(path.parent).free
            if free < LOW_SPACE_BYTES:
                raise OSError(errno.ENOSPC, f"no space left on device writing {path.name} ({free} bytes free "
                                            f"in {path.parent}): {e}") from e
            raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
