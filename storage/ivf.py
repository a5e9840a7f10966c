"""IVF-PQ index versions on disk: shards merged into one memory-mapped inverted-list file.

A version folder holds `index.faiss` (the trained quantizer and the list directory), `index.ivfdata`
(every list's codes and ids, written by faiss's OnDiskInvertedLists from the shard indexes, so the merged
lists never need to fit in memory), `ivf_trained.faiss` (the same quantizer with no lists: what the next
version starts from between refits) and `vectors.npy` (the full float32 vectors the candidates are
re-ranked against). A search replica maps both large files (IO_FLAG_MMAP, np.load(mmap_mode="r")): the
operating system pages in the lists and rows a query touches, and replicas on one host share the pages.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from sidestep.retrieval.ivfpq import RerankedIndex

from .atomic import fsync_file, write_with

IVF_INDEX = "index.faiss"
IVF_DATA = "index.ivfdata"
IVF_TRAINED = "ivf_trained.faiss"
VECTORS = "vectors.npy"


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """faiss's on-disk lists print progress with C printf; keep it off stdout (where --json goes)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def is_ivf(folder: Path) -> bool:
    return (folder / IVF_DATA).is_file()


def save_vectors(path: Path, vectors: np.ndarray) -> None:
    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))

    write_with(path, _save)


def write_ivfpq(folder: Path, trained: faiss.Index, shards: Sequence[faiss.Index], vectors: np.ndarray | None
                ) -> dict:
    """Merge `shards` (encoded by sidestep.retrieval.ivfpq.encode_shards) into `folder`'s on-disk lists and
    write the re-rank vectors (None: the caller already wrote `folder/vectors.npy`). Returns file sizes."""
    work = folder / ".shards"
    work.mkdir(parents=True, exist_ok=True)
    try:
        names = []
        for i, s in enumerate(shards):
            names.append(str(work / f"{i:05d}.faiss"))
            faiss.write_index(s, names[-1])
        merged = faiss.clone_index(trained)
        with stdout_to_stderr():
            merge_ondisk(merged, names, str(folder / IVF_DATA))
        fsync_file(folder / IVF_DATA)
        write_with(folder / IVF_INDEX, lambda tmp: faiss.write_index(merged, str(tmp)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_with(folder / IVF_TRAINED, lambda tmp: faiss.write_index(trained, str(tmp)))
    if vectors is not None:
        save_vectors(folder / VECTORS, vectors)
    return {f: (folder / f).stat().st_size for f in (IVF_INDEX, IVF_DATA, IVF_TRAINED, VECTORS)}


def read_ivfpq(folder: Path, *, nprobe: int = 32, refine_k: int = 100) -> RerankedIndex:
    """The version's IVF-PQ index with its re-rank vectors, both memory-mapped read-only.

    The lists are an OnDiskInvertedLists, which maps `index.ivfdata` itself; IO_FLAG_MMAP on top of it
    crashes faiss 1.15.1's search (segmentation fault), so the flags are read-only + same folder (the
    file name inside `index.faiss` is the staging folder's; the version folder is where it lives now)."""
    with stdout_to_stderr():
        ivf = faiss.read_index(str(folder / IVF_INDEX), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    vectors = np.load(folder / VECTORS, mmap_mode="r")
    return RerankedIndex(ivf, vectors, nprobe=nprobe, refine_k=refine_k)


def read_trained(folder: Path) -> faiss.Index | None:
    """A version's trained, empty quantizer (None when the version is not IVF-PQ)."""
    p = folder / IVF_TRAINED
    return faiss.read_index(str(p)) if p.is_file() else None
