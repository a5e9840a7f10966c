"""The gradient lab: each estimator against a reference on a tiny case, the enumeration against finite
differences, and the lab flow end to end on a tiny grid.

Statistical checks use the measured standard error: every coordinate of the mean of D independent
estimates must lie within Z standard errors of the reference (Z = 4.5: with a fixed seed the draw is
reproducible, and a chance miss would be a one-in-100000 event per coordinate). Each such check also
asserts that its standard error is small next to the gradient, so that a real bias would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from sidestep.lab import ESTIMATORS, grad
from sidestep.lab.judge import CascadeJudge
from sidestep.lab.planted import PlantedConfig, exact, expected_loss, measure, report_rows, run_planted
from sidestep.lab.selection import (
    gumbel_noise,
    hard_topk,
    ordered_selections,
    pl_log_prob,
    relaxed_topk,
    softsort,
)

D = torch.float64
Z = 4.5
THETA = torch.tensor([0.3, -0.2, 0.8, -0.5], dtype=D)
JUDGE = CascadeJudge(torch.tensor([0.1, 0.9, 0.0, 0.6], dtype=D))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class LinearJudge:
    """A loss linear in the selection: sum_j sum_i P[j, i] cost[j, i]."""

    rewards: torch.Tensor
    cost: torch.Tensor  # (k, n)

    def loss(self, selection: torch.Tensor) -> torch.Tensor:
        return (selection * self.cost).sum((-2, -1))


def _draws(name: str, theta: torch.Tensor, judge, k: int, draws: int, seed: int = 0, **knobs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return grad(name, theta.expand(draws, theta.shape[0]), judge, k, generator=gen, **knobs)


def _z_scores(estimates: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    return (estimates.mean(0) - reference) / se, se


# -- the exact reference ----------------------------------------------------------------------------

def test_enumeration_gradient_equals_finite_differences_of_the_exact_expected_loss():
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(5, generator=gen, dtype=D)
    judge = CascadeJudge(torch.rand(5, generator=gen, dtype=D))
    idx = ordered_selections(5, 3)
    assert len(idx) == 60 and float(pl_log_prob(theta, idx).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    _, g = exact(theta, judge, 3)
    h = 1e-6
    fd = torch.stack([(expected_loss(theta + h * e, judge, 3) - expected_loss(theta - h * e, judge, 3)) / (2 * h)
                      for e in torch.eye(5, dtype=D)])
    assert float(g.norm()) > 0.05
    torch.testing.assert_close(g, fd, rtol=0, atol=1e-8)


def test_gumbel_topk_samples_follow_the_plackett_luce_probabilities_the_enumeration_uses():
    n_draws = 40000
    g = gumbel_noise((n_draws, 4), generator=torch.Generator().manual_seed(0))
    picks = (THETA + g).topk(2, dim=-1).indices
    idx = ordered_selections(4, 2)
    p = pl_log_prob(THETA, idx).exp()
    counts = torch.stack([(picks == row).all(-1).sum() for row in idx]).to(D)
    z = (counts - n_draws * p) / (n_draws * p * (1 - p)).sqrt()
    assert float(z.abs().max()) < Z


def test_the_cascade_judge_scores_a_selection_by_expected_reciprocal_rank():
    judge = CascadeJudge(torch.tensor([0.5, 1.0, 0.0], dtype=D))
    order = torch.nn.functional.one_hot(torch.tensor([0, 1]), 3).to(D)
    # stop at 1 with 0.5 (gain 1), else at 2 with 1.0 (gain 1/2): 0.5 + 0.5 * 0.5; the best order (1, 0) gives 1
    assert float(judge.err(order)) == pytest.approx(0.75) and float(judge.loss(order)) == pytest.approx(0.25)
    assert float(judge.loss(order.flip(0))) == pytest.approx(0.0)
    assert float(CascadeJudge(torch.zeros(3, dtype=D)).loss(order)) == 0.0


# -- unbiased estimators ----------------------------------------------------------------------------

def test_reinforce_is_unbiased_for_the_exact_gradient():
    _, g_star = exact(THETA, JUDGE, 2)
    z, se = _z_scores(_draws("reinforce", THETA, JUDGE, 2, 20000, samples=4), g_star)
    assert float(se.max()) < 0.02 * float(g_star.norm())  # enough draws to see a bias
    assert float(z.abs().max()) < Z, z


def test_the_z_check_catches_a_baseline_that_includes_the_sample_itself():
    """The same check on REINFORCE with a self-including mean baseline, which shrinks the gradient by
    (M - 1) / M: it must fail, or the check above proves nothing."""
    _, g_star = exact(THETA, JUDGE, 2)
    m, draws = 4, 20000
    s = THETA.expand(draws, 4).clone().requires_grad_(True)
    noise = gumbel_noise((m, draws, 4), generator=torch.Generator().manual_seed(0))
    idx = (s.detach() + noise).topk(2, dim=-1).indices
    losses = JUDGE.loss(torch.nn.functional.one_hot(idx, 4).to(D))
    surrogate = ((losses - losses.mean(0)) * pl_log_prob(s, idx)).mean(0)
    (biased,) = torch.autograd.grad(surrogate.sum(), s)
    z, _ = _z_scores(biased, g_star)
    assert float(z.abs().max()) > 3 * Z
    z, _ = _z_scores(biased, g_star * (m - 1) / m)
    assert float(z.abs().max()) < Z


def _gaussian_perturbed_linear_objective(theta: torch.Tensor, cost: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[<cost, hard_topk(theta + sigma Z, 2)>] for n = 3 exactly, by 1-D Gauss-Hermite quadrature: with the
    middle item b at x,
    P(a > b > c) = int N(x; theta_b, sigma) Phi((theta_a - x) / sigma) Phi((x - theta_c) / sigma)."""
    import numpy as np

    t, w = (torch.tensor(a, dtype=D) for a in np.polynomial.hermite.hermgauss(80))
    total, mass = torch.zeros((), dtype=D), torch.zeros((), dtype=D)
    for a, b, c in ordered_selections(3, 3).tolist():
        x = theta[b] + math.sqrt(2.0) * sigma * t
        p = (w * torch.special.ndtr((theta[a] - x) / sigma) * torch.special.ndtr((x - theta[c]) / sigma)).sum()
        p = p / math.sqrt(math.pi)
        total, mass = total + p * (cost[0, a] + cost[1, b]), mass + p
    assert float(mass) == pytest.approx(1.0, abs=1e-10)
    return total


def test_perturbed_optimizer_is_unbiased_for_the_gaussian_perturbed_objective():
    """With a loss linear in the selection, Berthet et al.'s Jacobian estimator is the gradient of the
    Gaussian-perturbed expected loss; the reference is finite differences of that objective, computed
    exactly by quadrature."""
    theta, sigma = torch.tensor([0.2, -0.1, 0.5], dtype=D), 0.5
    cost = torch.tensor([[0.3, -1.0, 0.4], [-0.2, 0.1, 0.7]], dtype=D)
    judge = LinearJudge(torch.zeros(3, dtype=D), cost)
    h = 1e-5
    ref = torch.stack([(_gaussian_perturbed_linear_objective(theta + h * e, cost, sigma)
                        - _gaussian_perturbed_linear_objective(theta - h * e, cost, sigma)) / (2 * h)
                       for e in torch.eye(3, dtype=D)])
    z, se = _z_scores(_draws("perturbed", theta, judge, 2, 40000, samples=2, sigma=sigma), ref)
    assert float(se.max()) < 0.03 * float(ref.norm())
    assert float(z.abs().max()) < Z, (z, ref)


# -- biased estimators: the bias has its known form ----------------------------------------------

def test_gumbel_softmax_bias_shrinks_as_tau_falls_while_its_variance_grows():
    _, g_star = exact(THETA, JUDGE, 2)
    rows = [measure("gumbel_softmax", THETA, JUDGE, 2, g_star, draws=20000, samples=1, tau=tau, sigma=1.0, seed=1)
            for tau in (1.0, 0.5, 0.3)]
    assert rows[0]["bias"] > 20 * rows[0]["bias_noise_floor"]  # biased at tau = 1, far beyond noise
    for hot, cold in zip(rows, rows[1:], strict=False):
        assert hot["bias"] - cold["bias"] > 3 * (hot["bias_noise_floor"] + cold["bias_noise_floor"])
        assert cold["variance"] > 1.5 * hot["variance"]


def test_relaxed_topk_for_k1_is_torchs_gumbel_softmax_and_tends_to_the_hard_pick():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.0], dtype=D)
    torch.manual_seed(11)
    expected = torch.nn.functional.gumbel_softmax(logits, tau=0.7)
    torch.manual_seed(11)
    got = relaxed_topk(logits + gumbel_noise(logits.shape), 1, 0.7)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    z = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.05], dtype=D)
    torch.testing.assert_close(relaxed_topk(z, 3, 1e-3), hard_topk(z, 3), rtol=0, atol=1e-9)
    assert float((relaxed_topk(z, 3, 1.0) - hard_topk(z, 3)).abs().max()) > 0.1
    # Xie & Ermon's update at tau = 1 multiplies each weight e^alpha by (1 - p): for two items the second
    # row is then (1/2, 1/2) whatever the scores
    pair = torch.tensor([[3.0, -1.0], [0.2, 0.1], [-2.0, 5.0]], dtype=D)
    torch.testing.assert_close(relaxed_topk(pair, 2, 1.0)[:, 1], torch.full((3, 2), 0.5, dtype=D))


def test_straight_through_backward_is_the_relaxed_jacobian_applied_to_the_loss_gradient_at_the_hard_pick():
    m, tau = 3, 0.5
    got = grad("straight_through", THETA, JUDGE, 2, samples=m, tau=tau, generator=torch.Generator().manual_seed(5))
    theta = THETA.clone().requires_grad_(True)
    g = gumbel_noise((m, 4), generator=torch.Generator().manual_seed(5))
    soft = relaxed_topk(theta + g, 2, tau)
    hard = hard_topk(THETA + g, 2).requires_grad_(True)
    (v,) = torch.autograd.grad(JUDGE.loss(hard).sum(), hard)
    (expected,) = torch.autograd.grad(soft, theta, v / m)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the cascade loss is not linear, so this differs from the relaxed (Gumbel-softmax) gradient ...
    relaxed = grad("gumbel_softmax", THETA, JUDGE, 2, samples=m, tau=tau, generator=torch.Generator().manual_seed(5))
    assert float((got - relaxed).norm()) > 0.1 * float(relaxed.norm())
    # ... while for a loss linear in the selection the two are the same
    linear = LinearJudge(JUDGE.rewards, torch.randn(2, 4, dtype=D, generator=torch.Generator().manual_seed(1)))
    same = [grad(n, THETA, linear, 2, samples=m, tau=tau, generator=torch.Generator().manual_seed(5))
            for n in ("straight_through", "gumbel_softmax")]
    torch.testing.assert_close(*same, rtol=1e-12, atol=1e-12)


def test_marginal_likelihood_reaches_only_the_picked_items_with_the_analytic_gradient():
    theta = torch.tensor([0.9, -0.3, 0.4, 1.2, -1.0, 0.1], dtype=D)
    rewards = torch.tensor([0.0, 0.8, 0.5, 0.2, 0.9, 0.0], dtype=D)
    got = grad("marginal_likelihood", theta, CascadeJudge(rewards), 3)
    top = theta.topk(3).indices
    rest = torch.ones(6, dtype=torch.bool)
    rest[top] = False
    assert bool((got[rest] == 0).all())
    p = torch.softmax(theta[top], 0)
    like = (p * rewards[top]).sum()
    torch.testing.assert_close(got[top], -p * (rewards[top] - like) / like, rtol=1e-12, atol=1e-12)
    nothing = torch.tensor([0.0, 0.8, 0.0, 0.0, 0.9, 0.0], dtype=D)  # no reward among the picked
    assert bool((grad("marginal_likelihood", theta, CascadeJudge(nothing), 3) == 0).all())


def test_sidestep_gradient_is_the_softmax_cross_entropy_gradient():
    rewards = torch.tensor([0.1, 0.9, 0.0, 0.6], dtype=D)
    got = grad("sidestep", THETA, CascadeJudge(rewards), 2)
    torch.testing.assert_close(got, torch.softmax(THETA, 0) - rewards / rewards.sum(), rtol=1e-12, atol=1e-12)


def test_softsort_tends_to_the_hard_permutation_and_its_gradient_matches_finite_differences():
    z = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.05], dtype=D)
    torch.testing.assert_close(softsort(z, 5, 1e-3), hard_topk(z, 5), rtol=0, atol=1e-9)
    assert float((softsort(z, 5, 1.0) - hard_topk(z, 5)).abs().max()) > 0.1
    torch.testing.assert_close(softsort(z, 5, 0.3).sum(-1), torch.ones(5, dtype=D))
    got = grad("softsort", THETA, JUDGE, 2, tau=0.5)
    h = 1e-6
    fd = torch.stack([(JUDGE.loss(softsort(THETA + h * e, 2, 0.5))
                       - JUDGE.loss(softsort(THETA - h * e, 2, 0.5))) / (2 * h)
                      for e in torch.eye(4, dtype=D)])
    assert float(got.norm()) > 0.01
    torch.testing.assert_close(got, fd, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_is_finite_shaped_and_reproducible_for_a_seed(name):
    a, b = (grad(name, THETA.expand(5, 4), JUDGE, 2, samples=3, generator=torch.Generator().manual_seed(9))
            for _ in range(2))
    assert a.shape == (5, 4) and bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.norm()) > 0


def test_unknown_estimator_and_bad_k_are_refused():
    with pytest.raises(KeyError, match="known: sidestep"):
        grad("nope", THETA, JUDGE, 2)
    with pytest.raises(ValueError, match="k must be"):
        grad("reinforce", THETA, JUDGE, 5)


# -- the planted report and the flow --------------------------------------------------------------

TINY = {"draws": 20, "steps": 4, "curve_every": 2, "grid_k": [1, 2], "grid_temperature": [0.5],
        "grid_samples": [2]}


def _tiny_cfg() -> PlantedConfig:
    return PlantedConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})


def test_run_planted_reports_every_estimator_and_is_deterministic():
    a, b = (run_planted(_tiny_cfg(), seeds=2) for _ in range(2))
    for r in (a, b):
        for run in r["optimisation"]["estimators"].values():
            run.pop("seconds")
    assert a == b
    assert set(a["estimators"]) == set(ESTIMATORS) == set(a["optimisation"]["estimators"])
    assert a["unbiased_for_exact_gradient"] == ["reinforce"]
    # 2 k x (2 deterministic + softsort + 3 stochastic with a temperature + reinforce), one temperature, one count
    assert len(a["grid"]) == 2 * 7 and not a["truncated"]
    assert {"bias", "variance", "cosine", "targets_exact_gradient"} <= set(a["estimators"]["reinforce"])
    assert a["estimators"]["sidestep"]["variance"] == 0.0 < a["estimators"]["reinforce"]["variance"]


def test_run_planted_stops_at_the_budget_but_keeps_the_headline():
    r = run_planted(_tiny_cfg(), estimators=["sidestep", "reinforce"], seeds=1, budget_seconds=0.0)
    assert set(r["estimators"]) == {"sidestep", "reinforce"} and r["truncated"]
    assert r["grid"] == [] and r["grid_skipped"] == 4
    assert all(run["per_seed"][0]["steps_done"] == 0 for run in r["optimisation"]["estimators"].values())


def test_lab_tasks_and_their_options_are_checked_before_any_work():
    from sidestep.tasks.lab import check_lab_task, planted_config, rec_inputs, retrieval_inputs

    check_lab_task("rec")
    with pytest.raises(ValueError, match="needs datasets"):
        rec_inputs({"steps": 3})
    with pytest.raises(ValueError, match="unknown rec options"):
        rec_inputs({"datasets": [{"dir": "x", "domain": "d"}], "stepz": 3})
    datasets, users, cfg = rec_inputs({"datasets": [{"dir": "x", "domain": "d"}], "users": None, "steps": 7})
    assert users is None and cfg.steps == 7
    check_lab_task("retrieval")
    with pytest.raises(ValueError, match="needs datasets"):
        retrieval_inputs({"steps": 3})
    with pytest.raises(ValueError, match="unknown retrieval options"):
        retrieval_inputs({"datasets": [{"dir": "x", "domain": "d"}], "stepz": 3})
    with pytest.raises(ValueError, match="unknown lab task"):
        check_lab_task("plantd")
    with pytest.raises(ValueError, match="unknown planted options"):
        planted_config({"drawz": 3})


@pytest.mark.slow
@pytest.mark.integration
def test_lab_flow_returns_every_estimator_and_stores_its_rows(data_root):
    from sidestep.flows.lab import lab_flow
    from sidestep.storage.warehouse import Warehouse

    res = lab_flow(task="planted", seeds=2, options=TINY)
    assert res["task"] == "planted" and res["run_id"].startswith("lab-planted-") and res["seconds"] > 0
    assert set(res["estimators"]) == set(ESTIMATORS)
    for name, row in res["estimators"].items():
        assert {"bias", "variance", "cosine", "targets_exact_gradient"} <= set(row), name
        assert math.isfinite(row["bias"]) and row["variance"] >= 0
    assert set(res["optimisation"]["estimators"]) == set(ESTIMATORS) and res["grid"]
    with Warehouse(data_root.eval_db(), read_only=True) as wh:
        runs = wh.query("SELECT task, config FROM lab_runs WHERE run_id = ?", [res["run_id"]]).to_pylist()
        n = wh.query("SELECT count(*) AS n FROM lab_results WHERE run_id = ?", [res["run_id"]]).to_pylist()[0]["n"]
        head = wh.query("SELECT estimator, metric, value FROM lab_results WHERE run_id = ? AND section = 'headline'"
                        " AND metric IN ('bias', 'variance')", [res["run_id"]]).to_pylist()
    assert runs and runs[0]["task"] == "planted"
    assert n == len(report_rows(res))
    assert {(r["estimator"], r["metric"]) for r in head} == {(e, m) for e in ESTIMATORS for m in ("bias", "variance")}
    got = {(r["estimator"], r["metric"]): r["value"] for r in head}
    assert got[("reinforce", "bias")] == pytest.approx(res["estimators"]["reinforce"]["bias"])
