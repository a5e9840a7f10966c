"""The rec lab's learned codes: the straight-through estimators and the commitment loss against their known forms,
the paired bootstrap, and the rec task end to end on a small synthetic catalogue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sidestep.eval.bootstrap import paired_bootstrap
from sidestep.ingest.records import Interaction
from sidestep.lab.quantiser import RQCodes, commitment_loss, straight_through, straight_through_onehot
from sidestep.lab.rec import ARMS, RecLabConfig, RecLabData, report_rows, run_rec
from sidestep.rec.data import build_splits

D = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_straight_through_is_the_quantised_value_forward_and_the_identity_backward():
    z = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]], dtype=D, requires_grad=True)
    q = torch.tensor([[0.0, -1.0, 1.0], [2.5, 0.0, 0.0]], dtype=D, requires_grad=True)
    out = straight_through(z, q)
    assert torch.equal(out, q.detach())
    g = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]], dtype=D)
    out.backward(g)
    assert torch.equal(z.grad, g)  # the identity: every upstream gradient reaches the encoder unchanged
    assert q.grad is None or torch.count_nonzero(q.grad) == 0


def test_commitment_loss_has_the_vq_vae_form_in_value_and_gradients():
    beta = 0.25
    z = torch.tensor([[0.3, -1.2], [2.0, 0.1], [0.0, 0.5]], dtype=D, requires_grad=True)
    q = torch.tensor([[0.0, -1.0], [2.5, 0.0], [1.0, 1.0]], dtype=D, requires_grad=True)
    loss = commitment_loss(z, q, beta)
    n = z.numel()
    sq = ((z - q) ** 2).sum() / n
    assert float(loss.detach()) == pytest.approx((1 + beta) * float(sq.detach()), rel=1e-12)
    loss.backward()
    # beta * |z - sg(q)|^2 moves only the encoder, |sg(z) - q|^2 only the codeword
    assert torch.allclose(z.grad, 2 * beta * (z - q).detach() / n)
    assert torch.allclose(q.grad, 2 * (q - z).detach() / n)


def test_the_straight_through_one_hot_is_hard_forward_and_the_softmax_backward():
    dist = torch.tensor([[0.5, 0.1, 2.0, 0.3]], dtype=D, requires_grad=True)
    tau = 0.7
    idx, onehot = straight_through_onehot(dist, tau)
    assert idx.tolist() == [1] and torch.equal(onehot.detach(), torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=D))
    table = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=D)
    (onehot @ table).sum().backward()
    p = torch.softmax(-dist.detach() / tau, -1)
    v = table[:, 0]
    expected = -(p * (v - (p * v).sum())) / tau  # d/d dist of softmax(-dist / tau) . v
    assert torch.allclose(dist.grad, expected)


def test_the_sequence_loss_reaches_the_encoder_and_codebooks_through_the_codes():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(40, 12), dim=-1)
    rq = RQCodes(12, levels=3, codewords=8, latent=4, hidden=16)
    rq.init_codebooks(x)
    out = rq(x)
    assert out.codes.shape == (40, 3) and out.onehot.shape == (40, 3, 8)
    table = torch.randn(3, 8, 5)
    items = torch.einsum("nlk,lkh->nh", out.onehot, table) / 3
    exact = table[torch.arange(3), out.codes].mean(1)  # the hard lookup
    assert torch.allclose(items, exact, atol=1e-6)
    items.square().sum().backward()
    assert rq.encoder[0].weight.grad.abs().sum() > 0 and rq.codebooks.grad.abs().sum() > 0
    assert rq.decoder[0].weight.grad is None  # the sequence path does not touch the decoder


def test_paired_bootstrap_pools_seeds_and_covers_the_mean_difference():
    rng = np.random.default_rng(0)
    b = rng.random((3, 400))
    a = b + 0.05 + rng.normal(0, 0.01, (3, 400))
    ci = paired_bootstrap(a, b, draws=500)
    assert ci["seeds"] == 3 and ci["units"] == 400
    assert ci["lo"] < 0.05 < ci["hi"] and ci["hi"] - ci["lo"] < 0.01 and ci["p_above_0"] == 1.0
    same = paired_bootstrap(b, b, draws=200)
    assert same["mean"] == 0.0 and same["lo"] == 0.0 == same["hi"]
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:2])


def synthetic_domain(name: str, n_items: int = 60, users: int = 80, length: int = 7, seed: int = 0) -> RecLabData:
    """Users walk a cycle of items whose text vectors are smooth in the item index."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, n_items, endpoint=False)
    vecs = np.stack([np.cos(angles), np.sin(angles), *rng.normal(0, 0.2, (14, n_items))], 1).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"{name}{i:03d}" for i in range(n_items)]
    rows = []
    for u in range(users):
        s = int(rng.integers(n_items))
        rows.append(Interaction(f"u{u}", tuple(ids[(s + t) % n_items] for t in range(length)), None, "all"))
    return RecLabData(name, vecs, build_splits(rows, ids, max_history=10), {"synthetic": True})


def test_the_rec_task_runs_both_arms_in_domain_and_in_transfer_with_controls_and_intervals():
    cfg = RecLabConfig(positions=2, bits=3, hidden=16, layers=1, inner=32, max_history=10, steps=6, batch=32,
                       eval_every=3, latent=4, quantiser_steps=5, source="b", target="a", bootstrap=100)
    domains = {"a": synthetic_domain("a"), "b": synthetic_domain("b", seed=1)}
    rep = run_rec(domains, cfg, seeds=2)
    for name in domains:
        d = rep["domains"][name]
        assert set(d["arms"]) == set(ARMS) and set(d["controls"]) == {"popularity", "text_only"}
        for arm in ARMS:
            r = d["arms"][arm]
            assert len(r["per_seed"]) == 2 and r["steps_done"] == [6, 6] and 0 <= r["ndcg@10_mean"] <= 1
            assert r["saved_mb_mean"] > 0 and len(r["codes"]) == 2
        ci = d["learned_minus_frozen"]["ndcg@10"]
        assert ci["seeds"] == 2 and ci["units"] == d["counts"]["test_users"] and ci["lo"] <= ci["hi"]
    t = rep["transfer"]
    assert (t["source"], t["target"]) == ("b", "a")
    assert set(t["settings"]) == {"transfer", "no_transfer", "zero_shot"}
    assert set(t["transfer_minus_no_transfer"]) == set(ARMS)
    rows = report_rows(rep)
    assert {r["section"] for r in rows} == {"result", "control", "delta", "curve"}
    assert all(math.isfinite(r["value"]) for r in rows)
    assert any(r["metric"] == "transfer/a/ndcg@10_mean" and r["estimator"] == "learned" for r in rows)
    assert set(rep["estimators"]) == set(ARMS)


def test_table_only_transfer_leaves_the_encoder_and_the_source_quantiser_untouched(monkeypatch):
    """The learned arm's quantiser and the encoder are bit-identical before and after the transfer runs."""
    import sidestep.lab.rec as lab_rec

    snaps = {}
    real = lab_rec.train_run

    def spy(model, domain, arm, data, cfg, mode, seed, **kw):
        if mode == "table-only":
            before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
            out = real(model, domain, arm, data, cfg, mode, seed, **kw)
            snaps.setdefault(arm.kind, []).append(all(torch.equal(before[k], v)
                                                      for k, v in model.encoder.state_dict().items()))
            return out
        return real(model, domain, arm, data, cfg, mode, seed, **kw)

    monkeypatch.setattr(lab_rec, "train_run", spy)
    cfg = RecLabConfig(positions=2, bits=3, hidden=16, layers=1, inner=32, max_history=10, steps=4, batch=32,
                       eval_every=2, latent=4, quantiser_steps=3, source="b", target="a", bootstrap=50)
    run_rec({"a": synthetic_domain("a"), "b": synthetic_domain("b", seed=1)}, cfg, seeds=1)
    assert snaps == {"frozen": [True, True], "learned": [True, True]}


def test_a_budget_of_zero_stops_every_run_before_its_first_step_and_says_so():
    cfg = RecLabConfig(positions=2, bits=3, hidden=16, layers=1, inner=32, max_history=10, steps=5, batch=32,
                       eval_every=5, latent=4, quantiser_steps=2, source="b", target="a", bootstrap=20)
    rep = run_rec({"a": synthetic_domain("a"), "b": synthetic_domain("b", seed=1)}, cfg, seeds=1, budget_seconds=0.0)
    assert rep["truncated"] and rep["run_cap_seconds"] == 0.0
    assert all(r["steps_done"] == [0] for d in rep["domains"].values() for r in d["arms"].values())
