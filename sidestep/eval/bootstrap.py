"""Paired bootstrap intervals over test units (users, queries), pooled over seeds, and the mean ± std over
seeds that sits beside them."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_std", "paired_bootstrap"]

_BLOCK_ELEMENTS = 1 << 22  # resampled indices drawn at once: 32 MiB of int64


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) std of the finite-or-inf values, skipping NaN; (nan, nan) when none is left."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    return (float(v.mean()), float(v.std())) if len(v) else (math.nan, math.nan)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, draws: int = 2000, seed: int = 0) -> dict:
    """95% interval of mean(a - b) where a and b are (seeds, units) per-unit metrics of two systems on the same
    units (or (units,) for one seed). Each draw resamples units with replacement and keeps every seed of a
    drawn unit, so the interval covers both the unit sample and the seeds' spread. Returns mean, lo, hi, the
    share of draws above 0, and the counts."""
    a2, b2 = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a2.shape != b2.shape:
        raise ValueError(f"paired bootstrap needs the same units and seeds, got {a2.shape} and {b2.shape}")
    d = (a2 - b2).mean(0)  # per unit, averaged over seeds (equal seeds per unit: the pooled mean is the same)
    n = len(d)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "p_above_0": float("nan"),
                "units": 0, "seeds": int(a2.shape[0])}
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    block = max(1, min(draws, _BLOCK_ELEMENTS // n))  # blocks bound the (draws, units) index matrix's memory
    for s in range(0, draws, block):
        k = min(block, draws - s)
        means[s:s + k] = d[rng.integers(0, n, size=(k, n))].mean(1)
    return {"mean": float(d.mean()), "lo": float(np.quantile(means, 0.025)), "hi": float(np.quantile(means, 0.975)),
            "p_above_0": float((means > 0).mean()), "units": int(n), "seeds": int(a2.shape[0])}
