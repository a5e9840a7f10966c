"""The retrieval task of the gradient lab on synthetic tiny data: wiring, hard selection, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sidestep.lab.estimators import ESTIMATORS, surrogate
from sidestep.lab.judge import CascadeJudge
from sidestep.lab.retrieval import (
    QueryScorer,
    RetrievalConfig,
    RetrievalData,
    controls,
    evaluate,
    report_rows,
    run_retrieval,
    train_one,
)
from sidestep.lab.selection import hard_topk

TINY = RetrievalConfig(k=3, steps=6, batch=4, eval_every=3, samples=4)


def tiny_data(q: int = 16, n: int = 8, d: int = 6, seed: int = 0) -> RetrievalData:
    """q queries over n candidates each; documents with one or two chunks; a relevant document is the one
    whose first chunk lies closest to the query plus a hidden rotation of it, so a query adapter has something
    to learn."""
    g = torch.Generator().manual_seed(seed)
    docs = 24
    chunk_vecs = torch.nn.functional.normalize(torch.randn(docs * 2, d, generator=g), dim=-1)
    doc_chunks = torch.stack([torch.arange(docs) * 2, torch.arange(docs) * 2 + 1], 1)
    chunk_mask = torch.ones(docs, 2, dtype=torch.bool)
    chunk_mask[::3, 1] = False  # every third document has one chunk
    qvec = torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=-1)
    cand = torch.stack([torch.randperm(docs, generator=g)[:n] for _ in range(q)])
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    first = chunk_vecs[doc_chunks[cand][..., 0]]  # (q, n, d)
    target = (first @ (qvec + qvec @ rot.T).unsqueeze(-1)).squeeze(-1)  # (q, n): half what recall sees
    gains = torch.zeros(q, n)
    gains[torch.arange(q), target.argmax(-1)] = 1.0
    gains[0] = 0.0  # a query whose relevant document recall missed
    idcg = torch.ones(q)
    split = ["train"] * 8 + ["val"] * 4 + ["test"] * (q - 12)
    return RetrievalData(name="tiny", qids=[f"q{i}" for i in range(q)], split=split, qvec=qvec, cand=cand,
                         doc_chunks=doc_chunks, chunk_mask=chunk_mask, chunk_vecs=chunk_vecs,
                         feats=torch.randn(q, n, 2, generator=g), gains=gains, idcg=idcg,
                         n_relevant=torch.ones(q), no_overlap=[i % 2 == 0 for i in range(q)],
                         feature_names=("a", "b"))


def test_the_scorer_starts_as_dense_recall_best_chunk_cosine():
    data = tiny_data()
    rows = torch.arange(4)
    s = QueryScorer(6, 2, scale=20.0)(data, rows)
    want = torch.tensor([[max(float(data.chunk_vecs[data.doc_chunks[c, j]] @ data.qvec[r])
                               for j in range(2) if data.chunk_mask[c, j]) for c in data.cand[r]]
                         for r in rows]) * 20.0
    assert torch.allclose(s, want, atol=1e-4)


def test_evaluation_reads_only_the_hard_top_k():
    data = tiny_data()
    rows = data.rows("test")
    scores = torch.randn(len(rows), data.cand.shape[1], generator=torch.Generator().manual_seed(1))
    base = evaluate(lambda r: scores[: len(r)], data, rows, k=3)
    # lowering every score outside the top 3 changes nothing; swapping a top-3 item out does
    top = scores.topk(3, -1).indices
    lowered = scores.clone()
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter(1, top, True)
    lowered[~keep] -= 5.0
    again = evaluate(lambda r: lowered[: len(r)], data, rows, k=3)
    assert np.allclose(base["ndcg@10"], again["ndcg@10"]) and np.allclose(base["recall@10"], again["recall@10"])
    # by hand: nDCG of a single relevant document at 1-based rank p is 1 / log2(p + 1)
    for i, r in enumerate(rows):
        rel = int(data.gains[r].argmax())
        order = scores[i].argsort(descending=True).tolist()
        want = 1.0 / math.log2(order.index(rel) + 2) if order.index(rel) < 3 else 0.0
        assert base["ndcg@10"][i] == pytest.approx(want)


class Recorder:
    """A judge that remembers every selection it is asked to score."""

    def __init__(self, rewards: torch.Tensor):
        self.inner = CascadeJudge(rewards)
        self.rewards = rewards
        self.seen: list[torch.Tensor] = []

    def loss(self, selection: torch.Tensor) -> torch.Tensor:
        self.seen.append(selection.detach())
        return self.inner.loss(selection)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_the_selection_is_hard_in_forward_for_every_estimator(name):
    """What the judge reads in forward is a hard top-k pick (one-hot rows: of the scores, or of the scores plus
    the estimator's noise), or, for the relaxations at a vanishing temperature, numerically that pick; the
    estimators that read rewards directly read them of the picked documents only, except sidestep, which by
    design trains on every candidate around the pick."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 8, generator=g, dtype=torch.float64)
    rewards = torch.rand(3, 8, generator=g, dtype=torch.float64)
    k = 3
    judge = Recorder(rewards)
    out = surrogate(name, scores.clone().requires_grad_(True), judge, k, samples=4, tau=1e-4, sigma=0.5,
                    generator=torch.Generator().manual_seed(1))
    assert out.shape == (3,)
    for sel in judge.seen:
        assert sel.shape[-2:] == (k, 8)
        if name == "perturbed":  # a Monte-Carlo mean of hard picks: entries are multiples of 1 / samples
            one = torch.ones((), dtype=sel.dtype)
            assert torch.allclose(sel * 4, (sel * 4).round(), atol=1e-9) and torch.allclose(sel.sum(-1), one)
        else:  # one-hot rows, distinct items
            assert torch.allclose(sel.max(-1).values, torch.ones((), dtype=sel.dtype), atol=1e-6)
            assert (sel.argmax(-1).sort(-1).values.diff(dim=-1) > 0).all()
    if name == "softsort":  # deterministic: exactly the hard top k of the scores
        assert torch.allclose(judge.seen[0], hard_topk(scores, k), atol=1e-6)
    if name in ("sidestep", "marginal_likelihood"):
        assert not judge.seen
    if name == "marginal_likelihood":  # rewards outside the picked top k are never read
        other = rewards.clone()
        outside = torch.ones_like(other, dtype=torch.bool).scatter(1, scores.topk(k, -1).indices, False)
        other[outside] = torch.rand(int(outside.sum()), generator=g, dtype=torch.float64)
        again = surrogate(name, scores, CascadeJudge(other), k)
        assert torch.allclose(out.detach(), again)


def test_training_is_wired_and_every_estimator_moves_the_scorer():
    data = tiny_data()
    rep = run_retrieval([data], TINY, seeds=2)
    assert rep["task"] == "retrieval" and set(rep["estimators"]) == set(ESTIMATORS)
    ds = rep["datasets"]["tiny"]
    assert ds["queries"] == {"train": 8, "val": 4, "test": 4} and ds["trainable_queries"] == 7
    assert {"identity", "a", "b", "fusion", "best_untrained"} <= set(ds["controls"])
    assert ds["controls"]["best_untrained"]["ranker"] in ("a", "b", "fusion")
    for name, r in ds["estimators"].items():
        assert r["steps_done"] == [6, 6] and len(r["per_seed"]) == 2
        assert [c["step"] for c in r["per_seed"][0]["curve"]] == [0, 3, 6]
        assert 0.0 <= r["ndcg@10_mean"] <= 1.0 and r["saved_mb"] > 0
        assert not math.isnan(r["no_overlap_ndcg@10_mean"])
        moved = [p["adapter_distance"] for p in r["per_seed"]]
        assert all(m > 0 for m in moved), (name, moved)  # a gradient reached the query side
    rows = report_rows(rep)
    assert {r["section"] for r in rows} == {"control", "result", "curve", "delta"}
    assert any(r["metric"] == "tiny/val_ndcg@10" and r["step"] == 6 for r in rows)
    assert all(math.isfinite(r["value"]) for r in rows)


def test_per_query_results_are_kept_and_paired_intervals_pool_every_seed():
    rep = run_retrieval([tiny_data()], TINY, estimators=["sidestep", "straight_through"], seeds=2)
    ds = rep["datasets"]["tiny"]
    side = np.asarray([ps["test_per_query"]["ndcg@10"] for ps in ds["estimators"]["sidestep"]["per_seed"]])
    st = np.asarray([ps["test_per_query"]["ndcg@10"] for ps in ds["estimators"]["straight_through"]["per_seed"]])
    best = np.asarray(ds["controls"]["best_untrained"]["test_per_query"]["ndcg@10"])
    assert side.shape == st.shape == (2, 4) and best.shape == (4,)
    assert side.mean(1) == pytest.approx([ps["test"]["ndcg@10"] for ps in ds["estimators"]["sidestep"]["per_seed"]])
    ci = ds["intervals"]
    assert set(ci) == {"sidestep-best_untrained", "straight_through-sidestep"}
    a = ci["sidestep-best_untrained"]["all"]["ndcg@10"]
    assert a["seeds"] == 2 and a["units"] == 4 and a["mean"] == pytest.approx(float((side - best).mean()))
    b = ci["straight_through-sidestep"]["all"]["ndcg@10"]
    assert b["mean"] == pytest.approx(float((st - side).mean())) and b["lo"] <= b["mean"] <= b["hi"]
    alone = np.asarray([tiny_data().no_overlap[int(i)] for i in tiny_data().rows("test")])
    if alone.any():
        n = ci["straight_through-sidestep"]["no_overlap"]["ndcg@10"]
        assert n["units"] == int(alone.sum()) and n["mean"] == pytest.approx(float((st - side)[:, alone].mean()))


def test_the_controls_are_the_untrained_rankers():
    data = tiny_data()
    ctl = controls(data, k=3)
    ident = evaluate(lambda r: QueryScorer(6, 2)(data, r), data, data.rows("test"), k=3)
    assert ctl["identity"]["test"]["ndcg@10"] == pytest.approx(float(ident["ndcg@10"].mean()))
    fused = evaluate(lambda r: data.feats[r].sum(-1), data, data.rows("test"), k=3)
    assert ctl["fusion"]["test"]["ndcg@10"] == pytest.approx(float(fused["ndcg@10"].mean()))


@pytest.mark.parametrize("name", ["reinforce", "gumbel_softmax", "sidestep"])
def test_a_seed_reproduces_its_run(name):
    data = tiny_data()
    a = train_one(name, data, TINY, seed=3)
    b = train_one(name, data, TINY, seed=3)
    assert a["curve"] == b["curve"] and a["test"] == b["test"] and a["mix"] == b["mix"]
    assert float(a["test_per_query"]["ndcg@10"].mean()) == pytest.approx(a["test"]["ndcg@10"])
    c = train_one(name, data, TINY, seed=4)
    assert c["mix"] != a["mix"]  # another seed draws other batches (and noise)


def test_a_deadline_stops_training_early_and_says_so():
    data = tiny_data()
    rep = run_retrieval([data], TINY, estimators=["sidestep"], seeds=1, budget_seconds=0.0)
    assert rep["truncated"] and rep["datasets"]["tiny"]["estimators"]["sidestep"]["steps_done"] == [0]


def test_unknown_estimators_are_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown estimators"):
        run_retrieval([tiny_data()], TINY, estimators=["nope"])
