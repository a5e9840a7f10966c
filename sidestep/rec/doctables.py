"""Lookup tables as document vectors for retrieval: the same discrete codes, a text domain.

A document is its D codes; its vector is the mean of its D code embeddings. The
table starts at the codebook's own reconstruction (so before training it scores
like pooled cosine on PQ-decoded vectors) and is fine-tuned on query-document
pairs against the frozen query encoder plus a small residual adapter (zero at
start). Recall can fuse it with pooled cosine: `pooled + w * table`, with `w` tuned
on held-out training queries, never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sidestep.eval.metrics import mean_ndcg_rows
from sidestep.rec.tables import CodeTable


@dataclass(frozen=True)
class DocTableConfig:
    temperature: float = 0.05
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    adapter_lr: float = 1e-3
    seed: int = 0


class DocTables(nn.Module):
    def __init__(self, init_table: np.ndarray):
        super().__init__()
        d, m, h = init_table.shape
        self.table = CodeTable(d, m, h)
        with torch.no_grad():
            self.table.table.copy_(torch.from_numpy(init_table))
        self.adapter = nn.Linear(h, h)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)

    def docs(self, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.table.item_matrix(codes)[1:], dim=-1)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        return F.normalize(q + self.adapter(q), dim=-1)


def train_doc_tables(model: DocTables, codes: torch.Tensor, queries: np.ndarray, pairs: Sequence[tuple[int, int]],
                     cfg: DocTableConfig = DocTableConfig()) -> list[float]:
    """Cross-entropy of each (query, relevant document) pair over all documents."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    q = torch.from_numpy(np.asarray(queries, np.float32))
    pairs_a = np.asarray(pairs, dtype=np.int64)
    opt = torch.optim.Adam([{"params": model.table.parameters(), "lr": cfg.lr},
                            {"params": model.adapter.parameters(), "lr": cfg.adapter_lr}])
    curve = []
    for _ in range(cfg.epochs):
        order = rng.permutation(len(pairs_a))
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            b = pairs_a[order[s:s + cfg.batch_size]]
            logits = model.queries(q[b[:, 0]]) @ model.docs(codes).T / cfg.temperature
            loss = F.cross_entropy(logits, torch.from_numpy(b[:, 1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append(float(np.mean(losses)))
    return curve


@torch.no_grad()
def table_scores(model: DocTables, codes: torch.Tensor, queries: np.ndarray) -> np.ndarray:
    model.eval()
    q = torch.from_numpy(np.asarray(queries, np.float32))
    return (model.queries(q) @ model.docs(codes).T).numpy()


def max_chunk_scores(queries: np.ndarray, chunks: np.ndarray, chunk_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """Pooled-cosine recall's document score: the best chunk of each document (what the index serves);
    -inf for a document without chunks. Chunks may come in any order (chunk_doc[c] is chunk c's document)."""
    order = np.argsort(chunk_doc, kind="stable")
    docs = np.asarray(chunk_doc)[order]
    s = np.asarray(queries, np.float32) @ np.asarray(chunks, np.float32)[order].T
    out = np.full((len(s), n_docs), -np.inf, dtype=np.float32)
    if len(docs):
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        out[:, docs[starts]] = np.maximum.reduceat(s, starts, axis=1)
    return out


def tune_weight(pooled: np.ndarray, table: np.ndarray, qrels: dict[int, set[int]],
                grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)) -> tuple[float, dict]:
    """The fusion weight with the best nDCG@10 on the given (held-out training) queries."""
    scores = {w: mean_ndcg_rows(pooled + w * table, qrels, 10) for w in grid}
    return max(scores, key=lambda w: (scores[w], -w)), scores
