"""The verifier's fixed feature extraction: token x token cosine maps and their reduction.

For each query token, a fixed reduction of its row of the cosine map against a candidate's
tokens (max, mean of top-k, soft histogram kernels, position of the best match, whether
consecutive query tokens match consecutive document tokens), plus lexical features (the
token's idf, its count in the document, whether it occurs). Nothing here is learned, so
training precomputes these once; the model (sidestep.verify.model) reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sidestep.verify import kernels

KERNEL_MUS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1)
KERNEL_SIGMAS = (1e-3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)
TOPK = 3
# per query token: max, mean top-k, kernels, best-match position, adjacency to the next token's match,
# then lexical: the token's idf in the corpus, log(1 + its count in the document), whether it occurs
N_MAP_FEATURES = 2 + len(KERNEL_MUS) + 2
N_TOKEN_FEATURES = N_MAP_FEATURES + 3


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
