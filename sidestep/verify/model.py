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

The map reduction is fixed (not learned), so training precomputes features once;
the token embeddings are the frozen encoder's, never fine-tuned. The maps are built
from the query's tokens through a learned linear query adapter (sidestep.verify.adapter),
trained before the model; the document side is the stored tokens as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from sidestep.verify import kernels

KERNEL_MUS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1)
KERNEL_SIGMAS = (1e-3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)
TOPK = 3
# per query token: max, mean top-k, kernels, best-match position, adjacency to the next token's match,
# then lexical: the token's idf in the corpus, log(1 + its count in the document), whether it occurs
N_MAP_FEATURES = 2 + len(KERNEL_MUS) + 2
N_TOKEN_FEATURES = N_MAP_FEATURES + 3


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


def normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    return torch.nn.functional.normalize(t, dim=-1)


def adapt(adapter: torch.Tensor | None, qtok: torch.Tensor) -> torch.Tensor:
    """Unit query tokens (nq, d) through a query adapter (d, d) (sidestep.verify.adapter), unit again; None is the
    identity."""
    return qtok if adapter is None else normalize(qtok @ adapter.T)


def token_maps(q: torch.Tensor, docs: Sequence[np.ndarray], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine maps of unit query tokens (nq, d) against each document's tokens: (C, nq, L) + (C, L) mask.

    The document tokens are converted and multiplied once as one flat matrix, and only the small maps
    are padded: padding 100 x 512 x 384 token tensors was most of the verify stage's time."""
    lengths = [min(len(d), max_tokens) for d in docs]
    width = max(max(lengths, default=1), 1)
    sim = torch.zeros((len(docs), q.shape[0], width), dtype=torch.float32)
    mask = torch.zeros((len(docs), width), dtype=torch.bool)
    if not sum(lengths):
        return sim, mask
    flat = torch.from_numpy(np.concatenate([d[:n] for d, n in zip(docs, lengths, strict=True) if n])).float()
    s = (q @ flat.T) / flat.norm(dim=-1).clamp(min=1e-12)  # (nq, N); dividing the map is cheaper than
    # normalizing every token vector
    doc = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor(lengths))
    pos = torch.cat([torch.arange(n) for n in lengths])
    sim.permute(0, 2, 1)[doc, pos] = s.T
    mask[doc, pos] = True
    return sim, mask


def maxsim(sim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ColBERT-style late interaction: sum over query tokens of the best document match."""
    return sim.masked_fill(~mask[:, None, :], -2.0).amax(-1).sum(-1)


def lexical_features(query_ids: Sequence[int], doc_ids: Sequence[np.ndarray], idf: np.ndarray) -> torch.Tensor:
    """(C, nq, 3): idf of each query word piece, log(1 + its count in each document), present or not."""
    q = np.asarray(query_ids, dtype=np.int64)
    out = np.zeros((len(doc_ids), len(q), 3), np.float32)
    out[:, :, 0] = idf[q] / 10.0
    for c, ids in enumerate(doc_ids):
        if len(ids):
            counts = (np.asarray(ids)[:, None] == q[None, :]).sum(0)
            out[c, :, 1] = np.log1p(counts)
            out[c, :, 2] = counts > 0
    return torch.from_numpy(out)


@dataclass
class FlatTokens:
    """Several documents' token vectors as one (N, d) matrix and each document's length: what the
    verify stage multiplies, without padding 100 x 512 x 384 tensors or copying per document.

    A product-quantized store hands out its codes instead (`codes` (N, M) uint8 with the codec's
    `centroids` (M, 256, dsub)): `cosines` then scores them against lookup tables, so the 400 x 384
    floats per document are never decoded. Where M does not divide d, the codec's vectors are d
    padded with zeros to M * dsub, and `dim` is d."""

    vecs: np.ndarray | None  # (N, d), float16 or float32; None when codes are given
    lengths: np.ndarray  # (C,) int64, sum = N
    codes: np.ndarray | None = None
    centroids: np.ndarray | None = None
    dim: int | None = None  # the token dimension, where the codes are of zero-padded vectors

    def capped(self, max_tokens: int) -> FlatTokens:
        """The first max_tokens tokens of each document (a copy only when some document is longer)."""
        if not len(self.lengths) or int(self.lengths.max()) <= max_tokens:
            return self
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        keep = np.minimum(self.lengths, max_tokens)
        rows = np.concatenate([np.arange(a, a + k) for a, k in zip(starts, keep, strict=True)])
        if self.codes is not None:
            return FlatTokens(None, keep.astype(np.int64), self.codes[rows], self.centroids, self.dim)
        return FlatTokens(self.vecs[rows], keep.astype(np.int64))

    def vectors(self) -> np.ndarray:
        """The token vectors, decoded from the codes where the store is quantized."""
        if self.codes is None:
            return self.vecs
        m, _, dsub = self.centroids.shape
        out = self.centroids[np.arange(m), self.codes.astype(np.int64)].reshape(len(self.codes), m * dsub)
        return out[:, :self.dim] if self.dim else out

    def cosines(self, q: torch.Tensor) -> torch.Tensor:
        """(N, nq) cosines of unit query tokens (nq, d) against every token; rows are contiguous."""
        nq = q.shape[0]
        if not int(np.sum(self.lengths)):
            return torch.zeros((0, nq))
        if self.codes is None:
            vecs = torch.from_numpy(np.ascontiguousarray(self.vecs)).float()  # torch casts float16 faster
            return (vecs @ q.T) / vecs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        m, ksub, dsub = self.centroids.shape
        cent = torch.from_numpy(self.centroids)
        # per sub-space and codeword: its dot product with every query token, and its squared norm;
        # each token sums the M entries its codes pick (asymmetric distance computation), compiled
        width = -(-(nq + 1) // 8) * 8
        table = torch.zeros((m, ksub, width))
        if m * dsub > q.shape[1]:  # the codes are of zero-padded vectors: pad the query alike
            q = torch.nn.functional.pad(q, (0, m * dsub - q.shape[1]))
        table[..., :nq] = torch.einsum("qmd,mkd->mkq", q.reshape(nq, m, dsub).float(), cent)
        table[..., nq] = cent.square().sum(-1)
        out = np.empty((len(self.codes), nq), np.float32)
        kernels.pq_cosines(np.ascontiguousarray(self.codes), table.reshape(m * ksub, width).numpy(), nq, out)
        return torch.from_numpy(out)


def flatten_tokens(docs: Sequence[np.ndarray], max_tokens: int) -> FlatTokens:
    lengths = np.asarray([min(len(d), max_tokens) for d in docs], dtype=np.int64)
    kept = [d[:n] for d, n in zip(docs, lengths, strict=True) if n]
    dim = docs[0].shape[1] if len(docs) and np.ndim(docs[0]) == 2 else 0
    vecs = np.concatenate(kept) if kept else np.zeros((0, dim), np.float32)
    return FlatTokens(vecs, lengths)


_TABLE = kernels.kernel_table(KERNEL_MUS[1:], KERNEL_SIGMAS[1:])


def best_matches(q: torch.Tensor, flat: FlatTokens) -> tuple[np.ndarray, np.ndarray]:
    """The (N, nq) cosines and each document's best cosine per query token (C, nq), in one pass."""
    st = flat.cosines(q).numpy()
    best = np.empty((len(flat.lengths), q.shape[0]), np.float32)
    kernels.segment_max(st, np.asarray(flat.lengths, dtype=np.int64), best)
    return st, best


def flat_maxsim(q: torch.Tensor, flat: FlatTokens) -> torch.Tensor:
    """maxsim(token_maps(...)) from flat tokens: the MaxSim baseline on the same fast path as the verifier
    (the same cosines, then one pass for each document's best match per query token)."""
    return torch.from_numpy(best_matches(q, flat)[1]).sum(-1)


def token_features(q: torch.Tensor, flat: FlatTokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """map_features + maxsim of unit query tokens (nq, d) against flat document tokens, from one pass
    over the (N, nq) cosines (sidestep.verify.kernels); no padded map is built. Equal to
    map_features(token_maps(...)) up to float rounding and the kernel table's interpolation (a test
    holds them together).

    Returns (C, nq, N_MAP_FEATURES) features, (C,) MaxSim and (C,) document lengths."""
    lengths = np.asarray(flat.lengths, dtype=np.int64)
    n_docs, nq = len(lengths), q.shape[0]
    st = flat.cosines(q).numpy()
    width = max(int(lengths.max()) if n_docs else 1, 1)
    feats = np.empty((n_docs, nq, N_MAP_FEATURES), np.float32)
    kernels.map_stats(st, lengths, min(TOPK, width), _TABLE, KERNEL_SIGMAS[0], feats)
    return torch.from_numpy(feats), torch.from_numpy(feats[..., 0].sum(-1)), torch.from_numpy(lengths)


def warm_up() -> None:
    """Compile (or load from numba's cache) the map reductions now, so that a serving replica's first
    query does not pay for it."""
    rng = np.random.default_rng(0)
    q = normalize(rng.normal(size=(2, 8)).astype(np.float32))
    flat = flatten_tokens([rng.normal(size=(3, 8)).astype(np.float32)], 4)
    coded = FlatTokens(None, np.array([3], np.int64), rng.integers(0, 4, (3, 2)).astype(np.uint8),
                       rng.normal(size=(2, 4, 4)).astype(np.float32))
    for f in (flat, coded):
        token_features(q, f)
        flat_maxsim(q, f)
    for dtype in (np.int32, np.int64):  # stored pieces are int32; near-misses and tests pass int64
        lexical_features_flat([1, 2], [np.array([1, 3], dtype)], np.ones(4, np.float32))


def lexical_features_flat(query_ids: Sequence[int], doc_ids: Sequence[np.ndarray], idf: np.ndarray
                          ) -> torch.Tensor:
    """lexical_features without a per-document loop: one pass over the concatenated word pieces."""
    q = np.asarray(query_ids, dtype=np.int64)
    if len(q) and (q.min() < 0 or q.max() >= len(idf)):  # the compiled pass does not check bounds
        raise ValueError(f"query word-piece ids must lie in [0, {len(idf)}) (the idf table's vocabulary)")
    lens = np.asarray([len(ids) for ids in doc_ids], dtype=np.int64)
    # pieces keep their stored integer type (int32): converting 100 arrays costs more than the count
    flat = np.concatenate([np.asarray(ids) for ids in doc_ids]) if len(doc_ids) else lens
    if not np.issubdtype(flat.dtype, np.integer):
        flat = flat.astype(np.int64)
    out = np.empty((len(doc_ids), len(q), 3), np.float32)
    kernels.lexical(q, idf, flat, lens, out)
    return torch.from_numpy(out)


def map_features(sim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(C, nq, L) map + (C, L) mask -> (C, nq, N_MAP_FEATURES) per-query-token features.

    The reference form, over the padded map; the verify stage runs token_features."""
    masked = sim.masked_fill(~mask[:, None, :], -2.0)
    k = min(TOPK, sim.shape[-1])
    top = masked.topk(k, dim=-1).values
    best, pos = top[..., 0], masked.argmax(-1)
    valid = mask[:, None, :].float()
    kernels = []
    for mu, sigma in zip(KERNEL_MUS, KERNEL_SIGMAS, strict=True):
        k_ = torch.exp(-((sim - mu) ** 2) / (2 * sigma ** 2)) * valid
        kernels.append(torch.log1p(k_.sum(-1)))
    lengths = mask.sum(-1, keepdim=True).clamp(min=1).float()
    rel_pos = pos.float() / lengths
    step = torch.zeros_like(rel_pos)
    if sim.shape[1] > 1:  # does the next query token's best match sit right after this one's?
        gap = (pos[:, 1:] - pos[:, :-1] - 1).abs().float()
        step[:, :-1] = torch.exp(-gap / 2)
    return torch.stack([best, top.mean(-1), *kernels, rel_pos, step], dim=-1)


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
        h = self.encoder(x, src_key_padding_mask=pad)[:, 0] if self.training else self._cls_only(x, pad)
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
        """The encoder in eval mode, with the last layer computed for the [CLS] slot only: the head
        reads nothing else. Equal to encoder(x)[:, 0] (a test holds them).

        [CLS]'s attention needs every position's key and value, but not their projections: its score
        against position j is q . (W_k y_j + b_k) = (W_k^T q) . y_j + q . b_k, and the last term is the
        same for every j, so softmax drops it; its output is sum_j a_j (W_v y_j + b_v) =
        W_v (sum_j a_j y_j) + b_v, since the weights sum to 1. So the query is folded into W_k once
        per candidate and the value projection applied once to the weighted mean, instead of projecting
        every position's key and value (two thirds of the last layer's work)."""
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
        mean = torch.einsum("nhl,nld->nhd", logits.softmax(-1), y)  # each head's weighted mean of y
        ctx = torch.einsum("nhd,hed->nhe", mean, w_v.view(heads, dh, d)).reshape(n, d) + b_v
        h = x[:, 0] + att.out_proj(ctx)
        return h + last.linear2(last.activation(last.linear1(last.norm2(h))))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def choose_verify_top(model: Verifier, val: Sequence[tuple[Candidates, np.ndarray]], tolerance: float = 1e-3,
                      choices: Sequence[int] = VERIFY_TOP_CHOICES) -> tuple[int, dict[int, float]]:
    """The smallest `verify_top` whose validation nDCG@10 is within `tolerance` of scoring the whole list
    (0 = the whole list, when none is, or without validation lists); returns it and every choice's nDCG@10."""
    if not val:
        return 0, {}
    full = score(model, [c for c, _ in val])
    ndcg = {0: float(np.mean([ndcg_at(s, g) for s, (_, g) in zip(full, val, strict=True)]))}
    for k in choices:
        ndcg[k] = float(np.mean([ndcg_at(cascade(prescore(c.glob), s, k), g)
                                 for s, (c, g) in zip(full, val, strict=True)]))
    return next((k for k in choices if ndcg[k] >= ndcg[0] - tolerance), 0), ndcg


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


def score(model: Verifier, items: Sequence[Candidates]) -> list[np.ndarray]:
    """Logits per query. Queries of the same length share one forward pass; lengths are not mixed,
    so no batch carries padding (padding changes no score, but the masked softmax costs more). Each
    query's term is computed once and broadcast over its candidates (`Verifier.query_term`)."""
    if model.training:  # eval() walks every submodule: 0.6 ms of each served query when called every time
        model.eval()
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(items)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(items):
        groups.setdefault(c.feats.shape[1], []).append(i)
    with torch.inference_mode():
        for idx in groups.values():
            xs = [model.inputs(items[i].feats, model.query_term(items[i].qtok)[None], items[i].glob) for i in idx]
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            glob = items[idx[0]].glob if len(idx) == 1 else torch.cat([items[i].glob for i in idx])
            logits = model.readout(model._cls_only(x, None), glob)
            for i, part in zip(idx, torch.split(logits, [items[i].feats.shape[0] for i in idx]), strict=True):
                out[i] = _whole_list(items[i], part.numpy())
    return out


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


def ndcg_at(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """nDCG@k of one ranked list against graded gains (ideal from the same list's gains plus missing ones)."""
    order = np.argsort(-scores, kind="stable")[:k]
    dcg = float(sum(gains[i] / math.log2(r + 2) for r, i in enumerate(order)))
    ideal = np.sort(gains)[::-1][:k]
    idcg = float(sum(g / math.log2(r + 2) for r, g in enumerate(ideal)))
    return dcg / idcg if idcg > 0 else 0.0


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


def fit(examples: Sequence[Example], val: Sequence[tuple[Candidates, np.ndarray]], cfg: VerifierConfig, dim: int,
        *, epochs: int = 30, batch_queries: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4,
        seed: int = 0, patience: int = 6, near_miss_weight: float = 0.3, list_rows: int = 32,
        log=None) -> tuple[Verifier, list[dict]]:
    """Listwise training; the epoch with the best validation nDCG@10 (val: candidates + gains) is kept.

    Each epoch reads every positive, its near-misses and `list_rows` rows of the list drawn at random
    (list statistics were computed on the whole list beforehand, so a sample sees serving's scale)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Verifier(cfg, dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(examples) // batch_queries))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, curve, bad = -1.0, None, [], 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(examples))
        total, nb = 0.0, 0
        for s in range(0, len(order), batch_queries):
            batch = [_sample_rows(examples[i], list_rows, rng) for i in order[s:s + batch_queries]]
            feats, qtok, qmask, glob, sizes = collate([e.cands for e in batch], model)
            logits = model(feats, qtok, qmask, glob, projected=True)
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
        scores = score(model, [c for c, _ in val])
        v = float(np.mean([ndcg_at(s, g) for s, (_, g) in zip(scores, val, strict=True)])) if val else 0.0
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
