"""The fixed downstream judge: a loss over an ordered selection of k items.

The judge is the cascade model behind Expected Reciprocal Rank (Chapelle et al. 2009): a reader scans
the selection from the top and stops at position j with probability u_j, the reward of the item there
(a probability in [0, 1]); the gain is 1/j when it stops at j. So the loss rewards "a relevant item is
among the k, at a good rank", with diminishing returns for a second relevant item: it is not linear in
the selection (unlike DCG), which is what separates a straight-through backward from the relaxed one.

    ERR(P) = sum_j (1/j) u_j prod_{l<j} (1 - u_l),  u_j = sum_i P[j, i] r_i
    loss(P) = 1 - ERR(P) / ERR(best order)

``P`` is a hard selection (one-hot rows) or a relaxed one (probability rows); both are read the same way.
For retrieval, r would be graded judgments mapped to probabilities, (2^g - 1) / 2^g_max as ERR does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CascadeJudge"]


@dataclass(frozen=True)
class CascadeJudge:
    """Rewards ``(n,)`` or ``(B, n)`` in [0, 1], one row per query; ``loss`` broadcasts over leading dims."""

    rewards: torch.Tensor

    def __post_init__(self) -> None:
        r = self.rewards
        if r.ndim not in (1, 2) or bool((r < 0).any()) or bool((r > 1).any()):
            raise ValueError("rewards must be (n,) or (B, n) with values in [0, 1]")

    def err(self, selection: torch.Tensor) -> torch.Tensor:
        """Expected reciprocal rank of a selection ``(..., k, n)`` -> ``(...)``."""
        u = (selection * self.rewards.unsqueeze(-2)).sum(-1)  # (..., k) reward at each position
        k = u.shape[-1]
        ranks = torch.arange(1, k + 1, dtype=u.dtype, device=u.device)
        survive = torch.cumprod(torch.cat([torch.ones_like(u[..., :1]), 1.0 - u[..., :-1]], dim=-1), dim=-1)
        return (u * survive / ranks).sum(-1)

    def best_err(self, k: int) -> torch.Tensor:
        """ERR of the best order (rewards sorted, highest first): the normaliser, ``()`` or ``(B,)``."""
        top = self.rewards.sort(dim=-1, descending=True).indices[..., :k]
        best = torch.nn.functional.one_hot(top, self.rewards.shape[-1]).to(self.rewards.dtype)
        return self.err(best)

    def loss(self, selection: torch.Tensor) -> torch.Tensor:
        """1 - ERR / best ERR in [0, 1] (0 when nothing is relevant): ``(..., k, n)`` -> ``(...)``."""
        best = self.best_err(selection.shape[-2])
        ratio = self.err(selection) / torch.where(best > 0, best, torch.ones_like(best))
        return torch.where(best > 0, 1.0 - ratio, torch.zeros_like(ratio))
