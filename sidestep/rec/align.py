"""Code alignment (idea 1): re-map a new domain's codewords onto a frozen pre-trained lookup table.

VQ-Rec (Hou et al., WWW 2023) represents an item by D discrete code positions with M codewords
each, and an item vector is the mean over positions of ``table[d, code[i, d]]``. A new domain
gets its own product quantizer, so its codeword ``m`` at position ``d`` has no reason to mean
what the pre-trained table's codeword ``m`` means. VQ-Rec re-aligns them with a Gumbel-Sinkhorn
permutation per position, but its released code rounds the Sinkhorn output with ``torch.ceil``,
whose gradient is zero everywhere: the permutation logits never receive a signal and stay at
their initial value.

Here the rounding is a straight-through estimator instead:

* soft permutation: Sinkhorn normalisation, in log space, of ``(logits + noise * gumbel) / tau``;
* hard permutation: Hungarian rounding of that matrix (a true permutation, never a near one);
* forward uses the hard matrix, backward the soft one: ``P = hard + soft - soft.detach()``.

The forward pass therefore always reads real pre-trained codewords (no blends that the
downstream model never saw), and the logits still get the gradient of the soft relaxation.
``aligned[d] = P[d] @ table[d]``: row ``m`` of the new domain's position ``d`` reads pre-trained
codeword ``perm[d, m]``.

Everything here is pure torch/numpy/scipy so flows and tests can call it without a scheduler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "CodeAlignment",
    "apply_permutation",
    "fit_alignment",
    "hungarian",
    "identity_permutation",
    "item_vectors",
    "permutation_matrix",
    "random_permutation",
    "recovery",
    "sinkhorn",
    "used_codewords",
]

# Defaults measured on a planted problem at VQ-Rec scale (D=32, M=256, H=64, 4000 items, Zipf
# codes): 100 Adam steps at lr 0.05 with cosine decay recover 0.9999 of used codewords. Without
# lr decay a constant tau of 1 beat annealing to 0.1 (0.98 vs 0.93; with decay both reach ~1);
# Gumbel noise of 0.5 drowned the signal (0.29), so noise is off unless asked for.
DEFAULT_TAU = 1.0
DEFAULT_ITERS = 20
DEFAULT_NOISE = 0.0
DEFAULT_INIT_SCALE = 0.01
DEFAULT_LR = 0.05


# ---------------------------------------------------------------------------- fixed mappings


def identity_permutation(n_positions: int, n_codewords: int) -> np.ndarray:
    """The control that assumes the new domain's codewords already mean the pre-trained ones."""
    return np.tile(np.arange(n_codewords, dtype=np.int64), (n_positions, 1))


def random_permutation(n_positions: int, n_codewords: int, seed: int = 0) -> np.ndarray:
    """The chance control: an arbitrary bijection per position, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_codewords) for _ in range(n_positions)]).astype(np.int64)


def apply_permutation(table: Tensor, perm: np.ndarray) -> Tensor:
    """``out[d, m] = table[d, perm[d, m]]``: a fixed mapping as a gather, no M x M matmul."""
    index = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=table.device)
    rows = torch.arange(table.shape[0], device=table.device)[:, None]
    return table[rows, index]


def permutation_matrix(perm: np.ndarray, *, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> Tensor:
    """One-hot (D, M, M) matrices with ``P[d, m, perm[d, m]] = 1``, so ``P[d] @ table[d]`` gathers."""
    index = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=device)
    n_positions, n_codewords = index.shape
    out = torch.zeros(n_positions, n_codewords, n_codewords, dtype=dtype, device=device)
    return out.scatter_(2, index[..., None], 1.0)


def recovery(perm_learned: np.ndarray, perm_true: np.ndarray, used: np.ndarray | None = None) -> float:
    """Fraction of (d, m) whose learned target is the true one.

    ``used`` (boolean (D, M)) restricts the count to codewords some item actually carries: a
    codeword no item uses gets no gradient, so no method can be expected to place it.
    """
    hit = np.asarray(perm_learned) == np.asarray(perm_true)
    if used is None:
        return float(hit.mean())
    used = np.asarray(used, dtype=bool)
    return float(hit[used].mean()) if used.any() else float("nan")


def used_codewords(codes: np.ndarray | Tensor, n_codewords: int) -> np.ndarray:
    """Boolean (D, M): which codewords at each position at least one item carries."""
    codes = np.asarray(codes.cpu() if isinstance(codes, Tensor) else codes, dtype=np.int64)
    used = np.zeros((codes.shape[1], n_codewords), dtype=bool)
    used[np.arange(codes.shape[1])[None, :], codes] = True
    return used


def item_vectors(table: Tensor, codes: Tensor) -> Tensor:
    """VQ-Rec item representation: mean over positions of ``table[d, codes[i, d]]``; (N, H)."""
    positions = torch.arange(table.shape[0], device=table.device)
    return table[positions[None, :], codes].mean(dim=1)


# ---------------------------------------------------------------------------- relaxation


def sinkhorn(log_alpha: Tensor, iters: int = DEFAULT_ITERS) -> Tensor:
    """Log of a (near) doubly-stochastic matrix, by alternating row/column normalisation.

    Working in log space keeps small temperatures from underflowing to all-zero rows. Ends on a
    column step, so columns are exact and rows are within the convergence error.
    """
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha


def hungarian(scores: Tensor) -> np.ndarray:
    """(D, M) permutation maximising ``sum_m scores[d, m, perm[d, m]]`` for every position.

    Rounding the *log* of the Sinkhorn output is the same as rounding the logits (row and column
    scalings add the same constant to every permutation's score): it is the mode of the
    Gumbel-matching distribution the relaxation approximates.
    """
    mats = scores.detach().to("cpu", torch.float64).numpy()
    perm = np.empty(mats.shape[:2], dtype=np.int64)
    for d, mat in enumerate(mats):
        rows, cols = linear_sum_assignment(mat, maximize=True)
        perm[d, rows] = cols
    return perm


def _gumbel(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    uniform = torch.rand(shape, generator=generator).to(device)
    return -torch.log(-torch.log(uniform.clamp_(1e-10, 1.0 - 1e-7)))


# ---------------------------------------------------------------------------- module


class CodeAlignment(nn.Module):
    """Learnable per-position permutation of M codewords, applied to a frozen (D, M, H) table.

    ``init`` sets where Hungarian rounding starts: ``"identity"`` (new codeword m reads
    pre-trained m), ``"random"`` (exactly ``random_permutation(D, M, seed)``) or ``"zeros"``
    (all logits zero; rounding then returns identity). The first two put ``init_scale`` on the
    chosen entries. Keep it small: it only decides step-0 rounding, and a large value is a prior
    the gradient must climb over before any codeword can move.

    ``straight_through=False`` trains on the soft matrix itself (classic Gumbel-Sinkhorn; rounding
    is still Hungarian, and eval-mode forward is still hard). The hard forward's gradient is a
    linearisation at the current codeword, so when the pre-trained codewords only approximate
    the right ones it also pushes away from a correct choice. On the planted D=32 problem with
    table noise at half the signal scale, the soft forward at ``tau=0.3`` recovered 0.91 of used
    codewords against 0.77 for the hard one (soft at ``tau=1`` only 0.67); on an exact table the
    hard forward recovered all of them and the soft one 0.96.
    """

    def __init__(self, n_positions: int, n_codewords: int, *, tau: float = DEFAULT_TAU,
                 iters: int = DEFAULT_ITERS, noise: float = DEFAULT_NOISE, init: str = "identity",
                 init_scale: float = DEFAULT_INIT_SCALE, straight_through: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        self.n_positions, self.n_codewords = n_positions, n_codewords
        self.tau, self.iters, self.noise = float(tau), int(iters), float(noise)
        self.straight_through = straight_through
        self.logits = nn.Parameter(self._init_logits(init, init_scale, seed))
        self._generator = torch.Generator().manual_seed(seed)

    def _init_logits(self, init: str, scale: float, seed: int) -> Tensor:
        shape = (self.n_positions, self.n_codewords)
        if init == "zeros":
            return torch.zeros(*shape, self.n_codewords)
        if init == "identity":
            return scale * permutation_matrix(identity_permutation(*shape))
        if init == "random":
            return scale * permutation_matrix(random_permutation(*shape, seed))
        raise ValueError(f"init must be 'identity', 'random' or 'zeros', not {init!r}")

    def log_soft(self, *, noisy: bool = False) -> Tensor:
        """Log of the soft permutation; Gumbel noise only when asked (training exploration)."""
        scores = self.logits
        if noisy and self.noise > 0:
            scores = scores + self.noise * _gumbel(scores.shape, self._generator, scores.device)
        return sinkhorn(scores / self.tau, self.iters)

    def soft(self) -> Tensor:
        """(D, M, M) doubly-stochastic relaxation at the current temperature, without noise."""
        return self.log_soft().exp()

    def forward(self, table: Tensor) -> Tensor:
        """(D, M, H) -> (D, M, H): hard permutation forward, soft permutation gradient.

        Out of training mode the result is always the hard permutation, so evaluation never sees
        blended codewords whichever estimator trained it.
        """
        log_p = self.log_soft(noisy=self.training)
        soft = log_p.exp()
        if self.training and not self.straight_through:
            mix = soft
        else:
            hard = permutation_matrix(hungarian(log_p), dtype=soft.dtype, device=soft.device)
            mix = hard + soft - soft.detach()
        return torch.einsum("dmn,dnh->dmh", mix, table.to(soft.dtype))

    @torch.no_grad()
    def permutation(self) -> np.ndarray:
        """(D, M) int: new codeword m -> pre-trained codeword ``perm[d, m]`` (noise-free rounding)."""
        return hungarian(self.logits)


# ---------------------------------------------------------------------------- training


def _cosine(step: int, steps: int) -> float:
    """Cosine factor from 1 to 0: freezes the logits at the end instead of letting them jitter."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def _tau_at(step: int, steps: int, schedule: tuple[float, float]) -> float:
    """Geometric interpolation: equal *ratios* per step, the usual annealing for Gumbel relaxations."""
    start, end = schedule
    frac = step / max(steps - 1, 1)
    return math.exp((1.0 - frac) * math.log(start) + frac * math.log(end))


def fit_alignment(alignment: CodeAlignment, loss_fn: Callable[[Tensor], Tensor], table: Tensor, *,
                  steps: int, lr: float = DEFAULT_LR, lr_decay: bool = True,
                  tau_schedule: tuple[float, float] | None = None, log_every: int = 0,
                  callback: Callable[[int, float, CodeAlignment], None] | None = None) -> list[float]:
    """Train only the alignment logits with Adam; ``table`` stays frozen. Returns the loss curve.

    ``loss_fn`` receives the aligned (D, M, H) table and returns a scalar (for instance a
    recommendation loss of items represented with it). ``tau_schedule=(start, end)`` anneals the
    temperature geometrically; ``None`` keeps ``alignment.tau``. The temperature is restored
    afterwards so later ``soft()`` calls see the module's own value, and the module is left in
    eval mode (noise-free, hard forward).

    Why cosine ``lr_decay`` by default: Adam moves every logit by about ``lr`` per step whatever
    its gradient's size, so the hard permutation keeps flipping near-tied rows at a constant
    rate. On the planted D=32 problem a constant lr ended at 0.93-0.98 recovered with rows still
    flipping; decayed to zero over the same 100 steps it reached 1.0.
    """
    table = table.detach()
    optimizer = torch.optim.Adam(alignment.parameters(), lr=lr)
    base_tau, losses = alignment.tau, []
    alignment.train()
    try:
        for step in range(steps):
            if tau_schedule is not None:
                alignment.tau = _tau_at(step, steps, tau_schedule)
            if lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = lr * _cosine(step, steps)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(alignment(table))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if log_every and (step % log_every == 0 or step == steps - 1):
                log.info("align step %d/%d loss %.5f tau %.3f", step, steps, losses[-1], alignment.tau)
            if callback is not None:
                callback(step, losses[-1], alignment)
    finally:
        alignment.tau = base_tau
        alignment.eval()
    return losses
