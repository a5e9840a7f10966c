"""OPQ + PQ codebooks (real faiss): codes, reconstruction, drift, diagnostics, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from sidestep.rec.quantize import Codebook, CodebookSpec, diagnostics, drift, fit_codebook, shuffled_codes


def _clustered(rng: np.random.Generator, n: int, dim: int = 64, centers: int = 20, noise: float = 0.15) -> np.ndarray:
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def book_and_data():
    rng = np.random.default_rng(0)
    x = _clustered(rng, 2000)
    return fit_codebook(x, CodebookSpec(positions=8, bits=6, sample=1500, opq_iterations=5)), x


def test_codes_have_one_codeword_per_position_and_reconstruct_the_vectors(book_and_data):
    book, x = book_and_data
    codes = book.encode(x)
    assert codes.shape == (len(x), 8) and codes.max() < 64
    # reconstruction from codes beats the best constant (the mean vector) by far
    rec = book.index.sa_decode(book.index.sa_encode(x))
    baseline = ((x - x.mean(0)) ** 2).sum(1).mean() / (x ** 2).sum(1).mean()
    assert book.error(x) == pytest.approx(((x - rec) ** 2).sum(1).mean() / (x ** 2).sum(1).mean(), rel=1e-5)
    assert book.error(x) < 0.5 * baseline


def test_drift_is_about_one_on_the_same_distribution_and_large_on_a_new_one(book_and_data):
    book, _ = book_and_data
    same = _clustered(np.random.default_rng(0), 500)  # same seed: same centers, new points
    other = _clustered(np.random.default_rng(99), 500)  # other centers
    assert drift(book, same) < 1.25
    assert drift(book, other) > 1.25


def test_a_serialized_codebook_gives_identical_codes(book_and_data):
    book, x = book_and_data
    again = Codebook.from_bytes(book.to_bytes(), book.spec, book.fit_error)
    assert np.array_equal(again.encode(x), book.encode(x))


def test_fitting_is_reproducible_with_a_seed():
    x = _clustered(np.random.default_rng(1), 600)
    spec = CodebookSpec(positions=8, bits=4, opq_iterations=3)
    assert np.array_equal(fit_codebook(x, spec).encode(x), fit_codebook(x, spec).encode(x))


def test_tiny_catalogues_fit_without_opq_instead_of_crashing():
    x = _clustered(np.random.default_rng(2), 40)  # fewer vectors than dimensions: faiss OPQ would segfault
    book = fit_codebook(x, CodebookSpec(positions=8, bits=3))
    assert not book.spec.opq and book.encode(x).shape == (40, 8)


def test_too_few_vectors_for_the_codewords_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 256"):
        fit_codebook(_clustered(np.random.default_rng(3), 100), CodebookSpec(positions=8, bits=8))


def test_diagnostics_on_hand_made_codes():
    codes = np.array([[0, 1], [0, 1], [1, 2], [2, 3]])  # items 0 and 1 collide; position 0 never uses 3
    d = diagnostics(codes, codewords=4)
    assert d["colliding_items"] == 2
    assert d["dead_codewords"] == 1 + 1  # position 0: codeword 3; position 1: codeword 0
    p0 = np.array([2, 1, 1]) / 4
    assert d["entropy_per_position"][0] == pytest.approx(-(p0 * np.log2(p0)).sum(), abs=1e-4)
    assert d["entropy_bits_max"] == 2.0


def test_shuffled_codes_keep_the_code_multiset_but_not_the_assignment():
    codes = np.arange(200).reshape(100, 2)
    s = shuffled_codes(codes, seed=0)
    assert sorted(map(tuple, s)) == sorted(map(tuple, codes))
    assert (s != codes).any(axis=1).mean() > 0.9


def test_a_table_started_from_the_codebook_represents_items_by_their_reconstruction(book_and_data):
    book, x = book_and_data
    codes = book.encode(x).astype(np.int64)
    table = book.table_init()
    assert table.shape == (8, 64, x.shape[1])
    mean = table[np.arange(8), codes].mean(1)
    assert np.allclose(mean, book.index.sa_decode(book.index.sa_encode(x)), atol=1e-5)
