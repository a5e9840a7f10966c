"""The verifier: a small Transformer over token x token similarity maps.

Recall gives a candidate list by pooled cosine; it cannot see *which* query token
matched *where*. The verifier reads, for each query token, a fixed reduction of its
row of the cosine map against the candidate's tokens (max, mean of top-k, soft
histogram kernels, position of the best match, whether consecutive query tokens
match consecutive document tokens), projects it with learned weights, adds a learned
projection of the query token's own embedding (so it can learn which tokens matter),
and runs a Transformer across the query tokens with a [CLS] slot that also holds
the recall scores. Its output logit, plus a learned linear term on the recall
scores, is the final score.

The map reduction is fixed (not learned; sidestep.verify.features), so training
precomputes features once (sidestep.verify.candidates); the token embeddings are the
frozen encoder's, never fine-tuned. The maps are built from the query's tokens through
a learned linear query adapter (sidestep.verify.adapter), trained before the model;
the document side is the stored tokens as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from sidestep.eval.metrics import ndcg_of_scores
from sidestep.verify.candidates import VERIFY_TOP_CHOICES, Candidates, cascade, prescore, prescore_top
from sidestep.verify.features import N_TOKEN_FEATURES, adapt


@dataclass
class VerifierConfig:
    width: int = 64
    layers: int = 2
    heads: int = 4
    ff: int = 128
    dropout: float = 0.1
    qproj: int = 16
    max_query_tokens: int = 64
    # dense cosine, MaxSim / query length, idf-weighted MaxSim, a BM25-style lexical score (each with its
    # z-score in the list), log length
    n_global: int = 9
    # candidates the model itself reads, the list's top by `prescore` (0: all); chosen after training on the
    # held-out training queries (`choose_verify_top`)
    verify_top: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VerifierConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Verifier(nn.Module):
    def __init__(self, cfg: VerifierConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        g = cfg.n_global
        self.tok_in = nn.Linear(N_TOKEN_FEATURES + cfg.qproj, cfg.width)
        self.qproj = nn.Linear(dim, cfg.qproj)
        self.pos = nn.Embedding(cfg.max_query_tokens, cfg.width)
        self.cls_in = nn.Linear(g, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, cfg.ff, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, 1)
        self.skip = nn.Linear(g, 1)  # the learned combination with the recall scores
        # the query adapter (sidestep.verify.adapter), trained before the model; the identity until then
        self.register_buffer("adapter", torch.eye(dim))

    def adapt(self, qtok: torch.Tensor) -> torch.Tensor:
        """Unit query tokens (nq, d) as the model's maps take them: through its query adapter, unit again."""
        return adapt(self.adapter, qtok)

    def forward(self, feats: torch.Tensor, qtok: torch.Tensor, qmask: torch.Tensor,
                glob: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """feats (N, nq, F), qtok (N, nq, d) unit query token vectors, qmask (N, nq) bool, glob (N, G).
        projected: qtok already went through `qproj` ((N, nq, qproj), as `collate(..., model)` gives)."""
        x = self.inputs(feats, self.query_term(qtok, projected), glob)
        pad = None if bool(qmask.all()) else torch.cat([torch.zeros_like(qmask[:, :1]), ~qmask], 1)
        h = self._cls_only(x, pad)
        return self.readout(h, glob)

    def query_term(self, qtok: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """(..., nq, d) query tokens -> (..., nq, width): the query's share of each position's input
        (tok_in's query columns, its bias, the position embedding). It depends on the query alone, so
        scoring computes it once per query, not once per candidate."""
        q = qtok if projected else self.qproj(qtok)
        nq = q.shape[-2]
        w = self.tok_in.weight[:, N_TOKEN_FEATURES:]
        pos = self.pos(torch.arange(nq, device=q.device).clamp(max=self.cfg.max_query_tokens - 1))
        return nn.functional.linear(q, w, self.tok_in.bias) + pos

    def inputs(self, feats: torch.Tensor, qterm: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """The encoder's input: [CLS] from the global features, then each query token's map features
        plus its query term (qterm broadcasts over candidates). Equal to tok_in(cat(feats, qproj(qtok)))
        plus positions."""
        x = nn.functional.linear(feats, self.tok_in.weight[:, :N_TOKEN_FEATURES]) + qterm
        return torch.cat([self.cls_in(glob)[:, None, :], x], 1)

    def readout(self, h: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h)).squeeze(-1) + self.skip(glob).squeeze(-1)

    def _cls_only(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """The encoder with the last layer computed for the [CLS] slot only: the head reads nothing else.
        Equal to encoder(x)[:, 0] in eval mode (a test holds them), and in training mode with the same dropout
        on every path that reaches [CLS] (the attention weights, the attention's and the feed-forward's outputs).

        [CLS]'s attention needs every position's key and value, but not their projections: its score
        against position j is q . (W_k y_j + b_k) = (W_k^T q) . y_j + q . b_k, and the last term is the
        same for every j, so softmax drops it; its output is sum_j a_j (W_v y_j + b_v) =
        W_v (sum_j a_j y_j) + (sum_j a_j) b_v (the weights sum to 1 but where dropout drops some). So the
        query is folded into W_k once per candidate and the value projection applied once to the weighted
        mean, instead of projecting every position's key and value (two thirds of the last layer's work)."""
        *first, last = self.encoder.layers
        for layer in first:
            x = layer(x, src_key_padding_mask=pad)
        att = last.self_attn
        n, _, d = x.shape
        heads, dh = att.num_heads, d // att.num_heads
        w_q, w_k, w_v = att.in_proj_weight.split(d)
        b_q, _, b_v = att.in_proj_bias.split(d)
        y = last.norm1(x)
        q = torch.nn.functional.linear(y[:, 0], w_q, b_q).view(n, heads, dh) / math.sqrt(dh)
        qk = torch.einsum("nhe,hed->nhd", q, w_k.view(heads, dh, d))  # (n, heads, d)
        logits = torch.einsum("nhd,nld->nhl", qk, y)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, :], float("-inf"))
        weights = logits.softmax(-1)
        if self.training and att.dropout > 0:
            weights = nn.functional.dropout(weights, att.dropout)
            bias = (weights.sum(-1)[..., None] * b_v.view(heads, dh)).reshape(n, d)
        else:
            bias = b_v
        mean = torch.einsum("nhl,nld->nhd", weights, y)  # each head's weighted mean of y
        ctx = torch.einsum("nhd,hed->nhe", mean, w_v.view(heads, dh, d)).reshape(n, d) + bias
        h = x[:, 0] + last.dropout1(att.out_proj(ctx))
        return h + last.dropout2(last.linear2(last.dropout(last.activation(last.linear1(last.norm2(h))))))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def choose_verify_top(model: Verifier, val: Sequence[tuple[Candidates, np.ndarray]], tolerance: float = 1e-3,
                      choices: Sequence[int] = VERIFY_TOP_CHOICES) -> tuple[int, dict[int, float]]:
    """The smallest `verify_top` whose validation nDCG@10 is within `tolerance` of scoring the whole list
    (0 = the whole list, when none is, or without validation lists); returns it and every choice's nDCG@10."""
    if not val:
        return 0, {}
    full = score(model, [c for c, _ in val])
    ndcg = {0: float(np.mean([ndcg_of_scores(s, g) for s, (_, g) in zip(full, val, strict=True)]))}
    for k in choices:
        ndcg[k] = float(np.mean([ndcg_of_scores(cascade(prescore(c.glob), s, k), g)
                                 for s, (c, g) in zip(full, val, strict=True)]))
    return next((k for k in choices if ndcg[k] >= ndcg[0] - tolerance), 0), ndcg


def collate(items: Sequence[Candidates], model: Verifier | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Flatten several queries' candidates into one padded batch; returns the split sizes.

    With `model`, each query's tokens are projected once (`model.qproj`) before they are repeated
    for its candidates: 100 candidates share one query, so projecting per candidate repeated the
    same (nq, d) x (d, qproj) product 100 times. Pass projected=True to the model then."""
    nq = max(c.feats.shape[1] for c in items)
    n = sum(c.feats.shape[0] for c in items)
    f = items[0].feats.shape[2]
    qs = [c.qtok if model is None else model.qproj(c.qtok) for c in items]
    feats = torch.zeros((n, nq, f))
    qtok = torch.zeros((n, nq, qs[0].shape[1]))
    qmask = torch.zeros((n, nq), dtype=torch.bool)
    glob = torch.cat([c.glob for c in items])
    r = 0
    for c, qc in zip(items, qs, strict=True):
        cn, cq = c.feats.shape[:2]
        feats[r:r + cn, :cq] = c.feats
        qtok[r:r + cn, :cq] = qc[None]
        qmask[r:r + cn, :cq] = True
        r += cn
    return feats, qtok, qmask, glob, [c.feats.shape[0] for c in items]


def _logits_by_length(model: Verifier, items: Sequence[Candidates]) -> list[torch.Tensor]:
    """Each query's candidate logits, in item order. Queries of one length share a forward pass and lengths are
    not mixed, so no batch carries padding (padding changes no logit, since padded positions are masked, but a
    padding mask sends attention to a slower kernel and a padded batch spends its products on padding); each
    query's term is computed once and broadcast over its candidates (`Verifier.query_term`), and the last layer
    runs for [CLS] alone (`Verifier._cls_only`)."""
    out: list[torch.Tensor] = [torch.zeros(0)] * len(items)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(items):
        groups.setdefault(c.feats.shape[1], []).append(i)
    for idx in groups.values():
        xs = [model.inputs(items[i].feats, model.query_term(items[i].qtok)[None], items[i].glob) for i in idx]
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        glob = items[idx[0]].glob if len(idx) == 1 else torch.cat([items[i].glob for i in idx])
        logits = model.readout(model._cls_only(x, None), glob)
        for i, part in zip(idx, torch.split(logits, [items[i].feats.shape[0] for i in idx]), strict=True):
            out[i] = part
    return out


def train_logits(model: Verifier, items: Sequence[Candidates]) -> torch.Tensor:
    """Training-mode logits of several queries' candidates, concatenated in item order (`_logits_by_length`):
    the same logits as `model(*collate(items, model), projected=True)`, for less work."""
    return torch.cat(_logits_by_length(model, items))


def score(model: Verifier, items: Sequence[Candidates]) -> list[np.ndarray]:
    """Logits per query (`_logits_by_length`), each list in list order (`_whole_list`)."""
    if model.training:  # eval() walks every submodule: 0.6 ms of each served query when called every time
        model.eval()
    with torch.inference_mode():
        return [_whole_list(c, t.numpy()) for c, t in zip(items, _logits_by_length(model, items), strict=True)]


def _whole_list(c: Candidates, logits: np.ndarray) -> np.ndarray:
    """A partly verified list's scores in list order (`cascade`); a fully verified list's as they are."""
    if c.rows is None:
        return logits
    full = np.zeros(len(c.prior), np.float32)
    full[c.rows] = logits
    return cascade(c.prior, full, len(c.rows))


def pair_loss(logits: torch.Tensor, pairs: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hinge on (positive row, near-miss row) pairs: each positive above its own near-misses."""
    if not len(pairs):
        return logits.sum() * 0
    return torch.relu(margin - (logits[pairs[:, 0]] - logits[pairs[:, 1]])).mean()


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Softmax cross-entropy per query list; several positives share the probability mass."""
    losses = []
    for lg, lb in zip(torch.split(logits, sizes), torch.split(labels, sizes), strict=True):
        if lb.any() and (~lb).any():
            losses.append(torch.logsumexp(lg, 0) - torch.logsumexp(lg[lb], 0))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


@dataclass
class Example:
    """A training list: candidates with labels (True = relevant), and the (positive, near-miss) row pairs.

    Near-misses stay out of the listwise loss: under topical relevance judgments a negated
    abstract may still be "relevant", so they only have to rank below their own positive."""

    cands: Candidates
    labels: torch.Tensor  # (C,) bool; near-miss rows are False and masked out of the listwise loss
    pairs: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 2), dtype=torch.long))


def served_rows(e: Example, top: int, n_list: int) -> Example | None:
    """The training list the verify stage would serve: the recall list's (first n_list rows) top `top` by
    `prescore`, plus the near-misses of the positives among them; None when no positive is among them.

    Training on every row teaches the model to sort the bottom of the list, which the verify stage never
    shows it (it reads the pre-score top only), and positives that recall missed (appended to the list)
    teach it what low recall scores look like on a relevant document, which serving never asks."""
    keep = set(prescore_top(prescore(e.cands.glob[:n_list]), top).tolist())
    pairs = [(a, b) for a, b in e.pairs.tolist() if a in keep]
    rows = sorted(keep | {b for _, b in pairs})
    if not bool(e.labels[rows].any()):
        return None
    pos = {old: new for new, old in enumerate(rows)}
    idx = torch.tensor(rows)
    c = e.cands
    return Example(Candidates(c.feats[idx], c.qtok, c.glob[idx], c.maxsim[idx]), e.labels[idx],
                   torch.tensor([[pos[a], pos[b]] for a, b in pairs], dtype=torch.long).reshape(-1, 2))


def _sample_rows(e: Example, rows: int, rng: np.random.Generator) -> Example:
    """Positives, near-miss pairs and up to `rows` other rows of one training list."""
    n = e.cands.feats.shape[0]
    nm = set(e.pairs[:, 1].tolist()) if len(e.pairs) else set()
    must = set(np.flatnonzero(e.labels.numpy()).tolist()) | nm | set(e.pairs[:, 0].tolist() if len(e.pairs) else [])
    rest = [i for i in range(n) if i not in must]
    if len(rest) <= rows:
        return e
    keep = sorted(must | set(rng.choice(rest, rows, replace=False).tolist()))
    pos = {old: new for new, old in enumerate(keep)}
    idx = torch.tensor(keep)
    c = e.cands
    pairs = torch.tensor([[pos[int(a)], pos[int(b)]] for a, b in e.pairs.tolist()], dtype=torch.long).reshape(-1, 2)
    return Example(Candidates(c.feats[idx], c.qtok, c.glob[idx], c.maxsim[idx]), e.labels[idx], pairs)


def val_ndcg10(model: Verifier, val: Sequence[tuple[Candidates, np.ndarray]], top: int = 0) -> float:
    """Mean nDCG@10 of validation lists (candidates + gains), each scored whole, or as served when `top` > 0:
    only its pre-score top `top` scored, the rest below them in pre-score order (`cascade`)."""
    if not val:
        return 0.0
    scores = score(model, [c for c, _ in val])
    if top:
        scores = [s if c.rows is not None else cascade(prescore(c.glob), s, top)
                  for s, (c, _) in zip(scores, val, strict=True)]
    return float(np.mean([ndcg_of_scores(s, g) for s, (_, g) in zip(scores, val, strict=True)]))


def fit(examples: Sequence[Example], val: Sequence[tuple[Candidates, np.ndarray]], cfg: VerifierConfig, dim: int,
        *, epochs: int = 30, batch_queries: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4,
        seed: int = 0, patience: int = 6, near_miss_weight: float = 0.3, list_rows: int = 32,
        log=None, init: Verifier | None = None, val_top: int = 0) -> tuple[Verifier, list[dict]]:
    """Listwise training; the epoch with the best validation nDCG@10 (val: candidates + gains) is kept.
    val_top: validate each list as the verify stage serves it, only the pre-score's top val_top scored and the
    rest below them (give train_top: a model trained on served rows never learns to sort the list's bottom, so
    scoring the whole list measures what serving never shows; 0: the whole list).

    Each epoch reads every positive, its near-misses and `list_rows` rows of the list drawn at random
    (list statistics were computed on the whole list beforehand, so a sample sees serving's scale)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Verifier(cfg, dim)
    if init is not None:  # fine-tuning: start from another verifier's weights (the general one); its epoch 0 competes
        model.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(examples) // batch_queries))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, curve, bad = -1.0, None, [], 0
    if init is not None and val:
        best = val_ndcg10(model, val, val_top)
        best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        curve.append({"epoch": 0, "loss": None, "val_ndcg10": best})
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(examples))
        total, nb = 0.0, 0
        for s in range(0, len(order), batch_queries):
            batch = [_sample_rows(examples[i], list_rows, rng) for i in order[s:s + batch_queries]]
            logits = train_logits(model, [e.cands for e in batch])
            keep, pairs, r = [], [], 0
            for e in batch:
                n = e.cands.feats.shape[0]
                nm = torch.zeros(n, dtype=torch.bool)
                if len(e.pairs):
                    nm[e.pairs[:, 1]] = True
                    pairs.append(e.pairs + r)
                keep.append(~nm)
                r += n
            keep_t = torch.cat(keep)
            labels = torch.cat([e.labels for e in batch])
            kept_sizes = [int(k.sum()) for k in keep]
            loss = listwise_loss(logits[keep_t], labels[keep_t], kept_sizes)
            if pairs:
                loss = loss + near_miss_weight * pair_loss(logits, torch.cat(pairs))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
            nb += 1
        v = val_ndcg10(model, val, val_top)
        curve.append({"epoch": epoch, "loss": total / max(nb, 1), "val_ndcg10": v})
        if log:
            log(f"epoch {epoch}: loss {total / max(nb, 1):.4f} val nDCG@10 {v:.4f}")
        if v > best:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, curve
