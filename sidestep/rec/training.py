"""Training and evaluation of the sequence model over lookup tables.

Three regimes, one loop: `scratch` and `full` train everything the domain uses,
`table-only` trains only the domain's table (the encoder stays bit-identical).
Pre-training mixes domains: in-batch negatives from every domain in the batch,
plus semi-synthetic negatives (a positive's code with positions replaced at
random), so the encoder learns to tell real code combinations from plausible
fakes rather than memorizing one catalogue.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from sidestep.rec.data import RecData, Split
from sidestep.rec.tables import (
    SeqRec,
    TextFusion,
    cosine_schedule,
    rank_metrics,
    target_ranks,
    text_user_vectors,
    trainable_parameters,
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 8  # epochs without a better valid NDCG@10 before stopping
    warmup_steps: int = 100
    eval_batch: int = 2048
    seed: int = 0
    max_seconds: float | None = None  # wall-clock budget; the best state so far is kept
    fake_ratio: float = 0.5  # pre-training: share of positions replaced in a semi-synthetic negative
    fakes_per_positive: int = 1


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    seconds: float
    curve: list[dict] = field(default_factory=list)  # per epoch: loss, valid metrics, seconds


def batches(split: Split, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches: rows of similar length together keep the padded width small
    (most histories are a few items; a random batch would pad them all to 50)."""
    order = rng.permutation(len(split))
    pool = batch_size * 32
    out: list[np.ndarray] = []
    for s in range(0, len(order), pool):
        chunk = order[s:s + pool]
        chunk = chunk[np.argsort(split.lengths[chunk], kind="stable")]
        out.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def _tensors(split: Split, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = split.lengths[rows]
    width = int(lengths.max())
    return (torch.from_numpy(split.history[rows, :width]), torch.from_numpy(lengths),
            torch.from_numpy(split.target[rows]))


@torch.no_grad()
def evaluate(model: SeqRec, domain: str, codes: torch.Tensor, split: Split, *, eval_batch: int = 2048,
             masked: bool = False, table: torch.Tensor | None = None, text: torch.Tensor | None = None,
             prior: torch.Tensor | None = None, fusion: TextFusion | None = None,
             ) -> tuple[dict[str, float], np.ndarray]:
    """Full ranking over all items of the domain; returns metrics and the 0-based target ranks.

    With `text` ((N+1, dim) unit rows, `unit_text`) and `prior` ((N,), `item_prior`), the scores are
    fused as the domain's `TextFusion` (or `fusion`) says; without them, the codes alone are scored."""
    fusion = fusion or model.fusion.get(domain, TextFusion())
    bias = fusion.popularity * prior if prior is not None and fusion.popularity else None
    ranks = []
    for logits, sims, hist, target in _score_batches(model, domain, codes, split, eval_batch, table,
                                                     text if fusion.weight else None, fusion.decay):
        if sims is not None:
            logits = logits + fusion.weight * sims
        if bias is not None:
            logits = logits + bias
        ranks.append(target_ranks(logits, target, hist if masked else None))
    r = torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)
    return rank_metrics(r), r


def _score_batches(model: SeqRec, domain: str, codes: torch.Tensor, split: Split, eval_batch: int,
                   table: torch.Tensor | None, text: torch.Tensor | None, decay: float):
    """Per batch of the split: (code logits, text cosines or None, history, target), in eval mode."""
    was = model.training
    model.eval()
    try:
        items = model.tables[domain].item_matrix(codes, table)
        for s in range(0, len(split), eval_batch):
            rows = np.arange(s, min(s + eval_batch, len(split)))
            hist, lengths, target = _tensors(split, rows)
            user = model.user_vectors(domain, items, hist, lengths)
            sims = None if text is None else text_user_vectors(text, hist, lengths, decay) @ text[1:].T
            yield model.scores(user, items, hist), sims, hist, target
    finally:
        model.train(was)


@torch.no_grad()
def choose_text_weight(model: SeqRec, domain: str, codes: torch.Tensor, text: torch.Tensor, split: Split,
                       weights: tuple[float, ...], *, decay: float = 0.7, prior: torch.Tensor | None = None,
                       prior_weights: tuple[float, ...] = (0.0,), eval_batch: int = 2048,
                       ) -> tuple[TextFusion, dict[tuple[float, float], float]]:
    """The (text weight, popularity weight) pair with the best NDCG@10 on `split` (the valid split: the
    early-stopping metric), over the grid of both; ties go to the smaller pair, so (0, 0) (codes only)
    wins unless the text or the prior helps. Returns the fusion and NDCG@10 by (text, popularity)."""
    grid = [(w, b) for w in sorted({0.0, *map(float, weights)})
            for b in (sorted({0.0, *map(float, prior_weights)}) if prior is not None else [0.0])]
    ranks: dict[tuple[float, float], list[torch.Tensor]] = {wb: [] for wb in grid}
    for logits, sims, _, target in _score_batches(model, domain, codes, split, eval_batch, None, text, decay):
        for w, b in grid:
            ranks[(w, b)].append(target_ranks(logits + w * sims + (b * prior if b else 0.0), target))
    by_weight = {wb: rank_metrics(torch.cat(r).numpy())["ndcg@10"] for wb, r in ranks.items()}
    best = max(grid, key=lambda wb: (by_weight[wb], -wb[0], -wb[1]))
    return TextFusion(best[0], decay, best[1]), by_weight


def fit_domain(model: SeqRec, domain: str, codes: torch.Tensor, data: RecData, mode: str, cfg: TrainConfig,
               *, log: Log | None = None) -> TrainResult:
    """Cross-entropy over all items of the domain, early stopping on valid NDCG@10; keeps the best state."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = trainable_parameters(model, domain, mode)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(data.train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, total, cfg.warmup_steps))
    best = (-1.0, 0, {}, copy.deepcopy(_state(model, params)))
    curve: list[dict] = []
    t0 = time.perf_counter()
    epochs_run = 0
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for rows in batches(data.train, cfg.batch_size, rng):
            hist, lengths, target = _tensors(data.train, rows)
            items = model.tables[domain].item_matrix(codes)
            logits = model.scores(model.user_vectors(domain, items, hist, lengths), items, hist)
            loss = F.cross_entropy(logits, target - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        epochs_run = epoch + 1
        valid, _ = evaluate(model, domain, codes, data.valid, eval_batch=cfg.eval_batch)
        el = time.perf_counter() - t0
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), **{f"valid_{k}": v for k, v in valid.items()},
                      "seconds": round(el, 2)})
        if log:
            log(f"{domain} {mode} epoch {epoch}: loss {np.mean(losses):.4f} valid ndcg@10 {valid['ndcg@10']:.4f} "
                f"recall@10 {valid['recall@10']:.4f} ({el:.0f} s)")
        if valid["ndcg@10"] > best[0]:
            best = (valid["ndcg@10"], epoch, valid, copy.deepcopy(_state(model, params)))
        elif epoch - best[1] >= cfg.patience:
            break
        if cfg.max_seconds and el > cfg.max_seconds:
            if log:
                log(f"{domain} {mode}: time budget of {cfg.max_seconds:.0f} s reached after epoch {epoch}")
            break
    _restore(model, params, best[3])
    for p in model.parameters():
        p.requires_grad_(True)
    return TrainResult(best[1], best[2], epochs_run, time.perf_counter() - t0, curve)


def _state(model: SeqRec, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(model: SeqRec, params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, s in zip(params, state, strict=True):
            p.copy_(s)


# ----------------------------------------------------------------------------- pre-training


def pretrain(model: SeqRec, domains: dict[str, tuple[torch.Tensor, RecData]], cfg: TrainConfig,
             *, log: Log | None = None) -> TrainResult:
    """Mixed-domain pre-training with in-batch and semi-synthetic negatives; early stopping on the
    mean valid NDCG@10 across domains."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    names = list(domains)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(-(-len(d.train) // cfg.batch_size) for _, d in domains.values())
    total = steps * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, total, cfg.warmup_steps))
    best = (-1.0, 0, {}, copy.deepcopy(model.state_dict()))
    curve: list[dict] = []
    t0 = time.perf_counter()
    epochs_run = 0
    per_domain = max(cfg.batch_size // len(names), 1)
    for epoch in range(cfg.epochs):
        model.train()
        streams = {n: batches(domains[n][1].train, per_domain, rng) for n in names}
        losses = []
        for step in range(steps):
            loss = _mixed_step(model, domains, {n: streams[n][step % len(streams[n])] for n in names}, cfg, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        epochs_run = epoch + 1
        valid = {n: evaluate(model, n, domains[n][0], domains[n][1].valid)[0] for n in names}
        score = float(np.mean([v["ndcg@10"] for v in valid.values()]))
        el = time.perf_counter() - t0
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_ndcg@10_mean": score,
                      "seconds": round(el, 2)})
        if log:
            log(f"pretrain epoch {epoch}: loss {np.mean(losses):.4f} valid ndcg@10 " +
                " ".join(f"{n}={v['ndcg@10']:.4f}" for n, v in valid.items()) + f" ({el:.0f} s)")
        if score > best[0]:
            best = (score, epoch, {"ndcg@10": score}, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
        if cfg.max_seconds and el > cfg.max_seconds:
            break
    model.load_state_dict(best[3])
    return TrainResult(best[1], best[2], epochs_run, time.perf_counter() - t0, curve)


def _mixed_step(model: SeqRec, domains: dict[str, tuple[torch.Tensor, RecData]], rows: dict[str, np.ndarray],
                cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    users, positives, fakes, hists, targets = [], [], [], [], []
    for name, (codes, data) in domains.items():
        table = model.tables[name]
        items = table.item_matrix(codes)
        hist, lengths, target = _tensors(data.train, rows[name])
        users.append(model.user_vectors(name, items, hist, lengths))
        positives.append(items[target])
        hists.append(hist)
        targets.append(target)
        fake = _semi_synthetic(codes[target - 1], table.codewords, cfg.fake_ratio, cfg.fakes_per_positive, rng)
        fakes.append(table.item_matrix(fake)[1:])
    user = torch.cat(users)
    cands = F.normalize(torch.cat(positives + fakes), dim=-1)
    logits = user @ cands.T / model.cfg.temperature
    if model.encoder.repeat is not None:  # the repeat bias sees in-batch candidates of the row's own domain
        logits = logits + model.encoder.repeat * _in_history(hists, targets, cands.shape[0])
    return F.cross_entropy(logits, torch.arange(len(user)))


def _in_history(hists: list[torch.Tensor], targets: list[torch.Tensor], n_cands: int) -> torch.Tensor:
    rows = sum(len(t) for t in targets)
    mask = torch.zeros(rows, n_cands)
    r = c = 0
    for hist, target in zip(hists, targets, strict=True):
        hit = (hist.unsqueeze(2) == target.view(1, 1, -1)).any(1).float()
        mask[r:r + len(target), c:c + len(target)] = hit
        r += len(target)
        c += len(target)
    return mask


def _semi_synthetic(codes: torch.Tensor, codewords: int, ratio: float, copies: int,
                    rng: np.random.Generator) -> torch.Tensor:
    base = codes.repeat(copies, 1)
    swap = torch.from_numpy(rng.random(tuple(base.shape)) < ratio)
    noise = torch.from_numpy(rng.integers(0, codewords, size=tuple(base.shape)))
    return torch.where(swap, noise, base.long())


# ----------------------------------------------------------------------------- non-learned baselines


def popularity_ranks(pop: np.ndarray, split: Split, masked: bool = False) -> np.ndarray:
    scores = torch.from_numpy(pop[1:]).float().unsqueeze(0)
    out = []
    for s in range(0, len(split), 4096):
        rows = np.arange(s, min(s + 4096, len(split)))
        hist, _, target = _tensors(split, rows)
        out.append(target_ranks(scores.expand(len(rows), -1), target, hist if masked else None))
    return torch.cat(out).numpy()


def text_ranks(item_text: np.ndarray, split: Split, *, decay: float = 0.7, masked: bool = False) -> np.ndarray:
    """Zero-shot: the user is the recency-weighted mean of the history's text embeddings
    (weight decay**age), items ranked by cosine. item_text: (N+1, dim), row 0 unused."""
    emb = torch.from_numpy(np.asarray(item_text, dtype=np.float32))
    items = F.normalize(emb[1:], dim=-1)
    out = []
    for s in range(0, len(split), 2048):
        rows = np.arange(s, min(s + 2048, len(split)))
        hist, lengths, target = _tensors(split, rows)
        user = text_user_vectors(emb, hist, lengths, decay)
        out.append(target_ranks(user @ items.T, target, hist if masked else None))
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- code alignment


def alignment_loss(model: SeqRec, domain: str, codes: torch.Tensor, split: Split, batch_size: int,
                   rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy over all items with item vectors built from an aligned table; the model stays frozen
    (eval mode: no dropout), so the only thing that can lower it is the alignment."""
    def loss_fn(aligned: torch.Tensor) -> torch.Tensor:
        rows = rng.choice(len(split), min(batch_size, len(split)), replace=False)
        hist, lengths, target = _tensors(split, rows)
        items = model.tables[domain].item_matrix(codes, aligned)
        logits = model.scores(model.user_vectors(domain, items, hist, lengths), items, hist)
        return F.cross_entropy(logits, target - 1)

    return loss_fn


def fit_code_alignment(model: SeqRec, domain: str, codes: torch.Tensor, data: RecData, *, steps: int = 200,
                       batch_size: int = 256, lr: float = 0.05, seed: int = 0, init: str = "identity"):
    """Learn, per code position, which pre-trained codeword each of this domain's codewords should read
    (straight-through Gumbel-Sinkhorn, Hungarian rounding). Returns the alignment module and its curve."""
    from sidestep.rec.align import CodeAlignment, fit_alignment

    table = model.tables[domain]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    align = CodeAlignment(table.positions, table.codewords, init=init, seed=seed)
    curve = fit_alignment(align, alignment_loss(model, domain, codes, data.train, batch_size,
                                                np.random.default_rng(seed)), table.table, steps=steps, lr=lr)
    for p in model.parameters():
        p.requires_grad_(True)
    return align, curve
