"""The publishing gate of self-supervised verifiers: the verifier is published only when its held-out
nDCG@10 beats both untrained rankers strictly, and the decision says who won and by how much."""

from __future__ import annotations

import numpy as np
import pytest

from sidestep.verify.gate import decide, gate, mean_ndcg10


def test_the_verifier_passes_only_when_it_beats_both_baselines():
    ok = decide({"verifier": 0.80, "maxsim": 0.75, "pooled_cosine": 0.70}, 12)
    assert ok.passed and ok.winner == "verifier" and ok.margin == pytest.approx(0.05)
    assert "beats the best untrained ranker (maxsim) by +0.0500" in ok.reason

    lost = decide({"verifier": 0.80, "maxsim": 0.70, "pooled_cosine": 0.85}, 12)
    assert not lost.passed and lost.winner == "pooled_cosine" and lost.margin == pytest.approx(-0.05)
    assert "pooled_cosine wins by 0.0500, so nothing is published" in lost.reason

    tie = decide({"verifier": 0.75, "maxsim": 0.75, "pooled_cosine": 0.70}, 12)
    assert not tie.passed and tie.winner == "maxsim" and tie.margin == 0.0  # a tie keeps the untrained ranker

    assert not decide({"verifier": 1.0, "maxsim": 0.0, "pooled_cosine": 0.0}, 0).passed
    with pytest.raises(ValueError, match="missing"):
        decide({"verifier": 1.0, "maxsim": 0.5}, 3)


def test_gate_ranks_each_list_by_its_scores_with_the_one_ndcg():
    gains = [np.array([0, 1, 0], np.float32), np.array([1, 0, 0], np.float32)]
    # the verifier puts both positives first; MaxSim misses the first query's; pooled misses both
    ver = [np.array([0.1, 0.9, 0.2]), np.array([0.8, 0.1, 0.0])]
    ms = [np.array([0.9, 0.5, 0.2]), np.array([0.8, 0.1, 0.0])]
    pooled = [np.array([0.9, 0.5, 0.2]), np.array([0.1, 0.8, 0.0])]
    g = gate(ver, ms, pooled, gains)
    second = 1 / np.log2(3)
    assert g.ndcg10 == pytest.approx({"verifier": 1.0, "maxsim": (second + 1) / 2, "pooled_cosine": second})
    assert g.passed and g.queries == 2 and g.as_dict()["winner"] == "verifier"
    assert mean_ndcg10([], []) == 0.0
    # the verifier ranking like MaxSim does not pass
    assert not gate(ms, ms, pooled, gains).passed
