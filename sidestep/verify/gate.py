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
from sidestep.verify.crops import paired_ci

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


# the untrained rankers a domain without a verifier of its own may be served by, cheapest first (a tie keeps
# the cheaper: pooled cosine is recall's own order, fusion adds BM25, MaxSim reads every candidate's tokens)
UNTRAINED = ("pooled_cosine", "fusion", "maxsim")


@dataclass(frozen=True)
class RankerChoice:
    """Which ranker serves a domain that has no verifier of its own, chosen on its held-out self-supervised
    queries: the best untrained ranker, unless a learned one (the general or an adapted verifier) beats it by more
    than its paired 95% interval."""

    ranker: str  # one of UNTRAINED, or the name of a learned candidate (e.g. "verifier:general-verifier")
    ndcg10: dict[str, float]
    queries: int
    best_untrained: str
    margin: float  # the chosen ranker minus the best untrained one (0 when an untrained one is chosen)
    over_dense: float  # the chosen ranker minus pooled cosine (dense recall alone)
    over_dense_ci95: tuple[float, float]
    reason: str
    # the best learned candidate minus the best untrained ranker: paired 95% interval ((0, 0) without a candidate)
    learned_ci95: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict:
        return {"ranker": self.ranker, "ndcg10": dict(self.ndcg10), "queries": self.queries,
                "best_untrained": self.best_untrained, "margin": self.margin, "over_dense": self.over_dense,
                "over_dense_ci95": list(self.over_dense_ci95), "learned_ci95": list(self.learned_ci95),
                "reason": self.reason}


def choose_ranker(per_query: Mapping[str, Sequence[float]], *, ci=paired_ci) -> RankerChoice:
    """per_query: every ranker's per-query nDCG@10 on the same held-out queries (each of UNTRAINED required;
    any other key is a learned candidate). The best untrained ranker serves unless the best learned one beats it
    by more than chance: the lower end of the paired 95% interval of their difference, ci(a, b) -> (lo, hi), above
    zero. A learned model costs more to serve and was fitted to these queries' neighbours; a lead inside its
    interval is not a gain (on a 90-query antonym probe, a general verifier ahead of MaxSim by +0.0043 on 191
    held-out queries preferred the right document in 87.8% of pairs, MaxSim in 96.7%)."""
    missing = set(UNTRAINED) - set(per_query)
    if missing:
        raise ValueError(f"the ranker choice needs every untrained ranker; missing {sorted(missing)}")
    n = len(per_query["pooled_cosine"])
    means = {k: float(np.mean(v)) if len(v) else 0.0 for k, v in per_query.items()}
    if n < 1:
        return RankerChoice("pooled_cosine", means, 0, "pooled_cosine", 0.0, 0.0, (0.0, 0.0),
                            "no held-out self-supervised query: dense recall serves")
    best_u = max(UNTRAINED, key=lambda k: (means[k], -UNTRAINED.index(k)))
    learned = [k for k in per_query if k not in UNTRAINED]
    best_l = max(learned, key=lambda k: means[k]) if learned else None
    fig = ", ".join(f"{k} {means[k]:.4f}" for k in sorted(means, key=lambda k: -means[k]))
    lead = means[best_l] - means[best_u] if best_l else 0.0
    lo, hi = ci(per_query[best_l], per_query[best_u]) if best_l else (0.0, 0.0)
    if best_l is not None and lead > 0 and lo > 0:
        chosen, margin = best_l, lead
        why = f"{best_l} beats the best untrained ranker ({best_u}) by {margin:+.4f} (95% CI {lo:+.4f} to {hi:+.4f})"
    else:
        chosen, margin = best_u, 0.0
        why = f"{best_u} is the best untrained ranker"
        if best_l and lead > 0:
            why += f"; {best_l} leads it by {lead:+.4f}, inside its 95% interval ({lo:+.4f} to {hi:+.4f})"
        elif best_l:
            why += f"; {best_l} does not beat it ({lead:+.4f})"
    lo_hi = ci(per_query[chosen], per_query["pooled_cosine"]) if chosen != "pooled_cosine" else (0.0, 0.0)
    over = means[chosen] - means["pooled_cosine"]
    return RankerChoice(chosen, means, n, best_u, margin, over, lo_hi,
                        f"held-out self-supervised nDCG@10 on {n} queries ({fig}): {why}", (lo, hi))
