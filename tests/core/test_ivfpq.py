"""IVF-PQ + exact re-rank: recall against exact search, shards, incremental add and carried codes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sidestep.retrieval.index import DocSearcher, IVFBuild, build_index
from sidestep.retrieval.ivfpq import (
    IVFPQSpec,
    RerankedIndex,
    auto_nlist,
    build_ivfpq,
    encode_shards,
    merge_shards,
    train_ivfpq,
)

DIM = 64


def clustered(n: int, seed: int, centers: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centers, DIM)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One faiss thread: results do not depend on it, and on a shared machine OpenMP's barriers cost more
    than the second thread gains."""
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture(scope="module")
def data():
    x, q = clustered(12_000, 0), clustered(200, 1)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    return x, q, truth


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_recall_against_exact_and_true_scores(data):
    x, q, truth = data
    index = build_ivfpq(x, IVFPQSpec(nlist=64, m=16, nprobe=16, refine_k=100), train_vectors=5000)
    scores, rows = index.search(q, 10)
    assert recall(rows, truth) >= 0.95
    # re-ranked scores are exact inner products, in descending order
    assert np.allclose(scores, np.einsum("qd,qkd->qk", q, x[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    # without re-ranking (PQ scores only, candidates = k) recall is worse: the re-rank is what buys it
    plain = faiss.extract_index_ivf(index.ivf)
    plain.nprobe = 16
    assert recall(plain.search(q, 10)[1], truth) < recall(rows, truth)


def test_shards_merged_equal_one_build(data):
    x, q, _ = data
    trained = train_ivfpq(x[:5000], 64, 16)
    one = merge_shards(trained, encode_shards(trained, x, len(x)))
    many = merge_shards(trained, encode_shards(trained, x, 2500, workers=2))
    assert one.ntotal == many.ntotal == len(x)
    a = RerankedIndex(one, x, nprobe=8, refine_k=50).search(q, 10)
    b = RerankedIndex(many, x, nprobe=8, refine_k=50).search(q, 10)
    assert (a[1] == b[1]).all() and np.array_equal(a[0], b[0])


def test_incremental_add_equals_a_build_on_everything(data):
    x, q, _ = data
    trained = train_ivfpq(x[:5000], 64, 16)
    grown = RerankedIndex(merge_shards(trained, encode_shards(trained, x[:8000], 4000)), x[:8000], nprobe=8)
    grown.add(x[8000:])
    whole = RerankedIndex(merge_shards(trained, encode_shards(trained, x, 4000)), x, nprobe=8)
    assert grown.ntotal == len(x)
    assert (grown.search(q, 10)[1] == whole.search(q, 10)[1]).all()


def test_carried_codes_equal_a_fresh_encode(data):
    """A rebuild between refits copies the parent's codes of unchanged rows under their new row ids and
    encodes only new rows: the result is the index a full encode with the same quantizer gives."""
    x, q, _ = data
    spec = IVFPQSpec(nlist=64, m=16, nprobe=8, refine_k=50)
    parent = build_ivfpq(x, spec, train_vectors=5000)
    rng = np.random.default_rng(5)
    gone = rng.choice(len(x), 500, replace=False)
    live = np.setdiff1d(np.arange(len(x)), gone)
    fresh_rows = clustered(700, 7)
    # the new corpus: live rows shuffled, new vectors interleaved
    order = rng.permutation(len(live) + len(fresh_rows))
    pool = np.concatenate([x[live], fresh_rows])
    new = pool[order]
    new_row = np.full(len(x), -1, np.int64)
    where = np.empty(len(order), np.int64)
    where[order] = np.arange(len(order))
    new_row[live] = where[: len(live)]
    inc = build_ivfpq(new, spec, trained=parent.trained, parent=parent.ivf, new_row=new_row)
    full = build_ivfpq(new, spec, trained=parent.trained)
    assert inc.ntotal == full.ntotal == len(new)
    a, b = inc.search(q, 10), full.search(q, 10)
    assert (a[1] == b[1]).all() and np.allclose(a[0], b[0])
    # every list holds the same ids either way
    li, lf = faiss.extract_index_ivf(inc.ivf).invlists, faiss.extract_index_ivf(full.ivf).invlists
    for lst in range(li.nlist):
        n = li.list_size(lst)
        assert n == lf.list_size(lst)
        assert set(faiss.rev_swig_ptr(li.get_ids(lst), n)) == set(faiss.rev_swig_ptr(lf.get_ids(lst), n))


def test_carry_refuses_another_quantizer(data):
    x, _, _ = data
    a = build_ivfpq(x, IVFPQSpec(nlist=64, m=16), train_vectors=5000)
    b = build_ivfpq(x, IVFPQSpec(nlist=32, m=16), train_vectors=5000)
    with pytest.raises(ValueError, match="another quantizer"):
        build_ivfpq(x, IVFPQSpec(nlist=64, m=16), trained=a.trained, parent=b.ivf,
                    new_row=np.arange(len(x), dtype=np.int64))


def test_build_index_picks_ivfpq_above_the_threshold_and_documents_search(data):
    x, q, _ = data
    doc_ids = [f"d{i // 3}" for i in range(len(x))]  # three chunks per document
    index, params = build_index(x, exact_max_vectors=1000, scale_kind="ivfpq",
                                ivf=IVFBuild(IVFPQSpec(nlist=64, m=16, nprobe=16, refine_k=100), train_vectors=5000))
    assert params.kind == "ivfpq_rerank" and params.nlist == 64 and isinstance(index, RerankedIndex)
    exact, p2 = build_index(x, exact_max_vectors=len(x))
    assert p2.kind == "flat_ip"
    got = DocSearcher(index, doc_ids).search(q[:20], 5)
    want = DocSearcher(exact, doc_ids).search(q[:20], 5)
    overlap = np.mean([len({h.doc_id for h in g} & {h.doc_id for h in w}) / 5 for g, w in zip(got, want, strict=True)])
    assert overlap >= 0.95
    assert DocSearcher(index, doc_ids).best_chunk_scores(q[0], ["d0"])[0] == pytest.approx(
        float((x[:3] @ q[0]).max()), abs=1e-6)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(x, exact_max_vectors=10, scale_kind="annoy")


def test_small_corpora_shrink_nlist_and_bits():
    assert auto_nlist(2_000_000) == 1024 and auto_nlist(50) == 1
    x = clustered(300, 3)
    index = build_ivfpq(x, IVFPQSpec(nlist=64, m=16, nprobe=64, refine_k=300))
    assert faiss.extract_index_ivf(index.ivf).nlist <= 300 // 39
    assert (index.search(x[:5], 1)[1][:, 0] == np.arange(5)).all()


def test_the_blas_threshold_is_restored_when_two_threads_lower_it_at_once():
    """faiss's BLAS threshold is one global: a thread that entered while another held it lowered must not save
    the lowered value and restore it after the first thread put the original back."""
    import threading
    import time

    import faiss

    from sidestep.retrieval.faissblas import blas_assignment

    original = faiss.cvar.distance_compute_blas_threshold
    assert original != 20
    first_in, seen = threading.Event(), []

    def first():
        with blas_assignment():
            seen.append(faiss.cvar.distance_compute_blas_threshold)
            first_in.set()
            time.sleep(0.2)

    def second():
        first_in.wait()
        with blas_assignment():
            seen.append(faiss.cvar.distance_compute_blas_threshold)
            time.sleep(0.4)  # leaves after the first thread

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [20, 20] and faiss.cvar.distance_compute_blas_threshold == original
