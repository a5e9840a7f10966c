"""faiss's nearest-centroid searches through BLAS whatever the number of query vectors.

faiss computes distances with BLAS only from `distance_compute_blas_threshold` query vectors on (128,000 in
faiss 1.15); below that it uses its own kernels, which are fast only for some vector widths. k-means and PQ
encoding over narrow sub-spaces ran several times slower on them here (sidestep.retrieval.ivfpq,
storage.tokens). The threshold is one process-wide global, so it is set for a block and restored under a lock:
two threads that each saved and restored it could otherwise leave the lowered value in place for good.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss

_LOCK = threading.RLock()


@contextmanager
def blas_assignment(threshold: int = 20) -> Iterator[None]:
    """faiss's distance computations through BLAS from `threshold` query vectors on, inside the block."""
    with _LOCK:
        saved = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = threshold
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = saved
