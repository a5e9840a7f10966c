"""The rec task of the gradient lab: frozen OPQ/PQ codes with learnable tables against codes learned end to end.

Both arms use the same sequence model (``sidestep.rec.tables.SeqRec``: per-domain code lookup tables, a shared
causal Transformer), the same steps, batch, learning rate and wall-clock cap per training run:

- **frozen** (the sidestep): OPQ + PQ codes of the item text vectors (``sidestep.rec.quantize``), fitted once on
  the training domain's items and never changed; only the tables and the encoder learn.
- **learned**: an RQ-VAE over the same text vectors (``sidestep.lab.quantiser``), pre-fitted on reconstruction,
  then trained jointly with the sequence loss: the tables are read through straight-through one-hots of the codes,
  so the sequence loss reaches the quantiser; reconstruction + commitment keep it a quantiser.

In-domain: each domain trains from scratch and is tested on its held-out test split (leave-one-out, full ranking,
nothing masked; the best validation checkpoint). Transfer SOURCE -> TARGET, table-only: the source model's
encoder (and, for learned codes, its quantiser, which assigns the target items' codes) stays frozen; only the
target's lookup table trains, started from the source's table ("transfer", the codes mean the same) or from
scratch ("no_transfer"); "zero_shot" is the source's table read with no training at all.

Controls in the same run: popularity and text-only (recency-weighted mean of the history's text vectors,
nothing trained). Every figure is mean ± std over seeds, with paired bootstrap intervals of learned - frozen
over test users, pooled over seeds (``sidestep.eval.bootstrap``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from sidestep.eval.bootstrap import mean_std, paired_bootstrap
from sidestep.eval.metrics import ndcg_of_target_ranks
from sidestep.lab.planted import one_thread
from sidestep.lab.quantiser import RQCodes, pretrain_quantiser
from sidestep.lab.retrieval import saved_bytes
from sidestep.rec.data import RecData, Split, popularity
from sidestep.rec.quantize import CodebookSpec, diagnostics, fit_codebook
from sidestep.rec.tables import SeqConfig, SeqRec, trainable_parameters
from sidestep.rec.training import evaluate, popularity_ranks, text_ranks

__all__ = ["ARMS", "RecLabConfig", "RecLabData", "report_rows", "run_rec"]

ARMS = ("frozen", "learned")
DEFAULT_USERS: int | None = 500  # seeded user sample per domain of `sidestep lab rec` (None: every user)
Log = Callable[[str], None]


@dataclass
class RecLabData:
    """One domain: its item text vectors (row i = item index i + 1) and leave-one-out splits."""

    name: str
    vectors: np.ndarray  # (N, dim) unit text vectors
    data: RecData
    notes: dict


@dataclass(frozen=True)
class RecLabConfig:
    positions: int = 8  # code positions (PQ sub-quantizers / RQ levels)
    bits: int = 6  # 64 codewords per position, both arms
    hidden: int = 64
    layers: int = 1
    heads: int = 2
    inner: int = 128
    dropout: float = 0.2
    max_history: int = 20
    steps: int = 100  # per training run, both arms, in-domain and transfer
    batch: int = 128
    lr: float = 2e-3
    eval_every: int = 25
    latent: int = 32  # RQ-VAE latent width
    opq_iterations: int = 10
    quantiser_steps: int = 150  # reconstruction pre-fit of the RQ-VAE (the analogue of fitting OPQ)
    aux_weight: float = 1.0  # weight of reconstruction + commitment during joint training
    tau: float = 1.0  # softmax temperature of the straight-through one-hot (distances in latent units)
    quantiser_lr: float = 1e-3
    source: str = "office"
    target: str = "scientific"
    bootstrap: int = 2000
    seed: int = 0


def seq_config(cfg: RecLabConfig) -> SeqConfig:
    return SeqConfig(hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, inner=cfg.inner, dropout=cfg.dropout,
                     max_history=cfg.max_history)


def _batch(split: Split, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = split.lengths[rows]
    return (torch.from_numpy(split.history[rows, : int(lengths.max())]), torch.from_numpy(lengths),
            torch.from_numpy(split.target[rows]))


def _per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    return {"recall@10": (ranks < 10).astype(np.float64), "ndcg@10": ndcg_of_target_ranks(ranks, 10)}


class Arm:
    """How one arm turns items into table rows: fixed codes (frozen) or a trainable quantiser (learned)."""

    def __init__(self, kind: str, vectors: np.ndarray, cfg: RecLabConfig, seed: int,
                 quantiser: RQCodes | None = None, codes: np.ndarray | None = None):
        self.kind, self.cfg = kind, cfg
        self.x = torch.from_numpy(np.asarray(vectors, np.float32))
        self.quantiser, self.fit_info = quantiser, {}
        if codes is not None:
            self.fixed = torch.from_numpy(codes.astype(np.int64))
        elif kind == "frozen":
            t0 = time.perf_counter()
            book = fit_codebook(vectors, CodebookSpec(positions=cfg.positions, bits=cfg.bits, seed=seed,
                                                          opq_iterations=cfg.opq_iterations))
            self.book = book
            self.fixed = torch.from_numpy(book.encode(vectors).astype(np.int64))
            self.fit_info = {"fit_seconds": time.perf_counter() - t0, "relative_error": book.fit_error}
        else:
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            self.quantiser = RQCodes(self.x.shape[1], cfg.positions, 1 << cfg.bits, cfg.latent)
            t0 = time.perf_counter()
            err = pretrain_quantiser(self.quantiser, self.x, cfg.quantiser_steps, cfg.quantiser_lr, generator=gen)
            self.fixed = None
            self.fit_info = {"fit_seconds": time.perf_counter() - t0, "relative_error": err}

    @property
    def trains_codes(self) -> bool:
        return self.fixed is None

    def codes(self) -> torch.Tensor:
        return self.fixed if self.fixed is not None else self.quantiser.encode(self.x)

    def items(self, model: SeqRec, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N+1, H) item vectors (row 0 padding) and the auxiliary loss (0 for fixed codes)."""
        table = model.tables[domain]
        if self.fixed is not None:
            return table.item_matrix(self.fixed), torch.zeros(())
        out = self.quantiser(self.x, self.cfg.tau)
        rows = torch.einsum("nlk,lkh->nh", out.onehot, table.table) / table.positions
        return torch.cat([rows.new_zeros(1, rows.shape[1]), rows]), self.cfg.aux_weight * (out.recon + out.commit)


def train_run(model: SeqRec, domain: str, arm: Arm, data: RecData, cfg: RecLabConfig, mode: str, seed: int, *,
              cap: float | None = None) -> dict:
    """``cfg.steps`` steps of full-softmax cross-entropy (or until ``cap`` seconds of the training loop, counted
    from its first step: the set-up and the step-0 evaluation are not charged to it); mode "scratch" trains the
    encoder, the domain's table and (learned arm) the quantiser, "table-only" the domain's table alone. The
    best validation NDCG@10 checkpoint is restored; returns its test ranks, the curve, time and memory."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = trainable_parameters(model, domain, "table-only" if mode == "table-only" else "full")
    extra = list(arm.quantiser.parameters()) if arm.trains_codes and mode != "table-only" else []
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": params, "lr": cfg.lr}] + ([{"params": extra, "lr": cfg.quantiser_lr}] if extra else [])
    opt = torch.optim.Adam(groups)
    if arm.quantiser is not None:
        arm.quantiser.requires_grad_(bool(extra))

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        hist, lengths, target = _batch(data.train, rows)
        items, aux = arm.items(model, domain)
        logits = model.scores(model.user_vectors(domain, items, hist, lengths), items, hist)
        return F.cross_entropy(logits, target - 1) + aux

    def valid() -> float:
        return evaluate(model, domain, arm.codes(), data.valid)[0]["ndcg@10"]

    model.train()
    memory = saved_bytes(lambda: loss_of(np.arange(min(cfg.batch, len(data.train)))))
    snap = lambda: (copy.deepcopy(model.state_dict()),  # noqa: E731
                    copy.deepcopy(arm.quantiser.state_dict()) if extra else None)
    best, best_step, best_state = valid(), 0, snap()
    curve = [{"step": 0, "valid_ndcg@10": best, "loss": math.nan}]
    t0, done, losses = time.perf_counter(), 0, []
    deadline = None if cap is None else time.monotonic() + cap
    for step in range(1, cfg.steps + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        model.train()
        loss = loss_of(rng.choice(len(data.train), min(cfg.batch, len(data.train)), replace=False))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step
        losses.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            v = valid()
            curve.append({"step": step, "valid_ndcg@10": v, "loss": float(np.mean(losses))})
            losses = []
            if v > best:
                best, best_step, best_state = v, step, snap()
    seconds = time.perf_counter() - t0
    if done and curve[-1]["step"] != done:  # stopped by the cap between evaluations: the last state counts too
        v = valid()
        curve.append({"step": done, "valid_ndcg@10": v, "loss": float(np.mean(losses)) if losses else math.nan})
        if v > best:
            best, best_step, best_state = v, done, snap()
    model.load_state_dict(best_state[0])
    if extra:
        arm.quantiser.load_state_dict(best_state[1])
    for p in model.parameters():
        p.requires_grad_(True)
    if arm.quantiser is not None:
        arm.quantiser.requires_grad_(False)
    _, ranks = evaluate(model, domain, arm.codes(), data.test)
    return {"ranks": ranks, "valid_ndcg@10": best, "best_step": best_step, "steps_done": done, "seconds": seconds,
            "saved_mb": memory / 2**20, "curve": curve}


def _summary(run: dict) -> dict:
    pu = _per_user(run["ranks"])
    return {"test": {m: float(v.mean()) for m, v in pu.items()},
            **{k: run[k] for k in ("valid_ndcg@10", "best_step", "steps_done", "seconds", "saved_mb", "curve")}}


def aggregate(per_seed: list[dict]) -> dict:
    out: dict = {}
    for m in ("recall@10", "ndcg@10"):
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std([r["test"][m] for r in per_seed])
    for k in ("seconds", "saved_mb"):
        out[f"{k}_mean"], out[f"{k}_std"] = mean_std([r[k] for r in per_seed])
    out["steps_done"] = [r["steps_done"] for r in per_seed]
    out["per_seed"] = per_seed
    return out


def _code_diag(codes: torch.Tensor, codewords: int) -> dict:
    d = diagnostics(codes.numpy(), codewords)
    return {k: d[k] for k in ("entropy_bits_mean", "dead_codewords", "colliding_items")}


def run_rec(domains: dict[str, RecLabData], cfg: RecLabConfig | None = None, seeds: int = 3,
            budget_seconds: float | None = None, log: Log | None = None) -> dict:
    """Both arms x seeds: in-domain on every domain, then table-only transfer source -> target (``transfer``
    from the source's table, ``no_transfer`` from a fresh one, ``zero_shot`` untrained); controls; paired
    bootstrap intervals of learned - frozen pooled over seeds. ``budget_seconds`` is split evenly into one
    wall-clock cap per training run."""
    cfg = cfg or RecLabConfig()
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    if not domains:
        raise ValueError("the rec task needs at least one domain")
    # k-means needs a few items per codeword: a small catalogue gets fewer codewords, in both arms alike
    fewest = min(d.data.n_items for d in domains.values())
    cfg = replace(cfg, bits=min(cfg.bits, max(1, int(math.log2(max(fewest // 2, 2))))))
    say = log or (lambda _m: None)
    src, dst = cfg.source, cfg.target
    transfer = src in domains and dst in domains and src != dst
    runs_per_seed = len(ARMS) * (len(domains) + (2 if transfer else 0))
    cap = None if budget_seconds is None else budget_seconds / max(runs_per_seed * seeds, 1)
    report: dict = {"task": "rec", "config": {**asdict(cfg), "seeds": seeds, "budget_seconds": budget_seconds,
                                              "arms": list(ARMS)},
                    "run_cap_seconds": cap, "truncated": False, "domains": {}, "transfer": None}
    ranks: dict[tuple[str, str, str], list[np.ndarray]] = {}  # (setting, domain, arm) -> per seed test ranks
    results: dict[tuple[str, str, str], list[dict]] = {}
    fits: dict[tuple[str, str], list[dict]] = {}

    def keep(setting: str, domain: str, arm: str, run: dict) -> None:
        ranks.setdefault((setting, domain, arm), []).append(run["ranks"])
        results.setdefault((setting, domain, arm), []).append(_summary(run))
        report["truncated"] |= run["steps_done"] < cfg.steps
        s = results[(setting, domain, arm)][-1]
        say(f"{setting} {domain} {arm} seed {len(results[(setting, domain, arm)]) - 1}: {run['steps_done']} steps "
            f"{run['seconds']:.1f} s, test R@10 {s['test']['recall@10']:.4f} N@10 {s['test']['ndcg@10']:.4f}")

    with one_thread():
        for s in range(seeds):
            seed = cfg.seed + s
            trained: dict[tuple[str, str], tuple[SeqRec, Arm]] = {}
            for name, d in domains.items():
                for kind in ARMS:
                    torch.manual_seed(seed)
                    arm = Arm(kind, d.vectors, cfg, seed)
                    model = SeqRec(seq_config(cfg), cfg.positions, 1 << cfg.bits, [name])
                    run = train_run(model, name, arm, d.data, cfg, "scratch", seed, cap=cap)
                    fits.setdefault((name, kind), []).append({**arm.fit_info,
                                                             **_code_diag(arm.codes(), 1 << cfg.bits)})
                    keep("in_domain", name, kind, run)
                    trained[(name, kind)] = (model, arm)
            if not transfer:
                continue
            tgt = domains[dst]
            for kind in ARMS:
                model, arm = trained[(src, kind)]
                if arm.trains_codes:
                    codes = arm.quantiser.encode(torch.from_numpy(tgt.vectors)).numpy()
                else:
                    codes = arm.book.encode(tgt.vectors)
                tarm = Arm(kind, tgt.vectors, cfg, seed, codes=codes)
                fits.setdefault((f"{src}->{dst}", kind), []).append(_code_diag(tarm.fixed, 1 << cfg.bits))
                model.add_domain(dst, init_from=src)
                _, zr = evaluate(model, dst, tarm.fixed, tgt.data.test)
                ranks.setdefault(("zero_shot", dst, kind), []).append(zr)
                results.setdefault(("zero_shot", dst, kind), []).append(
                    {"test": {m: float(v.mean()) for m, v in _per_user(zr).items()}, "seconds": 0.0, "saved_mb": 0.0,
                     "steps_done": 0})
                base = copy.deepcopy(model.encoder.state_dict())
                keep("transfer", dst, kind, train_run(model, dst, tarm, tgt.data, cfg, "table-only", seed,
                                                      cap=cap))
                model.add_domain(dst)  # a fresh table: nothing of the source's table carries over
                model.encoder.load_state_dict(base)
                keep("no_transfer", dst, kind, train_run(model, dst, tarm, tgt.data, cfg, "table-only", seed,
                                                         cap=cap))
    for name, d in domains.items():
        pop = popularity_ranks(popularity(d.data), d.data.test)
        text = text_ranks(np.vstack([np.zeros((1, d.vectors.shape[1]), np.float32), d.vectors]), d.data.test)
        controls = {n: {m: float(v.mean()) for m, v in _per_user(r).items()}
                    for n, r in (("popularity", pop), ("text_only", text))}
        report["domains"][name] = {
            "counts": {"items": d.data.n_items, "train_pairs": len(d.data.train), "valid_users": len(d.data.valid),
                       "test_users": len(d.data.test)}, "notes": d.notes, "controls": controls,
            "arms": {k: {**aggregate(results[("in_domain", name, k)]), "codes": fits[(name, k)]} for k in ARMS},
            "learned_minus_frozen": _deltas(ranks, "in_domain", name, cfg)}
    if transfer:
        report["transfer"] = {"source": src, "target": dst, "settings": {
            setting: {k: aggregate(results[(setting, dst, k)]) for k in ARMS}
            for setting in ("transfer", "no_transfer", "zero_shot")},
            "codes": {k: fits[(f"{src}->{dst}", k)] for k in ARMS},
            "controls": report["domains"][dst]["controls"] if dst in report["domains"] else {},
            "learned_minus_frozen": {st: _deltas(ranks, st, dst, cfg) for st in ("transfer", "no_transfer",
                                                                                  "zero_shot")},
            "transfer_minus_no_transfer": {
                k: _interval(ranks[("transfer", dst, k)], ranks[("no_transfer", dst, k)], cfg) for k in ARMS}}
    report["estimators"] = {k: headline(report, k) for k in ARMS}
    return report


def headline(report: dict, arm: str) -> dict:
    """One arm's figures in one flat dict: ``<setting>/<domain>/<metric>_mean`` (and _std)."""
    out: dict = {}
    for name, d in report["domains"].items():
        for m, v in d["arms"][arm].items():
            if isinstance(v, float):
                out[f"in_domain/{name}/{m}"] = v
    t = report.get("transfer")
    for setting, by_arm in (t or {}).get("settings", {}).items():
        for m, v in by_arm[arm].items():
            if isinstance(v, float):
                out[f"{setting}/{t['target']}/{m}"] = v
    return out


def _interval(a: list[np.ndarray], b: list[np.ndarray], cfg: RecLabConfig) -> dict:
    out = {}
    for m in ("recall@10", "ndcg@10"):
        pa = np.stack([_per_user(r)[m] for r in a])
        pb = np.stack([_per_user(r)[m] for r in b])
        out[m] = paired_bootstrap(pa, pb, draws=cfg.bootstrap, seed=cfg.seed)
    return out


def _deltas(ranks: dict, setting: str, domain: str, cfg: RecLabConfig) -> dict:
    """learned - frozen per test user, pooled over seeds: mean and paired bootstrap 95% interval."""
    return _interval(ranks[(setting, domain, "learned")], ranks[(setting, domain, "frozen")], cfg)


def report_rows(report: dict) -> list[dict]:
    """Long rows for the warehouse (lab_results): section result (per arm, ``estimator`` = arm; metric
    ``<setting>/<domain>/<metric>``; per seed and, ``seed`` null, the mean and std), control, delta
    (learned - frozen and its interval), curve (validation NDCG@10 per step and seed)."""
    rows: list[dict] = []

    def add(section: str, name: str, metric: str, value, seed=None, step=None) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            rows.append({"section": section, "estimator": name, "k": 10, "temperature": None, "samples": None,
                         "seed": seed, "step": step, "metric": metric, "value": float(value)})

    def arms(setting: str, domain: str, by_arm: dict) -> None:
        for arm, r in by_arm.items():
            for m, v in r.items():
                add("result", arm, f"{setting}/{domain}/{m}", v)
            for s, ps in enumerate(r["per_seed"]):
                seed = report["config"]["seed"] + s
                for m, v in ps["test"].items():
                    add("result", arm, f"{setting}/{domain}/{m}", v, seed=seed)
                for m in ("seconds", "saved_mb", "steps_done"):
                    add("result", arm, f"{setting}/{domain}/{m}", ps.get(m), seed=seed)
                for c in ps.get("curve", []):
                    add("curve", arm, f"{setting}/{domain}/valid_ndcg@10", c["valid_ndcg@10"], seed=seed,
                        step=c["step"])

    def deltas(setting: str, domain: str, d: dict, name: str = "learned-frozen") -> None:
        for m, ci in d.items():
            for k in ("mean", "lo", "hi"):
                add("delta", name, f"{setting}/{domain}/{m}_{k}", ci[k])

    for name, d in report["domains"].items():
        arms("in_domain", name, d["arms"])
        for c, ms in d["controls"].items():
            for m, v in ms.items():
                add("control", c, f"in_domain/{name}/{m}", v)
        deltas("in_domain", name, d["learned_minus_frozen"])
    t = report.get("transfer")
    if t:
        for setting, by_arm in t["settings"].items():
            arms(setting, t["target"], by_arm)
            deltas(setting, t["target"], t["learned_minus_frozen"][setting])
        for arm, d in t["transfer_minus_no_transfer"].items():
            deltas("transfer", t["target"], d, name=f"{arm}:transfer-no_transfer")
    return rows
