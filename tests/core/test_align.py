"""Code alignment (idea 1): the permutation must receive gradient, round to a true permutation,
and recover a planted codeword mapping that identity and random mappings do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidestep.rec.align import (
    CodeAlignment,
    apply_permutation,
    fit_alignment,
    identity_permutation,
    item_vectors,
    random_permutation,
    recovery,
    sinkhorn,
    used_codewords,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box is shared; these problems are small enough that one thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_alignment(D: int = 3, M: int = 8, seed: int = 0) -> CodeAlignment:
    alignment = CodeAlignment(D, M, seed=seed)
    with torch.no_grad():
        alignment.logits.copy_(torch.randn(D, M, M, generator=torch.Generator().manual_seed(seed)))
    return alignment


def test_straight_through_gives_gradient_where_ceil_gives_none():
    D, M, H = 3, 8, 5
    gen = torch.Generator().manual_seed(1)
    table, target = torch.randn(D, M, H, generator=gen), torch.randn(D, M, H, generator=gen)

    alignment = _random_alignment(D, M).train()
    ((alignment(table) - target) ** 2).sum().backward()
    grad = alignment.logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.norm() > 1e-6

    # The released VQ-Rec rounding: ceil turns the Sinkhorn output into a 0/1 matrix, and ceil's
    # derivative is zero everywhere, so nothing reaches the logits.
    ceil_alignment = _random_alignment(D, M)
    soft = ceil_alignment.soft()
    hard = torch.ceil(soft - soft.amax(dim=-1, keepdim=True) + 1e-6)
    assert torch.equal(hard.sum(-1), torch.ones(D, M))  # it does pick one codeword per row
    ((torch.einsum("dmn,dnh->dmh", hard, table) - target) ** 2).sum().backward()
    assert ceil_alignment.logits.grad is not None
    assert ceil_alignment.logits.grad.abs().max() == 0


def test_permutation_rows_are_permutations():
    D, M = 5, 12
    perm = _random_alignment(D, M, seed=3).permutation()
    assert perm.shape == (D, M) and perm.dtype == np.int64
    for row in perm:
        assert sorted(row.tolist()) == list(range(M))


def test_soft_is_doubly_stochastic():
    soft = _random_alignment(4, 10, seed=2).soft()
    assert soft.shape == (4, 10, 10) and (soft >= 0).all()
    assert torch.allclose(soft.sum(-1), torch.ones(4, 10), atol=1e-3)
    assert torch.allclose(soft.sum(-2), torch.ones(4, 10), atol=1e-3)
    # Log space survives a temperature at which exp() underflows to all-zero rows (0/0 = NaN in
    # plain Sinkhorn); it ends on a column step, so columns are exact even when rows still drift.
    cold = sinkhorn(torch.randn(2, 6, 6) / 1e-3, iters=30).exp()
    assert torch.isfinite(cold).all()
    assert torch.allclose(cold.sum(-2), torch.ones(2, 6), atol=1e-3)


def test_inits_and_fixed_mappings_agree():
    D, M, H = 3, 7, 4
    table = torch.randn(D, M, H)
    assert np.array_equal(CodeAlignment(D, M, init="identity").permutation(), identity_permutation(D, M))
    assert np.array_equal(CodeAlignment(D, M, init="zeros").permutation(), identity_permutation(D, M))
    alignment = CodeAlignment(D, M, init="random", seed=5).eval()
    perm = alignment.permutation()
    assert np.array_equal(perm, random_permutation(D, M, 5))
    assert torch.allclose(alignment(table), apply_permutation(table, perm))
    assert torch.equal(apply_permutation(table, perm)[1, 2], table[1, perm[1, 2]])
    with pytest.raises(ValueError):
        CodeAlignment(D, M, init="eye")


def test_recovery_counts_only_used_codewords():
    true = np.array([[0, 1, 2, 3]])
    learned = np.array([[0, 1, 3, 2]])
    assert recovery(learned, true) == 0.5
    used = used_codewords(np.array([[0], [1], [1]]), 4)
    assert used.tolist() == [[True, True, False, False]]
    assert recovery(learned, true, used) == 1.0


def _planted(D: int, M: int, H: int, n_items: int, seed: int = 0):
    """True table T; the pre-trained table holds T's codewords shuffled by pi per position."""
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(D, M, H, generator=gen)
    codes = torch.randint(0, M, (n_items, D), generator=gen)
    pi = random_permutation(D, M, seed + 100)
    frozen = torch.empty_like(true)
    frozen[torch.arange(D)[:, None], torch.as_tensor(pi)] = true  # frozen[d, pi[d, m]] = T[d, m]
    return frozen, codes, item_vectors(true, codes), pi


@pytest.mark.parametrize("straight_through", [True, False])
def test_planted_permutation_is_recovered_and_beats_controls(straight_through):
    D, M, H = 4, 16, 16
    frozen, codes, targets, pi = _planted(D, M, H, n_items=300)

    def loss_fn(aligned: torch.Tensor) -> torch.Tensor:
        # MSE to the target item vectors: zero residual (so zero gradient) exactly at the planted
        # mapping, which makes that mapping a fixed point of the straight-through dynamics.
        return ((item_vectors(aligned, codes) - targets) ** 2).sum(-1).mean()

    alignment = CodeAlignment(D, M, init="identity", straight_through=straight_through)
    losses = fit_alignment(alignment, loss_fn, frozen, steps=120, lr=0.05)
    assert len(losses) == 120 and losses[-1] < losses[0]
    assert alignment.logits.grad is not None and frozen.grad is None

    learned = alignment.permutation()
    controls = {"identity": identity_permutation(D, M), "random": random_permutation(D, M, 7)}
    with torch.no_grad():
        learned_loss = loss_fn(apply_permutation(frozen, learned)).item()
        control_loss = {k: loss_fn(apply_permutation(frozen, p)).item() for k, p in controls.items()}
    control_recovery = {k: recovery(p, pi) for k, p in controls.items()}

    assert recovery(learned, pi) >= 0.9, (recovery(learned, pi), control_recovery)
    assert all(r <= 0.25 for r in control_recovery.values()), control_recovery  # chance is 1/M
    assert all(learned_loss < 0.5 * c for c in control_loss.values()), (learned_loss, control_loss)
