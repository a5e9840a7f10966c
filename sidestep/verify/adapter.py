"""The verifier's query adapter: a learned linear map of the query's token vectors, before any map is built.

The token maps are cosines of the frozen encoder's vectors: which directions of the query's tokens
count is the encoder's choice, made for pooled similarity. The adapter learns it from the domain's
training qrels, on the query side only (q' = normalize(A q)), so the stored document tokens, their PQ
codes and the compiled map reductions stay as they are, and a request pays one (nq, d) x (d, d) product.

It is trained by itself, before the verifier, as late interaction with a learned query map: MaxSim of
the adapted query against each candidate's frozen tokens, a listwise loss over (positives, recall's
hard negatives), A starting at the identity, the epoch with the best held-out nDCG@10 kept. The
verifier then trains on maps built from adapted queries. MaxSim itself stays untrained: the baseline
reranks with the raw query tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sidestep.eval.metrics import ndcg_of_scores
from sidestep.verify.features import FlatTokens, adapt


@dataclass
class TokenList:
    """One training query's candidates as raw tokens: what the adapter trains on."""

    qtok: torch.Tensor  # (nq, d) unit query tokens
    docs: torch.Tensor  # (N, d) float16 unit document tokens, the candidates' runs in order
    index: torch.Tensor  # (C, L) each candidate's rows in `docs` (padded with 0)
    mask: torch.Tensor  # (C, L) bool, True where the row is the candidate's
    gains: np.ndarray  # (C,) relevance
    rows: torch.Tensor | None = None  # (N,) where `docs` is a TokenPool's, shared: the list's rows of it


def unit_half(flat: FlatTokens) -> torch.Tensor:
    """Flat tokens as unit float16 rows (768 bytes a token)."""
    vecs = torch.from_numpy(np.asarray(flat.vectors(), np.float32))
    return (vecs / vecs.norm(dim=-1, keepdim=True).clamp(min=1e-12)).half()


def _layout(lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    starts = np.cumsum(lengths) - lengths
    mask = np.arange(width)[None, :] < lengths[:, None]
    index = np.where(mask, starts[:, None] + np.arange(width)[None, :], 0)
    return torch.from_numpy(index), torch.from_numpy(mask)


def token_list(qtok: torch.Tensor, flat: FlatTokens, gains: np.ndarray) -> TokenList:
    """A TokenList from unit query tokens and the candidates' flat tokens, holding its own copy of them."""
    index, mask = _layout(np.asarray(flat.lengths, dtype=np.int64))
    return TokenList(qtok.float(), unit_half(flat), index, mask, np.asarray(gains, np.float32))


class TokenPool:
    """Every candidate document's unit float16 tokens, once: the lists of many training queries share
    their candidates (SciFact: 674 lists of about 32 candidates over 5,183 abstracts), so lists that
    index one pool hold a quarter of the tokens that lists with their own copies would."""

    def __init__(self, doc_ids: Sequence[str], read, batch: int = 256):
        """read(doc_ids) -> FlatTokens of those documents, in order (read in batches of `batch`)."""
        parts, spans, at = [], {}, 0
        for s in range(0, len(doc_ids), batch):
            ids = list(doc_ids[s:s + batch])
            flat = read(ids)
            parts.append(unit_half(flat))
            for d, n in zip(ids, np.asarray(flat.lengths, dtype=np.int64), strict=True):
                spans[d] = (at, int(n))
                at += int(n)
        self.vecs = torch.cat(parts) if parts else torch.zeros((0, 0), dtype=torch.float16)
        self.spans = spans

    def token_list(self, qtok: torch.Tensor, doc_ids: Sequence[str], gains: np.ndarray) -> TokenList:
        """The list of doc_ids: equal to `token_list` of the same documents, its tokens left in the pool."""
        spans = [self.spans[d] for d in doc_ids]
        lengths = np.asarray([n for _, n in spans], dtype=np.int64)
        rows = np.concatenate([np.arange(a, a + n) for a, n in spans]) if spans else np.zeros(0, np.int64)
        index, mask = _layout(lengths)
        return TokenList(qtok.float(), self.vecs, index, mask, np.asarray(gains, np.float32),
                         torch.from_numpy(rows.astype(np.int64)))


def list_maxsim(adapter: torch.Tensor, tl: TokenList) -> torch.Tensor:
    """(C,) mean over query tokens of each candidate's best cosine with the adapted query; differentiable."""
    q = adapt(adapter, tl.qtok)
    docs = tl.docs if tl.rows is None else tl.docs[tl.rows]
    if not len(docs):
        return torch.zeros(tl.mask.shape[0])
    sim = docs.float() @ q.T  # (N, nq)
    rows = sim[tl.index].masked_fill(~tl.mask[..., None], -2.0)  # (C, L, nq)
    return rows.max(1).values.mean(-1)


def evaluate(adapter: torch.Tensor, lists: Sequence[TokenList]) -> float:
    """Mean nDCG@10 of adapted MaxSim over the lists (ideal from each list's own gains)."""
    with torch.no_grad():
        return float(np.mean([ndcg_of_scores(list_maxsim(adapter, tl).numpy(), tl.gains)
                              for tl in lists])) if lists else 0.0


def fit_adapter(train: Sequence[TokenList], val: Sequence[TokenList], dim: int, *, epochs: int = 12,
                lr: float = 1e-3, reg: float = 1e-3, batch_queries: int = 16, temperature: float = 20.0,
                seed: int = 0, log=None) -> tuple[torch.Tensor, list[dict]]:
    """Listwise softmax over each list's adapted MaxSim (scaled by `temperature`), an L2 pull of A towards
    the identity (`reg`); returns the A of the best validation epoch (the identity, epoch 0, competes:
    an adapter that does not help held-out queries is not used) and the curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    eye = torch.eye(dim)
    a = torch.nn.Parameter(eye.clone())
    opt = torch.optim.Adam([a], lr=lr)
    usable = [tl for tl in train if tl.gains.any() and not tl.gains.all()]
    base = evaluate(eye, val)
    best, best_a, curve = base, eye.clone(), [{"epoch": 0, "loss": None, "val_ndcg10": base, "seconds": 0.0}]
    if log:
        log(f"query adapter: {len(usable)} training lists, {len(val)} validation; identity val nDCG@10 {base:.4f}")
    for epoch in range(1, epochs + 1 if usable else 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(usable))
        total = 0.0
        for s in range(0, len(order), batch_queries):
            loss = torch.zeros(())
            chunk = order[s:s + batch_queries]
            for i in chunk:
                tl = usable[i]
                z = list_maxsim(a, tl) * temperature
                pos = torch.from_numpy(tl.gains > 0)
                loss = loss + torch.logsumexp(z, 0) - torch.logsumexp(z[pos], 0)
            loss = loss / len(chunk) + reg * (a - eye).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        v = evaluate(a.detach(), val)
        curve.append({"epoch": epoch, "loss": total / len(usable), "val_ndcg10": v,
                      "seconds": round(time.perf_counter() - t0, 2)})
        if log:
            log(f"query adapter epoch {epoch}: loss {total / len(usable):.4f} val nDCG@10 {v:.4f} "
                f"(|A - I| {float((a.detach() - eye).norm()):.2f})")
        if v > best and math.isfinite(v):
            best, best_a = v, a.detach().clone()
    return best_a, curve
