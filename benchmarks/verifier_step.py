"""One training step of the verifier (forward and backward over a batch of candidate lists), two ways in one process:

- padded: the batch's queries padded to its longest, every position through every encoder layer, padded positions
  masked (how training ran before `train_logits`);
- grouped: `sidestep.verify.model.train_logits`, queries of one length together without padding and the last
  layer for [CLS] alone (the training path now; a test holds its logits and gradients equal to padded's).

Synthetic lists with the shapes training reads: 16 queries a batch, each with the served top 30 plus 3 near-misses,
query lengths drawn from 6 to 40 tokens (SciFact claims and MS MARCO questions are 8-30 word pieces), the default
VerifierConfig. The figure is the ratio of the two, measured alternately in the same process.

Usage: .venv/bin/python benchmarks/verifier_step.py [--batches 12] [--rounds 3] [--threads 2]
Writes benchmarks/verifier_step_last_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from sidestep.verify.candidates import Candidates
from sidestep.verify.features import N_TOKEN_FEATURES
from sidestep.verify.model import Verifier, VerifierConfig, collate, train_logits

OUT = Path(__file__).with_name("verifier_step_last_run.json")


def synthetic_batches(n: int, rng: np.random.Generator, dim: int = 384, rows: int = 33,
                      per_batch: int = 16) -> list[list[Candidates]]:
    def one(nq: int) -> Candidates:
        q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(nq, dim)).astype(np.float32)), dim=-1)
        return Candidates(torch.from_numpy(rng.normal(size=(rows, nq, N_TOKEN_FEATURES)).astype(np.float32)), q,
                          torch.from_numpy(rng.normal(size=(rows, 9)).astype(np.float32)),
                          torch.from_numpy(rng.normal(size=rows).astype(np.float32)))
    return [[one(int(rng.integers(6, 41))) for _ in range(per_batch)] for _ in range(n)]


def padded_logits(model: Verifier, items: list[Candidates]) -> torch.Tensor:
    feats, qtok, qmask, glob, _ = collate(items, model)
    pad = torch.cat([torch.zeros_like(qmask[:, :1]), ~qmask], 1)
    x = model.inputs(feats, model.query_term(qtok, projected=True), glob)
    return model.readout(model.encoder(x, src_key_padding_mask=pad)[:, 0], glob)


def step_seconds(model: Verifier, batches: list[list[Candidates]], logits) -> float:
    t = time.perf_counter()
    for b in batches:
        model.zero_grad()
        logits(model, b).square().mean().backward()
    return (time.perf_counter() - t) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batches = synthetic_batches(a.batches, np.random.default_rng(0))
    model = Verifier(VerifierConfig(), 384).train()
    step_seconds(model, batches[:2], padded_logits)  # warm both paths
    step_seconds(model, batches[:2], train_logits)
    runs: dict[str, list[float]] = {"padded": [], "grouped": []}
    for _ in range(a.rounds):  # alternate, so load changes fall on both
        runs["padded"].append(step_seconds(model, batches, padded_logits))
        runs["grouped"].append(step_seconds(model, batches, train_logits))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    res = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "threads": a.threads, "loadavg": Path("/proc/loadavg").read_text().split()[:3],
           "batches": a.batches, "rounds": a.rounds, "seconds_per_batch": runs, "median_s": med,
           "padded_over_grouped": med["padded"] / med["grouped"]}
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
