"""The publishing gate: a trained verifier is published only where it ranks better than the untrained rankers
the project already computes (pooled cosine, i.e. recall's own order, and MaxSim over the same tokens), on
queries none of them was trained or tuned on.

Everything here is arithmetic on per-query rankings: the one nDCG (sidestep.eval.metrics), the means, the
decision and the sentence that explains it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sidestep.eval.metrics import ndcg_of_scores

VERIFIER = "verifier"
BASELINES = ("maxsim", "pooled_cosine")


@dataclass(frozen=True)
class GateResult:
    """Mean held-out nDCG@10 per ranker, and whether the verifier beat every baseline."""

    ndcg10: dict[str, float]  # "verifier", "maxsim", "pooled_cosine"
    queries: int
    passed: bool
    winner: str  # the ranker with the best mean (the verifier only when it beats both strictly)
    margin: float  # verifier minus the best baseline (negative when a baseline won)
    reason: str

    def as_dict(self) -> dict:
        return {"ndcg10": dict(self.ndcg10), "queries": self.queries, "passed": self.passed, "winner": self.winner,
                "margin": self.margin, "reason": self.reason}


def mean_ndcg10(scores: Sequence[np.ndarray], gains: Sequence[np.ndarray]) -> float:
    """Mean nDCG@10 of several candidate lists, each ranked by its scores against its own gains."""
    if not len(scores):
        return 0.0
    return float(np.mean([ndcg_of_scores(np.asarray(s, np.float32), np.asarray(g, np.float32))
                          for s, g in zip(scores, gains, strict=True)]))


def decide(ndcg10: Mapping[str, float], queries: int) -> GateResult:
    """Publish only when the verifier's mean beats each baseline's strictly (a tie keeps the untrained one:
    it costs nothing to serve and was not fitted to these queries' neighbours)."""
    missing = {VERIFIER, *BASELINES} - set(ndcg10)
    if missing:
        raise ValueError(f"the gate needs every ranker's nDCG@10; missing {sorted(missing)}")
    if queries < 1:
        return GateResult(dict(ndcg10), 0, False, "none", 0.0, "no held-out query to decide on")
    best_base = max(BASELINES, key=lambda b: ndcg10[b])
    margin = ndcg10[VERIFIER] - ndcg10[best_base]
    fig = (f"held-out nDCG@10 verifier {ndcg10[VERIFIER]:.4f}, MaxSim {ndcg10['maxsim']:.4f}, "
           f"pooled cosine {ndcg10['pooled_cosine']:.4f} on {queries} queries")
    if margin > 0:
        return GateResult(dict(ndcg10), queries, True, VERIFIER, margin,
                          f"{fig}: the verifier beats the best untrained ranker ({best_base}) by {margin:+.4f}")
    return GateResult(dict(ndcg10), queries, False, best_base, margin,
                      f"{fig}: {best_base} wins by {-margin:.4f}, so nothing is published")


def gate(verifier: Sequence[np.ndarray], maxsim: Sequence[np.ndarray], pooled: Sequence[np.ndarray],
         gains: Sequence[np.ndarray]) -> GateResult:
    """The gate over per-query score lists of the three rankers (same candidates, same gains)."""
    ndcg10 = {VERIFIER: mean_ndcg10(verifier, gains), "maxsim": mean_ndcg10(maxsim, gains),
              "pooled_cosine": mean_ndcg10(pooled, gains)}
    return decide(ndcg10, len(gains))
