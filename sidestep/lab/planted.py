"""The planted selection task: the exact gradient by enumeration, every estimator measured against it.

n items with learnable scores theta; a fixed judge (``CascadeJudge``) with three relevant items planted
so that the pick starts wrong: the weakly relevant item (reward 0.2) sits at rank 2 of the starting
scores, inside the top 3, the moderately relevant one (0.5) just outside at rank 4, and the most relevant
one (0.9) deep at rank 6; the rest have reward 0. The stochastic selection is Plackett-Luce with logits
theta (Gumbel top-k), so the expected loss

    J(theta) = sum over every ordered k-selection S of P_theta(S) * loss(S)

is a finite sum (n!/(n-k)! terms: 336 for n = 8, k = 3) and its exact gradient g* comes from autograd
through that sum. Each estimator is then drawn many times at the same theta: bias ||E[g] - g*|| (with
its Monte-Carlo noise floor sqrt(variance / draws)), relative bias, cosine(E[g], g*) and variance
E||g - E[g]||^2, over a small grid of k, temperature (tau, or sigma for the perturbed optimizer) and
samples per estimate. Then every estimator optimises theta from the same start with Adam (same steps,
same learning rate; Adam is invariant to the arbitrary scale of the surrogates) and the exact J it
reaches is reported, with the loss of the deterministic top k, which is what a deployed system picks.

Everything is float64 and seeded: the same config gives the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from sidestep.lab.estimators import ESTIMATORS, grad
from sidestep.lab.judge import CascadeJudge
from sidestep.lab.selection import hard_topk, ordered_selections, pl_log_prob

__all__ = ["PlantedConfig", "PlantedProblem", "exact", "make_problem", "measure", "optimise", "run_planted"]

DTYPE = torch.float64
PLANTED = ((1, 0.2), (3, 0.5), (5, 0.9))  # (0-based rank in the starting scores, reward)


@dataclass(frozen=True)
class PlantedConfig:
    n: int = 8
    k: int = 3  # the headline cell and the optimisation runs
    problem_seed: int = 0
    tau: float = 0.5
    sigma: float = 0.5
    samples: int = 8  # samples per estimate (judge calls per step) for the stochastic estimators
    draws: int = 4000  # independent estimates per cell for bias and variance
    grid_k: tuple[int, ...] = (1, 2, 3)
    grid_temperature: tuple[float, ...] = (0.1, 0.5, 1.0)  # tau, or sigma for the perturbed optimizer
    grid_samples: tuple[int, ...] = (1, 8, 32)
    steps: int = 200
    lr: float = 0.05
    curve_every: int = 10
    seed: int = 0  # base seed of every estimator's noise

    def __post_init__(self) -> None:
        if max(self.k, *self.grid_k) > self.n or self.n > 10:
            raise ValueError("need k <= n <= 10 (the enumeration has n!/(n-k)! terms)")
        if self.n < max(r for r, _ in PLANTED) + 1:
            raise ValueError(f"n must be >= {max(r for r, _ in PLANTED) + 1} to plant the relevant items")


@dataclass(frozen=True)
class PlantedProblem:
    theta0: torch.Tensor  # (n,) starting scores
    judge: CascadeJudge

    @property
    def n(self) -> int:
        return self.theta0.shape[0]


def make_problem(n: int = 8, seed: int = 0) -> PlantedProblem:
    """Scores from N(0, 1); items shuffled; rewards planted at fixed ranks of the starting scores."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(n, generator=gen, dtype=DTYPE)
    order = theta0.argsort(descending=True)
    rewards = torch.zeros(n, dtype=DTYPE)
    for rank, r in PLANTED:
        rewards[order[rank]] = r
    return PlantedProblem(theta0, CascadeJudge(rewards))


def expected_loss(theta: torch.Tensor, judge: CascadeJudge, k: int) -> torch.Tensor:
    """J(theta): the Plackett-Luce expected loss, by enumerating every ordered k-selection."""
    idx = ordered_selections(theta.shape[-1], k)
    losses = judge.loss(torch.nn.functional.one_hot(idx, theta.shape[-1]).to(theta.dtype))
    return (pl_log_prob(theta, idx).exp() * losses).sum()


def exact(theta: torch.Tensor, judge: CascadeJudge, k: int) -> tuple[float, torch.Tensor]:
    """(J(theta), g* = dJ/dtheta) by autograd through the enumeration."""
    t = theta.detach().clone().requires_grad_(True)
    j = expected_loss(t, judge, k)
    (g,) = torch.autograd.grad(j, t)
    return float(j.detach()), g


def hard_loss(theta: torch.Tensor, judge: CascadeJudge, k: int) -> float:
    """The judge's loss on the deterministic top k of theta (what a deployed system would pick)."""
    return float(judge.loss(hard_topk(theta.detach(), k)))


def measure(name: str, theta: torch.Tensor, judge: CascadeJudge, k: int, g_star: torch.Tensor, *,
            draws: int, samples: int, tau: float, sigma: float, seed: int) -> dict:
    """Bias, cosine and variance of one estimator at theta from ``draws`` independent estimates."""
    est = ESTIMATORS[name]
    d = draws if est.stochastic else 1  # a deterministic estimator has one value
    gen = torch.Generator().manual_seed(seed)
    g = grad(name, theta.detach().expand(d, theta.shape[0]), judge, k, samples=samples, tau=tau, sigma=sigma,
             generator=gen)
    mean = g.mean(0)
    variance = float(((g - mean) ** 2).sum(1).sum() / (d - 1)) if d > 1 else 0.0
    norm_star, norm_mean = float(g_star.norm()), float(mean.norm())
    bias = float((mean - g_star).norm())
    cosine = float(mean @ g_star) / (norm_mean * norm_star) if norm_mean > 0 and norm_star > 0 else 0.0
    return {
        "bias": bias,
        "relative_bias": bias / norm_star if norm_star > 0 else math.nan,
        "bias_noise_floor": math.sqrt(variance / d),  # the part of "bias" that is Monte-Carlo noise
        "cosine": cosine,
        # min over c >= 0 of ||c E[g] - g*|| / ||g*||: the bias left once the scale is free
        "scaled_relative_bias": math.sqrt(max(0.0, 1.0 - cosine**2)) if cosine > 0 else 1.0,
        "variance": variance,
        "relative_variance": variance / norm_mean**2 if norm_mean > 0 else math.nan,
        "mean_norm": norm_mean,
        "draws": d,
    }


def optimise(name: str, problem: PlantedProblem, k: int, *, steps: int, lr: float, seed: int, samples: int,
             tau: float, sigma: float, curve_every: int = 10, deadline: float | None = None) -> dict:
    """Adam on theta from theta0 with the estimator's gradient; the exact J and the hard loss reached."""
    theta = problem.theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = [(0, exact(theta, problem.judge, k)[0])]
    done = 0
    for step in range(1, steps + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        theta.grad = grad(name, theta, problem.judge, k, samples=samples, tau=tau, sigma=sigma, generator=gen)
        opt.step()
        done = step
        if step % curve_every == 0 or step == steps:
            curve.append((step, float(expected_loss(theta.detach(), problem.judge, k))))
    return {"expected_loss": float(expected_loss(theta.detach(), problem.judge, k)),
            "hard_loss": hard_loss(theta, problem.judge, k), "steps_done": done, "curve": curve,
            "theta": [round(float(x), 4) for x in theta.detach()]}


def _cells(cfg: PlantedConfig, names: list[str]) -> list[dict]:
    cells = []
    for k in cfg.grid_k:
        for name in names:
            est = ESTIMATORS[name]
            temps = cfg.grid_temperature if {"tau", "sigma"} & set(est.knobs) else (None,)
            counts = cfg.grid_samples if est.stochastic else (None,)
            cells += [{"estimator": name, "k": k, "temperature": t, "samples": m} for t in temps for m in counts]
    return cells


def _knobs(cfg: PlantedConfig, name: str, temperature: float | None, samples: int | None) -> dict:
    knobs = ESTIMATORS[name].knobs
    t = temperature
    return {"samples": samples if samples is not None else cfg.samples,
            "tau": t if t is not None and "tau" in knobs else cfg.tau,
            "sigma": t if t is not None and "sigma" in knobs else cfg.sigma}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the duration: these tensors are tiny, and on a busy 2-core machine
    a second thread made every call about ten times slower (thread hand-off, not arithmetic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_planted(cfg: PlantedConfig | None = None, estimators: list[str] | None = None, seeds: int = 3,
                budget_seconds: float | None = None, log: Callable[[str], None] | None = None) -> dict:
    """The whole planted report: headline cell per estimator, the grid, the optimisation runs.

    ``budget_seconds`` caps the wall clock: the headline cells always run; optimisation runs stop early
    (``steps_done`` < steps, ``truncated``) and grid cells are skipped once it is spent.
    """
    with one_thread():
        return _run_planted(cfg, estimators, seeds, budget_seconds, log)


def _run_planted(cfg: PlantedConfig | None, estimators: list[str] | None, seeds: int,
                 budget_seconds: float | None, log: Callable[[str], None] | None) -> dict:
    cfg = cfg or PlantedConfig()
    names = list(ESTIMATORS) if estimators is None else list(estimators)
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; known: {', '.join(ESTIMATORS)}")
    say = log or (lambda _m: None)
    t0 = time.monotonic()
    deadline = None if budget_seconds is None else t0 + budget_seconds
    problem = make_problem(cfg.n, cfg.problem_seed)
    judge, theta0 = problem.judge, problem.theta0
    stars = {k: exact(theta0, judge, k) for k in {cfg.k, *cfg.grid_k}}
    j0, g0 = stars[cfg.k]
    say(f"planted: n={cfg.n} k={cfg.k} J(theta0)={j0:.4f} |g*|={float(g0.norm()):.4f}")

    headline = {}
    for i, name in enumerate(names):
        est = ESTIMATORS[name]
        knobs = _knobs(cfg, name, None, None)
        row = measure(name, theta0, judge, cfg.k, g0, draws=cfg.draws, seed=cfg.seed * 7919 + i, **knobs)
        headline[name] = {**row, "targets_exact_gradient": est.targets_exact_gradient, "target": est.target,
                          "stochastic": est.stochastic, "k": cfg.k,
                          **{kn: knobs[kn] for kn in est.knobs}}
        say(f"{name:>20}: cosine={row['cosine']:+.3f} rel_bias={row['relative_bias']:.3f} "
            f"variance={row['variance']:.3g}")

    runs: dict[str, dict] = {}
    truncated = False
    for name in names:
        knobs = _knobs(cfg, name, None, None)
        started = time.monotonic()
        per_seed = [optimise(name, problem, cfg.k, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed + s,
                             curve_every=cfg.curve_every, deadline=deadline, **knobs) for s in range(seeds)]
        truncated |= any(r["steps_done"] < cfg.steps for r in per_seed)
        runs[name] = _summarise(per_seed, time.monotonic() - started)
        say(f"{name:>20}: J after {cfg.steps} steps = {runs[name]['expected_loss_mean']:.4f} "
            f"± {runs[name]['expected_loss_std']:.4f}, hard loss {runs[name]['hard_loss_mean']:.4f}")

    grid, skipped = [], 0
    for i, cell in enumerate(_cells(cfg, names)):
        if deadline is not None and time.monotonic() > deadline:
            skipped += 1
            continue
        knobs = _knobs(cfg, cell["estimator"], cell["temperature"], cell["samples"])
        row = measure(cell["estimator"], theta0, judge, cell["k"], stars[cell["k"]][1], draws=cfg.draws,
                      seed=cfg.seed * 104729 + i, **knobs)
        grid.append({**cell, **row})
    truncated |= skipped > 0
    return {
        "task": "planted",
        "problem": {"n": cfg.n, "k": cfg.k, "rewards": [float(x) for x in judge.rewards],
                    "theta0": [round(float(x), 4) for x in theta0], "expected_loss": j0,
                    "hard_loss": hard_loss(theta0, judge, cfg.k), "exact_grad": [float(x) for x in g0],
                    "exact_grad_norm": float(g0.norm()), "orders_enumerated": len(ordered_selections(cfg.n, cfg.k))},
        "estimators": headline,
        "unbiased_for_exact_gradient": [n for n in names if ESTIMATORS[n].targets_exact_gradient],
        "biased_or_surrogate": [n for n in names if not ESTIMATORS[n].targets_exact_gradient],
        "grid": grid,
        "grid_skipped": skipped,
        "optimisation": {"optimizer": "adam", "steps": cfg.steps, "lr": cfg.lr, "seeds": seeds,
                         "start": {"expected_loss": j0, "hard_loss": hard_loss(theta0, judge, cfg.k)},
                         "estimators": runs},
        "truncated": truncated,
        "config": asdict(cfg),
    }


def _summarise(per_seed: list[dict], seconds: float) -> dict:
    def mean_std(key: str) -> tuple[float, float]:
        v = torch.tensor([r[key] for r in per_seed], dtype=DTYPE)
        return float(v.mean()), float(v.std(unbiased=False)) if len(v) > 1 else 0.0

    (jm, js), (hm, hs) = mean_std("expected_loss"), mean_std("hard_loss")
    steps = [p[0] for p in per_seed[0]["curve"]]
    curve = [[s, sum(r["curve"][i][1] for r in per_seed if i < len(r["curve"])) / len(per_seed)]
             for i, s in enumerate(steps)]
    return {"expected_loss_mean": jm, "expected_loss_std": js, "hard_loss_mean": hm, "hard_loss_std": hs,
            "per_seed": [{k: r[k] for k in ("expected_loss", "hard_loss", "steps_done", "theta")} for r in per_seed],
            "curve": curve, "seconds": round(seconds, 2)}


def report_rows(report: dict) -> list[dict]:
    """The report's figures as long rows for the warehouse: section (headline, grid, optimisation, curve),
    estimator, k, temperature, samples, seed, step, metric, value."""
    rows: list[dict] = []
    cfg = report["config"]

    def add(section: str, estimator: str, metrics: dict, **keys) -> None:
        base = {"section": section, "estimator": estimator, "k": None, "temperature": None, "samples": None,
                "seed": None, "step": None, **keys}
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                rows.append({**base, "metric": metric, "value": float(value)})

    for name, h in report["estimators"].items():
        add("headline", name, {m: h[m] for m in _FIGURES}, k=h["k"], temperature=h.get("tau", h.get("sigma")),
            samples=h.get("samples"))
    for g in report["grid"]:
        add("grid", g["estimator"], {m: g[m] for m in _FIGURES}, k=g["k"], temperature=g["temperature"],
            samples=g["samples"])
    for name, run in report["optimisation"]["estimators"].items():
        add("optimisation", name, {m: run[m] for m in ("expected_loss_mean", "expected_loss_std", "hard_loss_mean",
                                                         "hard_loss_std", "seconds")}, k=cfg["k"])
        for seed, r in enumerate(run["per_seed"]):
            add("optimisation", name, {m: r[m] for m in ("expected_loss", "hard_loss", "steps_done")}, k=cfg["k"],
                seed=cfg["seed"] + seed)
        for step, value in run["curve"]:
            add("curve", name, {"expected_loss": value}, k=cfg["k"], step=step)
    return rows


_FIGURES = ("bias", "relative_bias", "bias_noise_floor", "cosine", "scaled_relative_bias", "variance",
            "relative_variance", "mean_norm", "draws")
