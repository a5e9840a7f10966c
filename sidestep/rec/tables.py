"""Learnable lookup tables over discrete codes and a SASRec-style sequence model (VQ-Rec).

An item is its D codes; its vector is the mean of D rows, one from each
position's table of M learnable embeddings. No item-id embedding exists, so an
item never seen in training still has a vector. Gradient reaches the tables,
never the code assignment, which stays frozen in the codebook.

Each domain owns a `CodeTable` (its table plus its input layer norm); the
`SeqEncoder` is shared across domains. Fine-tuning a new domain "table-only"
trains that domain's `CodeTable` and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sidestep.eval.metrics import ndcg_of_target_ranks


@dataclass(frozen=True)
class SeqConfig:
    """VQ-Rec's defaults."""

    hidden: int = 300
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    max_history: int = 50
    temperature: float = 0.07
    repeat_bias: bool = True  # a learned logit offset for items already in the history

    def to_dict(self) -> dict:
        return asdict(self)


class CodeTable(nn.Module):
    """D tables of M embeddings for one domain, and that domain's input layer norm."""

    def __init__(self, positions: int, codewords: int, hidden: int, *, std: float = 0.02):
        super().__init__()
        self.positions, self.codewords = positions, codewords
        self.table = nn.Parameter(torch.randn(positions, codewords, hidden) * std)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def item_matrix(self, codes: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1, H) item vectors for codes (N, D); row 0 (padding) is zero.

        A sparse (N+1, D*M) averaging matrix times the flattened table: one
        sparse matmul instead of materializing an (N, D, H) gather every step.
        """
        t = self.table if table is None else table
        avg = averaging_matrix(codes, self.codewords)
        return torch.sparse.mm(avg, t.reshape(-1, t.shape[-1]))


def averaging_matrix(codes: torch.Tensor, codewords: int) -> torch.Tensor:
    n, positions = codes.shape
    rows = torch.arange(1, n + 1).repeat_interleave(positions)
    cols = (codes.long() + torch.arange(positions) * codewords).reshape(-1)
    vals = torch.full((n * positions,), 1.0 / positions)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n + 1, positions * codewords),
                                   check_invariants=False).coalesce()


class SeqEncoder(nn.Module):
    """Position embedding + a causal Transformer; the output at the last real position is the user."""

    def __init__(self, cfg: SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.position = nn.Embedding(cfg.max_history, cfg.hidden)
        nn.init.normal_(self.position.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.inner, cfg.dropout, activation="gelu",
                                           batch_first=True, layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(cfg.dropout)
        # Learned, not imposed: trained by the same cross-entropy, it goes negative where users rarely
        # repeat an item and positive where they do (the evaluation still ranks every item).
        self.repeat = nn.Parameter(torch.zeros(())) if cfg.repeat_bias else None

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """items: (B, L, H) vectors of the history, real items first then padding; lengths: (B,)."""
        width = items.shape[1]
        h = self.dropout(norm(items + self.position.weight[:width]))
        causal = torch.triu(torch.full((width, width), float("-inf")), diagonal=1)
        out = self.encoder(h, mask=causal, is_causal=True)
        return out[torch.arange(len(lengths)), lengths - 1]


class SeqRec(nn.Module):
    """The shared encoder plus one CodeTable per domain."""

    def __init__(self, cfg: SeqConfig, positions: int, codewords: int, domains: list[str]):
        super().__init__()
        self.cfg = cfg
        self.positions, self.codewords = positions, codewords
        self.encoder = SeqEncoder(cfg)
        self.tables = nn.ModuleDict({d: CodeTable(positions, codewords, cfg.hidden) for d in domains})
        # per domain: weight of the frozen text cosine added to the code logits (see TextFusion); 0 = codes only
        self.fusion: dict[str, TextFusion] = {}

    def add_domain(self, domain: str, init_from: str | None = None) -> CodeTable:
        table = CodeTable(self.positions, self.codewords, self.cfg.hidden)
        if init_from is not None:
            table.load_state_dict(self.tables[init_from].state_dict())
        self.tables[domain] = table
        return table

    def user_vectors(self, domain: str, items: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor,
                     ) -> torch.Tensor:
        width = int(lengths.max())
        x = items[history[:, :width]]
        return F.normalize(self.encoder(x, lengths, self.tables[domain].norm), dim=-1)

    def scores(self, user: torch.Tensor, items: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine / temperature against every real item (columns are items 1..N), plus the learned repeat
        bias on the items of each row's history."""
        logits = user @ F.normalize(items[1:], dim=-1).T / self.cfg.temperature
        if history is not None and self.encoder.repeat is not None:
            logits = logits + self.encoder.repeat * history_mask(history, logits.shape[1])
        return logits


@dataclass(frozen=True)
class TextFusion:
    """Late fusion with the frozen text embeddings and the item's popularity: logit = cos(user, item) / T
    + weight * cos(text user, item text) + popularity * log(1 + the item's training interactions), where
    the text user is the recency-weighted mean (decay**age) of the history's text vectors.

    The codes keep what the catalogue's text says only up to quantization, and the tables learn what
    co-occurs; the text cosine adds back the fine-grained content match. A cosine cannot say how often
    an item is bought (every item vector has unit norm), so the log count adds that prior back; it is
    a count, not an item-id embedding, so an unseen item simply has none. Both scalars are chosen on
    the valid split after training (`choose_text_weight`), never on test; 0 and 0 leave the codes alone.
    """

    weight: float = 0.0
    decay: float = 0.7
    popularity: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def item_prior(counts: np.ndarray) -> torch.Tensor:
    """(N,) log(1 + count) of items 1..N from per-index counts (N+1,) (`sidestep.rec.data.popularity`)."""
    return torch.from_numpy(np.log1p(np.asarray(counts, dtype=np.float64)[1:]).astype(np.float32))


def text_user_vectors(text: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor, decay: float,
                      ) -> torch.Tensor:
    """(B, dim) unit vectors: the history's text vectors weighted decay**age (age 0 = the last item).
    text: (N+1, dim) with row 0 (padding) zero."""
    width = history.shape[1]
    age = lengths.unsqueeze(1) - 1 - torch.arange(width).unsqueeze(0)
    w = torch.where(history > 0, decay ** age.clamp(min=0).float(), torch.zeros(()))
    return F.normalize((text[history] * w.unsqueeze(-1)).sum(1), dim=-1)


def unit_text(vectors: np.ndarray) -> torch.Tensor:
    """(N, dim) item text vectors -> (N+1, dim) unit rows with a zero padding row 0."""
    t = F.normalize(torch.from_numpy(np.asarray(vectors, dtype=np.float32)), dim=-1)
    return torch.cat([torch.zeros(1, t.shape[1]), t])


def history_mask(history: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, N) float: 1 where item column j (item j+1) occurs in the row's history."""
    mask = torch.zeros(history.shape[0], n_items + 1)
    mask.scatter_(1, history, 1.0)
    return mask[:, 1:]


def model_state(model, domain: str, codebook_version: str) -> dict:
    return {"config": model.cfg.to_dict(), "positions": model.positions, "codewords": model.codewords,
            "encoder": model.encoder.state_dict(), "table": model.tables[domain].state_dict(),
            "codebook_version": codebook_version,
            "text_fusion": model.fusion.get(domain, TextFusion()).to_dict()}


def model_from_state(state: dict, domain: str):
    model = SeqRec(SeqConfig(**state["config"]), state["positions"], state["codewords"], [domain])
    model.encoder.load_state_dict(state["encoder"])
    model.tables[domain].load_state_dict(state["table"])
    model.fusion[domain] = TextFusion(**state.get("text_fusion", {}))  # tables published before fusion: codes only
    model.eval()
    return model


def item_vectors(model, domain: str, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        m = model.tables[domain].item_matrix(torch.from_numpy(codes.astype(np.int64)))[1:]
        return F.normalize(m, dim=-1).numpy()


def fused_item_vectors(model, domain: str, codes: np.ndarray, text: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(N, hidden + dim + 1): unit code vectors, unit text vectors, the log-count prior (`item_prior`).
    With `fused_query` on the user side, one inner product is the model's fused logit (repeat bias
    aside), so one FAISS index serves it."""
    return np.hstack([item_vectors(model, domain, codes), unit_text(text)[1:].numpy(),
                      np.asarray(prior, dtype=np.float32).reshape(-1, 1)]).astype(np.float32)


def fused_query(model, domain: str, user: torch.Tensor, text_user: torch.Tensor, *, prior: bool = True,
                ) -> np.ndarray:
    """[user / T, weight * text user, popularity]; prior=False for indexes published before the prior
    column existed (code and text parts only)."""
    f = model.fusion.get(domain, TextFusion())
    parts = [(user / model.cfg.temperature).numpy(), (f.weight * text_user).numpy()]
    if prior:
        parts.append(np.full((user.shape[0], 1), f.popularity, dtype=np.float32))
    return np.hstack(parts).astype(np.float32)


def trainable_parameters(model: SeqRec, domain: str, mode: str) -> list[nn.Parameter]:
    """table-only: the domain's table and input norm; full and scratch: everything the domain uses."""
    own = list(model.tables[domain].parameters())
    if mode == "table-only":
        return own
    if mode in {"full", "scratch"}:
        return own + list(model.encoder.parameters())
    raise ValueError(f"unknown mode {mode!r}: expected table-only, full or scratch")


def count_parameters(params: list[nn.Parameter]) -> int:
    return int(sum(p.numel() for p in params))


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 50)) -> dict[str, float]:
    """Recall@k and NDCG@k for one relevant item per query; ranks are 0-based."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(ndcg_of_target_ranks(ranks, k).mean()) if len(ranks) else 0.0
    return out


def target_ranks(scores: torch.Tensor, target: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among all items (scores columns = items 1..N). Ties count against
    the target (pessimistic), so a constant scorer cannot look good.

    With `history`, the other items of the history are excluded from the ranking (the masked variant);
    the target itself is never excluded.
    """
    s = scores.clone()
    if history is not None:
        rows = torch.arange(len(s)).unsqueeze(1).expand_as(history)
        keep = (history > 0) & (history != target.unsqueeze(1))
        s[rows[keep], history[keep] - 1] = float("-inf")
    t = s.gather(1, (target - 1).unsqueeze(1))
    return (s >= t).sum(1) - 1


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))
