"""The retrieval task of the gradient lab: a query-side scorer trained through a hard top-k selection.

Each query comes with recall's n candidates (precomputed once, ``RetrievalData``). The trainable part is
on the query side only (``QueryScorer``): a linear query adapter A (d x d, starting at the identity) on the
pooled query vector, whose cosine with each candidate's best chunk is scaled by a learnable temperature,
plus learned weights (starting at 0) on fixed, untrained evidence about the same candidates (the list
z-scores of recall cosine, MaxSim, idf-weighted MaxSim and BM25). Documents stay frozen.

Between the scores and the loss sits the hard selection: the top k (= 10) of the n candidates. The judge
(``CascadeJudge``, 1 - ERR / best ERR, rewards (2^g - 1) / 2^g_max from the judgments) reads only the
selected documents. Every estimator of ``sidestep.lab.estimators`` trains the same scorer from the same
start, with the same steps, batch and learning rate, under the same wall-clock cap; the checkpoint with the
best validation nDCG@10 is tested. At evaluation every model picks its hard top k; nDCG@10 (ideal from all
the query's judgments, not only those recall found) and Recall@10 are measured on held-out queries.

Controls in the same run: the untrained identity (the scorer at its start: dense recall's order) and the
best untrained ranker (each evidence column alone and their unweighted fusion, chosen on validation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sidestep.eval.bootstrap import mean_std, paired_bootstrap
from sidestep.lab.estimators import ESTIMATORS, surrogate
from sidestep.lab.judge import CascadeJudge
from sidestep.lab.planted import one_thread
from sidestep.lab.selection import hard_topk

__all__ = ["QueryScorer", "RetrievalConfig", "RetrievalData", "evaluate", "run_retrieval", "train_one"]

SPLITS = ("train", "val", "test")


@dataclass
class RetrievalData:
    """One corpus's queries with their precomputed recall candidates and fixed evidence."""

    name: str
    qids: list[str]
    split: list[str]  # per query: train, val or test
    qvec: torch.Tensor  # (Q, d) unit pooled query vectors
    cand: torch.Tensor  # (Q, n) long: each candidate's row in doc_chunks, recall's order
    doc_chunks: torch.Tensor  # (D, C) long: rows of chunk_vecs (padded)
    chunk_mask: torch.Tensor  # (D, C) bool
    chunk_vecs: torch.Tensor  # (Nc, d) unit chunk vectors of the index
    feats: torch.Tensor  # (Q, n, F) fixed untrained evidence (list z-scores)
    gains: torch.Tensor  # (Q, n) graded judgments of the candidates (0 = not relevant / unjudged)
    idcg: torch.Tensor  # (Q,) ideal DCG@10 from all of the query's judgments
    n_relevant: torch.Tensor  # (Q,) judged relevant documents (grade >= rel_threshold), for Recall@10
    no_overlap: list[bool]  # test queries none of whose relevant documents a training query cites
    feature_names: tuple[str, ...] = ()
    rel_threshold: int = 1
    notes: dict = field(default_factory=dict)

    def rows(self, split: str) -> torch.Tensor:
        return torch.tensor([i for i, s in enumerate(self.split) if s == split], dtype=torch.long)

    def rewards(self, rows: torch.Tensor) -> torch.Tensor:
        """ERR's stop probabilities (2^g - 1) / 2^g_max of the candidates' grades."""
        g_max = max(float(self.gains.max()), 1.0)
        return (2.0 ** self.gains[rows] - 1.0) / 2.0**g_max

    def save(self, path) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path) -> RetrievalData:
        return cls(**torch.load(path, weights_only=False))


@dataclass(frozen=True)
class RetrievalConfig:
    k: int = 10
    steps: int = 200
    batch: int = 32
    lr: float = 2e-3  # the adapter's learning rate (Adam)
    head_lr: float = 2e-2  # the temperature's and the evidence weights' (a few numbers, not d x d)
    reg: float = 1e-3  # L2 pull of the adapter towards the identity
    scale: float = 20.0  # starting temperature of the cosine (learnable)
    samples: int = 8  # samples per estimate (stochastic estimators)
    tau_start: float = 1.0  # Gumbel-softmax / straight-through temperature, annealed geometrically ...
    tau_end: float = 0.1  # ... to this at the last step
    softsort_tau: float = 1.0
    sigma: float = 1.0  # perturbed optimizer's noise
    eval_every: int = 20
    seed: int = 0


class QueryScorer(torch.nn.Module):
    """scale * cos(normalize(A q), best chunk) + w . evidence; A = I, w = 0 at the start."""

    def __init__(self, dim: int, n_feats: int, scale: float = 20.0):
        super().__init__()
        self.adapter = torch.nn.Parameter(torch.eye(dim))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        self.mix = torch.nn.Parameter(torch.zeros(n_feats))

    def forward(self, data: RetrievalData, rows: torch.Tensor) -> torch.Tensor:
        q = torch.nn.functional.normalize(data.qvec[rows] @ self.adapter.T, dim=-1)  # (B, d)
        docs = data.cand[rows]  # (B, n)
        idx = data.doc_chunks[docs]  # (B, n, C)
        # every chunk's cosine, then gather: a (B, d) x (d, Nc) product is cheaper than gathering (B, n, C, d)
        sims = q @ data.chunk_vecs.T  # (B, Nc)
        cos = torch.gather(sims, 1, idx.reshape(len(rows), -1)).reshape(idx.shape)
        cos = cos.masked_fill(~data.chunk_mask[docs], -2.0).amax(-1)
        return self.log_scale.exp() * cos + data.feats[rows] @ self.mix


def _metrics(scores: torch.Tensor, data: RetrievalData, rows: torch.Tensor, k: int = 10) -> dict[str, np.ndarray]:
    """Per query nDCG@k and Recall@k of the hard top k of ``scores`` (B, n)."""
    top = scores.topk(k, dim=-1).indices
    g = torch.gather(data.gains[rows], 1, top).double()
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    dcg = (g * disc).sum(-1)
    idcg = data.idcg[rows].double()
    ndcg = torch.where(idcg > 0, dcg / idcg.clamp_min(1e-12), torch.zeros_like(dcg))
    hits = (g >= data.rel_threshold).sum(-1).double()
    nrel = data.n_relevant[rows].double()
    recall = torch.where(nrel > 0, hits / nrel.clamp_min(1), torch.zeros_like(hits))
    return {"ndcg@10": ndcg.numpy(), "recall@10": recall.numpy()}


def evaluate(score_fn: Callable[[torch.Tensor], torch.Tensor], data: RetrievalData, rows: torch.Tensor,
             k: int = 10, batch: int = 128) -> dict[str, np.ndarray]:
    """Per query metrics of the hard top k of ``score_fn(rows)`` over ``rows``."""
    parts: list[dict] = []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            r = rows[s:s + batch]
            parts.append(_metrics(score_fn(r), data, r, k))
    return {m: np.concatenate([p[m] for p in parts]) if parts else np.zeros(0) for m in ("ndcg@10", "recall@10")}


def _summary(per_query: dict[str, np.ndarray], data: RetrievalData, rows: torch.Tensor) -> dict:
    """Mean metrics over all rows and over the no-overlap ones."""
    mask = np.asarray([data.no_overlap[int(i)] for i in rows], dtype=bool)
    out = {m: float(v.mean()) if len(v) else 0.0 for m, v in per_query.items()}
    out.update({f"no_overlap_{m}": float(v[mask].mean()) if mask.any() else math.nan for m, v in per_query.items()})
    out["queries"], out["no_overlap_queries"] = int(len(rows)), int(mask.sum())
    return out


def _tau(cfg: RetrievalConfig, step: int) -> float:
    frac = (step - 1) / max(cfg.steps - 1, 1)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac


def _knobs(cfg: RetrievalConfig, name: str, step: int) -> dict:
    tau = cfg.softsort_tau if name == "softsort" else _tau(cfg, step)
    return {"samples": cfg.samples, "tau": tau, "sigma": cfg.sigma}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` builds its graph (distinct storages):
    the memory a training step holds between forward and backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def train_one(name: str, data: RetrievalData, cfg: RetrievalConfig, seed: int, *, deadline: float | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Train a fresh QueryScorer with estimator ``name``; returns the curve, the test metrics of the best
    validation checkpoint (means, and per test query in ``test_per_query``) and of the last step, the steps
    done and the time taken."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = data.rows("train")
    train = train[(data.gains[train] > 0).any(-1)]  # a list with nothing relevant teaches nothing
    val, test = data.rows("val"), data.rows("test")
    model = QueryScorer(data.qvec.shape[1], data.feats.shape[-1], cfg.scale)
    eye = torch.eye(data.qvec.shape[1])
    opt = torch.optim.Adam([{"params": [model.adapter], "lr": cfg.lr},
                            {"params": [model.log_scale, model.mix], "lr": cfg.head_lr}])

    def step_loss(rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = model(data, rows)
        judge = CascadeJudge(data.rewards(rows).to(scores.dtype))
        loss = surrogate(name, scores, judge, cfg.k, generator=gen, **_knobs(cfg, name, step)).mean()
        hard = judge.loss(hard_topk(scores, cfg.k)).mean()  # what the deployed pick scores
        return loss + cfg.reg * (model.adapter - eye).square().sum(), hard

    def val_ndcg() -> float:
        return float(evaluate(lambda r: model(data, r), data, val, cfg.k)["ndcg@10"].mean()) if len(val) else 0.0

    memory = saved_bytes(lambda: step_loss(train[: cfg.batch], 1)[0])
    curve = [{"step": 0, "val_ndcg@10": val_ndcg(), "train_hard_loss": math.nan}]
    best_val, best_state, best_step = -1.0, None, 0
    t0 = time.perf_counter()
    done, hard_sum, hard_n = 0, 0.0, 0
    for step in range(1, cfg.steps + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        rows = train[torch.from_numpy(rng.choice(len(train), min(cfg.batch, len(train)), replace=False))]
        loss, hard = step_loss(rows, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done, hard_sum, hard_n = step, hard_sum + float(hard), hard_n + 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            v = val_ndcg()
            curve.append({"step": step, "val_ndcg@10": v, "train_hard_loss": hard_sum / hard_n})
            hard_sum, hard_n = 0.0, 0
            if v > best_val:
                best_val, best_step = v, step
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    if done and (not curve or curve[-1]["step"] != done):  # stopped by the deadline between evaluations
        v = val_ndcg()
        curve.append({"step": done, "val_ndcg@10": v, "train_hard_loss": hard_sum / max(hard_n, 1)})
        if v > best_val:
            best_val, best_step = v, done
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    last = _summary(evaluate(lambda r: model(data, r), data, test, cfg.k), data, test)
    if best_state is not None:
        model.load_state_dict(best_state)
    best_pq = evaluate(lambda r: model(data, r), data, test, cfg.k)
    best = _summary(best_pq, data, test)
    if log:
        log(f"{data.name} {name} seed {seed}: {done} steps in {seconds:.1f} s, best val nDCG@10 {best_val:.4f} "
            f"(step {best_step}), test nDCG@10 {best['ndcg@10']:.4f}")
    return {"test": best, "test_per_query": best_pq, "test_last": last, "best_step": best_step,
            "val_ndcg@10": best_val, "steps_done": done,
            "seconds": seconds, "saved_mb": memory / 2**20, "curve": curve,
            "scale": float(model.log_scale.detach().exp()), "mix": [float(x) for x in model.mix.detach()],
            "adapter_distance": float((model.adapter.detach() - eye).norm())}


def controls(data: RetrievalData, k: int = 10) -> dict:
    """The untrained identity (dense recall's order) and every untrained evidence column and their fusion;
    the best on validation nDCG@10 is named ``best_untrained``."""
    val, test = data.rows("val"), data.rows("test")
    ident = QueryScorer(data.qvec.shape[1], data.feats.shape[-1])
    rankers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"identity": lambda r: ident(data, r)}
    for j, f in enumerate(data.feature_names):
        rankers[f] = lambda r, j=j: data.feats[r][..., j]
    rankers["fusion"] = lambda r: data.feats[r].sum(-1)
    out = {}
    for name, fn in rankers.items():
        v = float(evaluate(fn, data, val, k)["ndcg@10"].mean()) if len(val) else 0.0
        pq = evaluate(fn, data, test, k)
        out[name] = {"val_ndcg@10": v, "test": _summary(pq, data, test),
                     "test_per_query": {m: x.tolist() for m, x in pq.items()}}
    best = max((n for n in out if n != "identity"), key=lambda n: out[n]["val_ndcg@10"])
    out["best_untrained"] = {**out[best], "ranker": best}
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of the test metrics (best-validation checkpoint), time and memory."""
    out: dict = {}
    for m in ("ndcg@10", "recall@10", "no_overlap_ndcg@10", "no_overlap_recall@10"):
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std([r["test"][m] for r in per_seed])
        out[f"last_{m}_mean"], out[f"last_{m}_std"] = mean_std([r["test_last"][m] for r in per_seed])
    out["seconds_mean"], out["seconds_std"] = mean_std([r["seconds"] for r in per_seed])
    out["saved_mb"] = max(r["saved_mb"] for r in per_seed)
    out["steps_done"] = [r["steps_done"] for r in per_seed]
    steps = sorted({c["step"] for r in per_seed for c in r["curve"]})
    out["curve"] = [[s, mean_std([c["val_ndcg@10"] for r in per_seed for c in r["curve"] if c["step"] == s])[0]]
                    for s in steps]
    out["per_seed"] = [{**{k: r[k] for k in ("test", "best_step", "val_ndcg@10", "steps_done", "seconds", "saved_mb",
                                             "scale", "mix", "adapter_distance", "curve")},
                        "test_per_query": {m: np.asarray(v).tolist() for m, v in r["test_per_query"].items()}}
                       for r in per_seed]
    return out


# paired differences reported with bootstrap intervals over test queries, pooled over seeds
PAIRS = (("sidestep", "best_untrained"), ("straight_through", "sidestep"))


def intervals(data: RetrievalData, runs: dict, ctl: dict, draws: int = 2000, seed: int = 0) -> dict:
    """``A-B`` -> {all, no_overlap} -> metric -> paired bootstrap 95% interval of A - B over test queries, every
    seed of an estimator kept per query (an untrained control is the same on every seed)."""
    test = data.rows("test")
    alone = np.asarray([data.no_overlap[int(i)] for i in test], dtype=bool)

    def per_query(name: str, m: str, seeds: int) -> np.ndarray | None:
        if name in runs:
            return np.asarray([ps["test_per_query"][m] for ps in runs[name]["per_seed"]], dtype=np.float64)
        if name in ctl:
            return np.tile(np.asarray(ctl[name]["test_per_query"][m], dtype=np.float64), (seeds, 1))
        return None

    out: dict = {}
    for a, b in PAIRS:
        seeds = max((len(runs[n]["per_seed"]) for n in (a, b) if n in runs), default=1)
        for m in ("ndcg@10", "recall@10"):
            pa, pb = per_query(a, m, seeds), per_query(b, m, seeds)
            if pa is None or pb is None:
                continue
            cell = out.setdefault(f"{a}-{b}", {"all": {}, "no_overlap": {}})
            cell["all"][m] = paired_bootstrap(pa, pb, draws=draws, seed=seed)
            if alone.any():
                cell["no_overlap"][m] = paired_bootstrap(pa[:, alone], pb[:, alone], draws=draws, seed=seed)
    return out


def run_retrieval(datasets: list[RetrievalData], cfg: RetrievalConfig | None = None,
                  estimators: list[str] | None = None, seeds: int = 3, budget_seconds: float | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Every estimator x seed on every dataset at the same steps; ``budget_seconds`` is split evenly into
    one wall-clock cap per training run (a run that reaches it stops early: ``truncated``)."""
    cfg = cfg or RetrievalConfig()
    names = list(ESTIMATORS) if estimators is None else list(estimators)
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimators {unknown}; known: {', '.join(ESTIMATORS)}")
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    say = log or (lambda _m: None)
    cap = None if budget_seconds is None else budget_seconds / max(len(names) * seeds * len(datasets), 1)
    report: dict = {"task": "retrieval", "datasets": {}, "estimators": {}, "truncated": False,
                    "run_cap_seconds": cap, "config": {**asdict(cfg), "seeds": seeds, "estimators": names,
                                                       "budget_seconds": budget_seconds}}
    with one_thread():
        for data in datasets:
            ctl = controls(data, cfg.k)
            say(f"{data.name}: identity test nDCG@10 {ctl['identity']['test']['ndcg@10']:.4f}, best untrained "
                f"({ctl['best_untrained']['ranker']}) {ctl['best_untrained']['test']['ndcg@10']:.4f}")
            runs = {}
            for name in names:
                per_seed = [train_one(name, data, cfg, cfg.seed + s, log=log,
                                      deadline=None if cap is None else time.monotonic() + cap)
                            for s in range(seeds)]
                runs[name] = aggregate(per_seed)
                report["truncated"] |= any(r["steps_done"] < cfg.steps for r in per_seed)
            report["datasets"][data.name] = {
                "queries": {s: len(data.rows(s)) for s in SPLITS},
                "trainable_queries": int((data.gains[data.rows("train")] > 0).any(-1).sum()),
                "candidates": int(data.cand.shape[1]), "features": list(data.feature_names), "notes": data.notes,
                "controls": ctl, "estimators": runs, "intervals": intervals(data, runs, ctl, seed=cfg.seed)}
    first = next(iter(report["datasets"].values()), {"estimators": {}})
    report["estimators"] = {n: {k: v for k, v in r.items() if k not in ("per_seed", "curve")}
                            for n, r in first["estimators"].items()}
    return report


def report_rows(report: dict) -> list[dict]:
    """Long rows for the warehouse (lab_results): section result (per estimator and seed: test metrics,
    time, memory; ``seed`` null for the mean), control, curve (validation nDCG@10 per step and seed);
    the dataset is in the metric name's prefix (``scifact/ndcg@10``)."""
    rows: list[dict] = []
    k = report["config"]["k"]

    def add(section: str, estimator: str, metric: str, value, seed=None, step=None) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            rows.append({"section": section, "estimator": estimator, "k": k, "temperature": None, "samples": None,
                         "seed": seed, "step": step, "metric": metric, "value": float(value)})

    for ds, d in report["datasets"].items():
        for name, c in d["controls"].items():
            for m, v in c["test"].items():
                add("control", name, f"{ds}/{m}", v)
            add("control", name, f"{ds}/val_ndcg@10", c["val_ndcg@10"])
        for name, r in d["estimators"].items():
            for m, v in r.items():
                add("result", name, f"{ds}/{m}", v)
            for s, ps in enumerate(r["per_seed"]):
                seed = report["config"]["seed"] + s
                for m, v in ps["test"].items():
                    add("result", name, f"{ds}/{m}", v, seed=seed)
                for m in ("seconds", "saved_mb", "steps_done", "best_step"):
                    add("result", name, f"{ds}/{m}", ps[m], seed=seed)
                for c in ps["curve"]:
                    add("curve", name, f"{ds}/val_ndcg@10", c["val_ndcg@10"], seed=seed, step=c["step"])
                    add("curve", name, f"{ds}/train_hard_loss", c["train_hard_loss"], seed=seed, step=c["step"])
        for pair, by_subset in d.get("intervals", {}).items():
            for subset, by_metric in by_subset.items():
                for m, ci in by_metric.items():
                    for q in ("mean", "lo", "hi"):
                        add("delta", pair, f"{ds}/{subset}/{m}_{q}", ci[q])
    return rows
