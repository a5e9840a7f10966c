"""IVF-PQ version files: shards merged on disk, memory-mapped back, equal to the in-memory index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sidestep.retrieval.ivfpq import RerankedIndex, encode_shards, merge_shards, train_ivfpq
from sidestep.storage.ivf import IVF_DATA, VECTORS, is_ivf, read_ivfpq, read_trained, write_ivfpq


@pytest.fixture(autouse=True)
def one_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


def _data(n=6000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((100, dim)).astype(np.float32)
    x = c[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    faiss.normalize_L2(x)
    return x, x[rng.choice(n, 50, replace=False)] + 0.01


def test_on_disk_merge_is_memory_mapped_and_equals_in_memory(tmp_path, capfd):
    x, q = _data()
    trained = train_ivfpq(x[:3000], 32, 8)
    shards = encode_shards(trained, x, 1000, workers=2)
    memory = RerankedIndex(merge_shards(trained, [faiss.clone_index(s) for s in shards]), x, nprobe=8, refine_k=40)
    (tmp_path / "v1").mkdir()
    sizes = write_ivfpq(tmp_path / "v1", trained, shards, x)
    assert is_ivf(tmp_path / "v1") and sizes[IVF_DATA] > 0 and sizes[VECTORS] >= x.nbytes
    # the version folder moves after it is written (staging -> published): the lists are found beside it
    (tmp_path / "v1").rename(tmp_path / "published")
    disk = read_ivfpq(tmp_path / "published", nprobe=8, refine_k=40)
    assert isinstance(disk.vectors, np.memmap)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(disk.ivf).invlists),
                      faiss.OnDiskInvertedLists)
    a, b = memory.search(q, 10), disk.search(q, 10)
    assert (a[1] == b[1]).all() and np.array_equal(a[0], b[0])
    assert read_trained(tmp_path / "published").ntotal == 0
    assert not (tmp_path / "published" / ".shards").exists()
    assert capfd.readouterr().out == ""  # faiss's progress lines stay off stdout (--json goes there)
