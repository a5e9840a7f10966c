"""The query adapter: it learns what the raw token maps miss, and the identity competes."""

from __future__ import annotations

import io

import numpy as np
import torch

from sidestep.verify.adapter import TokenPool, evaluate, fit_adapter, list_maxsim, token_list
from sidestep.verify.features import adapt, flat_maxsim, flatten_tokens, normalize
from sidestep.verify.model import Verifier, VerifierConfig


def _lists(rng: np.random.Generator, rot: torch.Tensor, n: int, dim: int = 8) -> list:
    """Each query's positive matches its tokens turned by `rot`; its three negatives match them unturned,
    so raw MaxSim ranks every negative first."""
    out = []
    for _ in range(n):
        q = normalize(rng.normal(size=(3, dim)).astype(np.float32))
        noise = lambda: 0.1 * torch.from_numpy(rng.normal(size=(3, dim)).astype(np.float32))  # noqa: E731
        filler = lambda: torch.from_numpy(rng.normal(size=(4, dim)).astype(np.float32))  # noqa: E731
        pos = torch.cat([q @ rot.T + noise(), filler()])
        negs = [torch.cat([q + noise(), filler()]) for _ in range(3)]
        order = rng.permutation(4)
        docs = [([pos] + negs)[i].numpy() for i in order]
        gains = (order == 0).astype(np.float32)
        out.append(token_list(q, flatten_tokens(docs, 64), gains))
    return out


def _rotation(rng: np.random.Generator, dim: int = 8) -> torch.Tensor:
    return torch.from_numpy(np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32))


def test_the_adapter_learns_a_turn_of_the_query_that_raw_maxsim_misses():
    rng = np.random.default_rng(0)
    rot = _rotation(rng)
    train, val = _lists(rng, rot, 48), _lists(rng, rot, 16)
    a, curve = fit_adapter(train, val, 8, epochs=25, lr=0.05, reg=0.0, batch_queries=8)
    assert curve[0]["val_ndcg10"] < 0.6  # the identity puts the three unturned negatives first
    assert evaluate(a, val) > 0.95
    assert max(c["val_ndcg10"] for c in curve) == evaluate(a, val)


def test_the_identity_is_kept_when_no_epoch_beats_it_on_held_out_queries():
    rng = np.random.default_rng(1)
    # trained on one turn, validated on another: held-out lists never prefer what training learned
    train, val = _lists(rng, _rotation(rng), 32), _lists(rng, torch.eye(8), 12)
    a, curve = fit_adapter(train, val, 8, epochs=5, lr=0.05, reg=0.0, batch_queries=8)
    assert max(c["val_ndcg10"] for c in curve[1:]) <= curve[0]["val_ndcg10"]
    assert torch.equal(a, torch.eye(8))


def test_adapted_maxsim_is_the_verify_paths_maxsim_of_the_adapted_query():
    rng = np.random.default_rng(2)
    q = normalize(rng.normal(size=(4, 8)).astype(np.float32))
    docs = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 7, 5)]
    a = torch.from_numpy(rng.normal(size=(8, 8)).astype(np.float32))
    tl = token_list(q, flatten_tokens(docs, 64), np.zeros(3, np.float32))
    expected = flat_maxsim(adapt(a, q), flatten_tokens(docs, 64)) / 4
    torch.testing.assert_close(list_maxsim(a, tl), expected, atol=2e-3, rtol=1e-3)  # float16 document tokens
    model = Verifier(VerifierConfig(), 8)
    torch.testing.assert_close(model.adapt(q), q)  # a new model's adapter is the identity
    with torch.no_grad():
        model.adapter.copy_(a)
    torch.testing.assert_close(model.adapt(q), adapt(a, q))


def test_lists_over_a_shared_pool_score_and_train_like_lists_with_their_own_tokens():
    """Training lists share their candidates' tokens through one pool: each list's adapted MaxSim and its
    gradient equal those of a list holding its own copy, and the pool holds every document once."""
    rng = np.random.default_rng(4)
    docs = {f"d{i}": rng.normal(size=(int(rng.integers(2, 90)), 8)).astype(np.float32) for i in range(12)}
    reads = []

    def read(ids):
        reads.extend(ids)
        return flatten_tokens([docs[d] for d in ids], 64)

    pool = TokenPool(list(docs), read, batch=5)
    assert sorted(reads) == sorted(docs) and len(pool.vecs) == sum(min(len(x), 64) for x in docs.values())
    a = torch.nn.Parameter(torch.eye(8) + 0.3 * torch.from_numpy(rng.normal(size=(8, 8)).astype(np.float32)))
    for ids in (["d3", "d0", "d7"], ["d7", "d11", "d1", "d3", "d5"]):
        q = normalize(rng.normal(size=(4, 8)).astype(np.float32))
        gains = np.eye(len(ids), dtype=np.float32)[1]
        own = token_list(q, flatten_tokens([docs[d] for d in ids], 64), gains)
        shared = pool.token_list(q, ids, gains)
        assert shared.docs is pool.vecs  # no copy
        grads = []
        for tl in (own, shared):
            s = list_maxsim(a, tl)
            (g,) = torch.autograd.grad(s @ torch.arange(1.0, len(ids) + 1), a)
            grads.append((s.detach(), g))
        torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
        torch.testing.assert_close(grads[0][1], grads[1][1])


def test_the_adapter_travels_with_the_model_and_old_versions_load_as_the_identity(data_root):
    from sidestep.storage.atomic import write_bytes
    from sidestep.storage.verifiers import MODEL_FILE, load_verifier, publish_verifier, verifier_store

    model = Verifier(VerifierConfig(), 8)
    a = torch.from_numpy(np.random.default_rng(3).normal(size=(8, 8)).astype(np.float32))
    with torch.no_grad():
        model.adapter.copy_(a)
    publish_verifier(data_root, "ad", "v1", model, {"index_version": "x"}, keep=3)
    assert torch.equal(load_verifier(data_root, "ad").model.adapter, a)
    # a version published before the adapter existed: its state has no "adapter"
    old = Verifier(VerifierConfig(), 8)
    buf = io.BytesIO()
    torch.save({"config": old.cfg.as_dict(), "dim": 8,
                "state": {k: t for k, t in old.state_dict().items() if k != "adapter"}}, buf)
    store = verifier_store(data_root)
    with store.lock("ad"), store.staging("ad") as staged:
        write_bytes(staged / MODEL_FILE, buf.getvalue())
        store.publish("ad", staged, "v2", {"index_version": "x"})
    loaded = load_verifier(data_root, "ad")
    assert loaded.version == "v2" and torch.equal(loaded.model.adapter, torch.eye(8))
