"""One query's candidate list as the verifier reads it: features precomputed from the query's and
the candidates' tokens (`prepare`), list-level scores (recall cosine, MaxSim, idf-weighted MaxSim,
BM25, with their z-scores in the list), and the cheap `prescore` that picks which candidates the
model itself reads (`prescore_top`, `cascade`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sidestep.verify import kernels
from sidestep.verify.features import (
    _TABLE,
    KERNEL_SIGMAS,
    N_MAP_FEATURES,
    TOPK,
    FlatTokens,
    best_matches,
    flatten_tokens,
    lexical_features_flat,
    normalize,
    token_features,
)


@dataclass
class Candidates:
    """One query's candidate list, reduced to what the verifier reads (features precomputed)."""

    feats: torch.Tensor  # (C, nq, F)
    qtok: torch.Tensor  # (nq, d)
    glob: torch.Tensor  # (C, G)
    maxsim: torch.Tensor  # (C,)
    # set when only some of the list is verified (prepare's verify_top): the list positions of these rows,
    # and every position's prescore, which orders the rest
    rows: np.ndarray | None = None
    prior: torch.Tensor | None = None


def _z(x: np.ndarray, n: int) -> np.ndarray:
    """Standardize against the first n rows (the recall list), so rows added for training are
    placed on the same scale as at serving time."""
    ref = x[:n]
    return (x - ref.mean()) / (ref.std() + np.float32(1e-6)) if len(ref) > 1 else np.zeros_like(x)


def weighted_scores(best: torch.Tensor | np.ndarray, lex: torch.Tensor | np.ndarray,
                    lengths: torch.Tensor | np.ndarray, n_list: int | None = None, k1: float = 1.2, b: float = 0.75
                    ) -> tuple[np.ndarray, np.ndarray]:
    """From each query token's best cosine (C, nq) and its lexical features (C, nq, 3): idf-weighted
    MaxSim, and BM25 over word pieces (length normalized against the list's mean length).
    In numpy: two dozen small operations cost a third as much as in torch."""
    best, lex = np.asarray(best, np.float32), np.asarray(lex, np.float32)
    length = np.asarray(lengths, np.float32)
    idf = lex[..., 0] * np.float32(10)
    tf = np.expm1(lex[..., 1])
    w_maxsim = (idf * best).sum(-1) / np.maximum(idf.sum(-1), np.float32(1e-6))
    avg = max(float(length[:n_list].mean()) if len(length) else 1.0, 1.0)
    norm = np.float32(k1) * (np.float32(1 - b) + np.float32(b / avg) * length)
    bm25 = (idf * tf * np.float32(k1 + 1) / (tf + norm[:, None])).sum(-1)
    return w_maxsim, bm25


def global_features(recall: np.ndarray, best: torch.Tensor | np.ndarray, lex: torch.Tensor | np.ndarray,
                    lengths: torch.Tensor | np.ndarray, n_list: int | None = None) -> torch.Tensor:
    """(C, n_global) list-level scores from each query token's best cosine (C, nq) and lexical features."""
    r = np.asarray(recall, dtype=np.float32)
    n = len(r) if n_list is None else n_list
    best = np.asarray(best, np.float32)
    ms = best.sum(-1) / np.float32(max(best.shape[-1], 1))
    wms, lex_score = weighted_scores(best, lex, lengths, n)
    cols = [r, _z(r, n), ms, _z(ms, n), wms, _z(wms, n), lex_score / np.float32(10), _z(lex_score, n),
            np.log1p(np.asarray(lengths, np.float32)) / np.float32(6)]
    return torch.from_numpy(np.stack(cols, -1).astype(np.float32, copy=False))


# the global columns that `prescore` sums: the list z-scores of recall cosine, MaxSim, idf-weighted MaxSim, BM25
PRESCORE_COLUMNS = (1, 3, 5, 7)
VERIFY_TOP_CHOICES = (10, 15, 20, 30, 40, 50)


def prescore(glob: torch.Tensor) -> torch.Tensor:
    """A cheap score of every candidate, from list statistics alone (no map features, no model): the sum
    of four z-scores, an unweighted fusion of dense, late-interaction and lexical evidence. The verify
    stage runs the model on its top only (`VerifierConfig.verify_top`)."""
    return glob[:, list(PRESCORE_COLUMNS)].sum(-1)


def prescore_top(prior: torch.Tensor | np.ndarray, top: int) -> np.ndarray:
    """Positions (ascending) of the `top` highest pre-scores; ties keep list order. The verify stage,
    the training lists and the choice of verify_top all select with this."""
    return np.sort(np.argsort(-np.asarray(prior, dtype=np.float64), kind="stable")[:top])


def cascade(prior: torch.Tensor | np.ndarray, scores: np.ndarray, top: int) -> np.ndarray:
    """Scores of a whole list when only the `top` rows by `prior` are scored (`scores`, full length; other
    rows are ignored): those keep their scores, the rest follow in prior order, below every scored row."""
    p = np.asarray(prior, dtype=np.float64)
    if not top or top >= len(p):
        return np.asarray(scores, np.float32)
    keep = prescore_top(p, top)
    rest = np.ones(len(p), dtype=bool)
    rest[keep] = False
    out = np.asarray(scores, np.float64).copy()
    out[rest] = out[keep].min() - 1.0 - (p[keep].min() - p[rest])
    return out.astype(np.float32)


def query_tokens(tokens: np.ndarray, max_tokens: int) -> torch.Tensor:
    """A query's token vectors without [CLS]/[SEP], unit norm, capped."""
    inner = tokens[1:-1] if len(tokens) > 2 else tokens
    return normalize(inner[:max_tokens])


def query_piece_ids(ids: Sequence[int], max_tokens: int) -> list[int]:
    """The word-piece ids matching `query_tokens` (specials dropped, same cap)."""
    inner = list(ids[1:-1]) if len(ids) > 2 else list(ids)
    return inner[:max_tokens]


def prepare(qtok: torch.Tensor, qids: Sequence[int], docs: Sequence[np.ndarray] | FlatTokens,
            doc_ids: Sequence[np.ndarray], idf: np.ndarray, recall: np.ndarray, max_doc_tokens: int,
            n_list: int | None = None, verify_top: int = 0) -> Candidates:
    """Build the token maps of one query against its candidates and reduce them to features.

    `docs` is each candidate's token vectors, or already one flat matrix (FlatTokens, as the
    token stores hand them out). The first n_list rows (all by default) are the recall list;
    list statistics come from them.

    With verify_top (0 < verify_top < candidates), every candidate gets its list statistics from one
    pass over the cosines (best match per query token, word-piece counts), but only the top by
    `prescore` get map features: the returned Candidates holds those rows (`rows`, `prior` set), and
    `score` places the others below them. Their features equal the whole list's rows exactly."""
    flat = (docs if isinstance(docs, FlatTokens) else flatten_tokens(docs, max_doc_tokens)).capped(max_doc_tokens)
    lex = lexical_features_flat(qids, doc_ids, idf)
    if not verify_top or verify_top >= len(flat.lengths):
        map_feats, _, lengths = token_features(qtok, flat)
        glob = global_features(recall, map_feats[..., 0], lex, lengths, n_list)
        return Candidates(torch.cat([map_feats, lex], -1), qtok, glob, map_feats[..., 0].sum(-1))
    if n_list is not None and n_list != len(flat.lengths):
        raise ValueError("verify_top scores a recall list as served; training lists (n_list) take served_rows")
    lengths = np.asarray(flat.lengths, dtype=np.int64)
    st, best = best_matches(qtok, flat)
    best_t = torch.from_numpy(best)
    glob = global_features(recall, best_t, lex, torch.from_numpy(lengths), n_list)
    prior = prescore(glob)
    rows = prescore_top(prior, verify_top)
    kept = lengths[rows]
    starts = np.cumsum(lengths) - lengths
    # the kept documents' token rows, in order: each run starts at its document's first row
    sub = np.repeat(starts[rows] - (np.cumsum(kept) - kept), kept) + np.arange(int(kept.sum()))
    feats = np.empty((len(rows), qtok.shape[0], N_MAP_FEATURES), np.float32)
    # top-k width from the whole list's longest document, as token_features takes it, so the rows are equal
    kernels.map_stats(st[sub], kept, min(TOPK, max(int(lengths.max()), 1)), _TABLE, KERNEL_SIGMAS[0], feats)
    r = torch.from_numpy(rows)
    return Candidates(torch.cat([torch.from_numpy(feats), lex[r]], -1), qtok, glob[r], best_t[r].sum(-1),
                      rows=rows, prior=prior)


def idf_table(doc_piece_ids: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """BM25-style idf of every word piece over a corpus (one entry per document)."""
    df = np.zeros(vocab_size, np.int64)
    for ids in doc_piece_ids:
        df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    n = max(len(doc_piece_ids), 1)
    return np.log((n - df + 0.5) / (df + 0.5) + 1.0).astype(np.float32)
