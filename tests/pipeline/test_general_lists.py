"""The general verifier's self-supervised lists and fine-tuning, on synthetic token vectors (no encoder): each
training list holds its query's own document as the one positive, validation lists keep the whole recall list
with gain 1 there, and fine-tuning from a verifier lets that verifier compete as epoch 0."""

from __future__ import annotations

import numpy as np
import torch

from sidestep.pipeline.general import self_supervised_lists
from sidestep.pipeline.rankers import PseudoSet
from sidestep.pipeline.selfsup import MemoryTokens
from sidestep.retrieval.search import TokenView
from sidestep.verify.crops import PseudoQuery
from sidestep.verify.model import VerifierConfig, fit

DIM, VOCAB = 8, 40


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pseudo_set(n_docs: int = 12, n_queries: int = 10) -> PseudoSet:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(n_docs)]
    toks = {d: _unit(rng.normal(size=(int(rng.integers(6, 12)), DIM))) for d in ids}
    pieces = {d: rng.integers(0, VOCAB, len(t)).astype(np.int32) for d, t in toks.items()}
    view = TokenView(MemoryTokens(toks), pieces, np.ones(VOCAB, np.float32))
    qs, pos, qtoks, qpieces, dense = [], [], [], [], []
    for j in range(n_queries):
        p = ids[j]
        qs.append(PseudoQuery(j, f"query {j}", f"text {j}", "crop"))
        pos.append(p)
        # the query's tokens: its document's first tokens plus noise, with [CLS]/[SEP] rows around them
        inner = _unit(toks[p][:4] + 0.3 * rng.normal(size=(4, DIM)))
        qtoks.append(np.concatenate([np.zeros((1, DIM), np.float32), inner, np.zeros((1, DIM), np.float32)]))
        qpieces.append([101, *pieces[p][:4].tolist(), 102])
        order = rng.permutation(n_docs)
        dense.append([(ids[k], float(1 - r / n_docs)) for r, k in enumerate(order)])
    return PseudoSet(qs, pos, view, np.zeros((n_queries, DIM), np.float32), qtoks, qpieces, dense, ids,
                     [None] * n_docs, [""] * n_docs)


def test_lists_hold_their_own_document_and_fine_tuning_starts_from_the_given_verifier(settings):
    s = settings.model_copy(update={"verify": settings.verify.model_copy(update={
        "near_misses": 0, "candidates": 12, "train_top": 0})})
    ps = _pseudo_set()
    train, val = self_supervised_lists(ps, s, None, n_val=2, seed=0)
    assert len(train) == 8 and len(val) == 2
    for ex in train:
        assert int(ex.labels.sum()) == 1 and ex.cands.feats.shape[0] == 12 and len(ex.pairs) == 0
    for j, (c, gains) in zip((8, 9), val, strict=True):
        ids = [d for d, _ in ps.dense[j]]
        assert gains.sum() == 1 and ids[int(np.argmax(gains))] == ps.positives[j] and c.feats.shape[0] == 12
    torch.manual_seed(0)
    base, curve = fit(train, val, VerifierConfig(), DIM, epochs=1, seed=0)
    assert [c["epoch"] for c in curve] == [1]
    tuned, curve2 = fit(train, val, VerifierConfig(), DIM, epochs=1, seed=1, init=base, lr=1e-5)
    assert curve2[0]["epoch"] == 0 and curve2[0]["val_ndcg10"] == curve[0]["val_ndcg10"]  # the start competes
    best = max(curve2, key=lambda c: c["val_ndcg10"])
    if best["epoch"] == 0:  # kept the verifier it started from
        assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values(),
                                                      strict=True))
