"""Paired 95% intervals over SciFact test claims for the retrieval lab's headline differences.

Retrains seed 0 of a few estimators on the cached lab data (the same seeded runs as `sidestep lab retrieval`,
so the same checkpoints) and compares per-claim nDCG@10 with the best untrained ranker (the z-score fusion),
on all test claims and on those with and without training overlap. A few minutes on 2 cores.

    .venv/bin/python benchmarks/lab_retrieval_ci.py ROOT/lab/retrieval/scifact/<key>.pt
"""

from __future__ import annotations

import argparse

import numpy as np

from sidestep.lab.planted import one_thread
from sidestep.lab.retrieval import RetrievalConfig, RetrievalData, evaluate, train_one


def interval(x: np.ndarray) -> str:
    se = x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():+.4f} [{x.mean() - 1.96 * se:+.4f}, {x.mean() + 1.96 * se:+.4f}] n={len(x)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", help="the cached RetrievalData (.pt) of SciFact")
    ap.add_argument("--estimators", nargs="+", default=["sidestep", "straight_through", "gumbel_softmax"])
    args = ap.parse_args()
    data = RetrievalData.load(args.cache)
    test = data.rows("test")
    alone = np.asarray([data.no_overlap[int(i)] for i in test])
    per = {"fusion": evaluate(lambda r: data.feats[r].sum(-1), data, test)["ndcg@10"]}
    with one_thread():
        for name in args.estimators:
            per[name] = train_one(name, data, RetrievalConfig(), 0)["test_per_query"]["ndcg@10"]
    for name in args.estimators:
        for other in ["fusion"] + (["sidestep"] if name != "sidestep" else []):
            d = per[name] - per[other]
            print(f"{name} - {other}: all {interval(d)}; overlap {interval(d[~alone])}; "
                  f"no overlap {interval(d[alone])}")


if __name__ == "__main__":
    main()
