"""Gradient estimators for a loss that sees only a top-k selection of scores, written once.

Every estimator is a *surrogate loss*: a function of the scores whose value may be anything useful but
whose gradient with respect to the scores is the estimate. One interface for all:

    surrogate(name, scores, judge, k, *, samples, tau, sigma, generator) -> per-row surrogate (...)
    grad(name, scores, judge, k, ...) -> d sum(surrogate) / d scores, shaped like scores

``scores`` is ``(n,)`` or ``(B, n)`` (B independent rows: queries, or independent draws of the same
estimator); ``judge`` has ``rewards`` (n,) or (B, n) and ``loss(selection) -> (...)`` for an ordered
``(..., k, n)`` selection (``sidestep.lab.judge.CascadeJudge``). Randomness comes only from ``generator``.

The stochastic selection is Plackett-Luce with logits = scores, sampled as the top k of scores + Gumbel
noise; its expected loss J(scores) is the objective whose exact gradient g* the planted task enumerates.

======================  =======================================================  ==================
name                    what reaches the scores                                  target
======================  =======================================================  ==================
sidestep                no gradient through the pick: softmax cross-entropy of   surrogate
                        the scores against the judge's rewards (listwise)
marginal_likelihood     -log sum_{i in top k} softmax_topk(s)_i r_i (RAG/REALM);  surrogate
                        zero on every item outside the deterministic top k
gumbel_softmax          pathwise gradient of the judge's loss on the relaxed     g* as tau -> 0
                        Gumbel top-k (successive softmax, Xie & Ermon 2019)
straight_through        hard Gumbel top-k forward, relaxed backward              biased at all tau
perturbed               Berthet et al. 2020: forward = Monte-Carlo mean of the   Gaussian-smoothed
                        hard top k of s + sigma Z, backward = their Jacobian      objective
                        estimator E[y*(s + sigma Z) Z^T] / sigma
reinforce               score function, leave-one-out baseline                   g* (unbiased)
softsort                gradient of the judge's loss on SoftSort's relaxed       surrogate
                        permutation (deterministic, no noise)
======================  =======================================================  ==================

"surrogate" estimators are deterministic and have an arbitrary scale: compare them with g* by cosine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from sidestep.lab.selection import gumbel_noise, hard_topk, pl_log_prob, relaxed_topk, softsort

__all__ = ["ESTIMATORS", "Estimator", "Judge", "grad", "surrogate"]


class Judge(Protocol):
    rewards: torch.Tensor

    def loss(self, selection: torch.Tensor) -> torch.Tensor: ...


def _noise_shape(scores: torch.Tensor, samples: int) -> tuple[int, ...]:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    return (samples, *scores.shape)


def _sidestep(scores, judge, k, *, samples, tau, sigma, generator):
    """Listwise softmax cross-entropy against target q = r / sum(r); gradient softmax(s) - q."""
    r = judge.rewards.to(scores.dtype)
    total = r.sum(-1, keepdim=True)
    q = r / torch.where(total > 0, total, torch.ones_like(total))
    return -(q * torch.log_softmax(scores, dim=-1)).sum(-1)


def _marginal_likelihood(scores, judge, k, *, samples, tau, sigma, generator):
    """-log sum_{i in top k} p_i r_i with p = softmax over the top-k scores only. When no picked item has a
    reward the likelihood is floored and the gradient is zero (nothing to learn from, as in RAG)."""
    r = judge.rewards.to(scores.dtype).expand_as(scores)
    top = scores.detach().topk(k, dim=-1).indices
    p = torch.softmax(torch.gather(scores, -1, top), dim=-1)
    like = (p * torch.gather(r, -1, top)).sum(-1)
    return -like.clamp_min(1e-12).log()


def _gumbel_softmax(scores, judge, k, *, samples, tau, sigma, generator):
    g = gumbel_noise(_noise_shape(scores, samples), dtype=scores.dtype, device=scores.device, generator=generator)
    return judge.loss(relaxed_topk(scores + g, k, tau)).mean(0)


def _straight_through(scores, judge, k, *, samples, tau, sigma, generator):
    g = gumbel_noise(_noise_shape(scores, samples), dtype=scores.dtype, device=scores.device, generator=generator)
    soft = relaxed_topk(scores + g, k, tau)
    hard = hard_topk(scores + g, k)
    return judge.loss(hard + soft - soft.detach()).mean(0)


def _perturbed(scores, judge, k, *, samples, tau, sigma, generator):
    """Forward: y = mean_m hard_topk(s + sigma Z_m). Backward: dy/ds = mean_m y*_m Z_m^T / sigma (Berthet et
    al. 2020, Prop. 3.1), written as y + mean_m y*_m <Z_m, s - stop_grad(s)> / sigma."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    z = torch.randn(_noise_shape(scores, samples), dtype=scores.dtype, device=scores.device, generator=generator)
    hard = hard_topk(scores.detach() + sigma * z, k)  # (M, ..., k, n)
    lever = (z * (scores - scores.detach())).sum(-1) / sigma  # (M, ...), value 0
    y = (hard * (1.0 + lever)[..., None, None]).mean(0)
    return judge.loss(y)


def _reinforce(scores, judge, k, *, samples, tau, sigma, generator):
    """(L_m - b_m) grad log PL(S_m), b_m = mean loss of the other samples (no baseline when samples = 1)."""
    g = gumbel_noise(_noise_shape(scores, samples), dtype=scores.dtype, device=scores.device, generator=generator)
    idx = (scores.detach() + g).topk(k, dim=-1).indices  # (M, ..., k)
    losses = judge.loss(torch.nn.functional.one_hot(idx, scores.shape[-1]).to(scores.dtype)).detach()
    m = losses.shape[0]
    baseline = (losses.sum(0, keepdim=True) - losses) / (m - 1) if m > 1 else torch.zeros_like(losses)
    logp = pl_log_prob(scores, idx)
    # value: the mean sampled loss; gradient: the score-function estimate
    return (losses + (losses - baseline) * (logp - logp.detach())).mean(0)


def _softsort(scores, judge, k, *, samples, tau, sigma, generator):
    return judge.loss(softsort(scores, k, tau))


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., torch.Tensor]
    knobs: tuple[str, ...]  # which of samples / tau / sigma it reads
    target: str  # what its expectation is the gradient of
    targets_exact_gradient: bool  # unbiased for g*, the exact gradient of the expected Plackett-Luce loss

    @property
    def stochastic(self) -> bool:
        return "samples" in self.knobs


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("sidestep", _sidestep, (), "surrogate: listwise cross-entropy of the scores against the rewards", False),
    Estimator("marginal_likelihood", _marginal_likelihood, (),
              "surrogate: log marginal likelihood over the deterministic top k", False),
    Estimator("gumbel_softmax", _gumbel_softmax, ("samples", "tau"),
              "expected loss of the relaxed Gumbel top-k: tends to g* as tau -> 0", False),
    Estimator("straight_through", _straight_through, ("samples", "tau"),
              "none exactly: hard forward, relaxed backward (biased at every tau)", False),
    Estimator("perturbed", _perturbed, ("samples", "sigma"),
              "loss of the Gaussian-smoothed selection E[topk(s + sigma Z)] (the Gaussian-perturbed "
              "expected loss when the loss is linear in the selection)", False),
    Estimator("reinforce", _reinforce, ("samples",), "g*: unbiased for the expected Plackett-Luce loss", True),
    Estimator("softsort", _softsort, ("tau",), "surrogate: judge's loss on SoftSort's relaxed permutation", False),
)}


def _get(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}") from None


def surrogate(name: str, scores: torch.Tensor, judge: Judge, k: int, *, samples: int = 8, tau: float = 0.5,
              sigma: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """The estimator's surrogate loss per row of ``scores`` (``()`` for (n,), ``(B,)`` for (B, n)); backward
    through its sum gives the gradient estimate of each row. Differentiable in scores, so a model that
    produces the scores (a query adapter, a head) trains on it directly."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}], got {k}")
    return _get(name).fn(scores, judge, k, samples=samples, tau=tau, sigma=sigma, generator=generator)


def grad(name: str, scores: torch.Tensor, judge: Judge, k: int, *, samples: int = 8, tau: float = 0.5,
         sigma: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """The gradient estimate with respect to ``scores`` (same shape; one independent estimate per row)."""
    s = scores.detach().clone().requires_grad_(True)
    out = surrogate(name, s, judge, k, samples=samples, tau=tau, sigma=sigma, generator=generator)
    (g,) = torch.autograd.grad(out.sum(), s, allow_unused=True)
    return torch.zeros_like(s) if g is None else g
