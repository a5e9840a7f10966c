"""One-pass reductions of a flat cosine matrix, compiled with numba.

The verify stage reduces each (query token, candidate) row of the cosine map to a few numbers:
max, mean of the top 3, seven soft-histogram kernel sums, the position of the best match and
whether consecutive query tokens match consecutive document tokens. As
tensor operations that is some twenty passes over a (N tokens x nq) matrix plus a padded copy
and a scatter-add; on two cores it was most of the verify stage's time. Here each cosine is
read once. The broad kernels (sigma 0.1) are interpolated linearly from a table of 8192 steps
over [-1, 1]: the error of the interpolation is below h^2/8 * max|k''| = 7.5e-7 of a kernel's
peak, well under what float32 sums of a few hundred tokens carry anyway. The sharp kernel
(sigma 1e-3, exact matches) is evaluated exactly where a cosine exceeds 0.99 and is zero
(below 1e-21) elsewhere.

The cosines themselves come from `pq_cosines` where the token store holds PQ codes (lookup
tables, no decoding); the lexical features from `lexical`, over word-piece ids. The reductions take
the (N, nq) cosines with documents as consecutive row runs (`lengths`), as `FlatTokens.cosines`
returns them. The kernels check no bounds (except `lexical`, which skips document pieces outside the
vocabulary): callers pass what the docstrings state.
Compiled once per machine (cache=True), on first use.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

TABLE_STEPS = 8192
SHARP_FROM = 0.99  # below this cosine the exact-match kernel (mu 1, sigma 1e-3) is under exp(-50)


def kernel_table(mus: tuple[float, ...], sigmas: tuple[float, ...]) -> np.ndarray:
    """(TABLE_STEPS + 2, K) kernel values on a regular grid over [-1, 1]; one spare row so that
    interpolation at exactly 1.0 reads inside the table."""
    x = np.linspace(-1.0, 1.0, TABLE_STEPS + 1)
    x = np.append(x, 1.0 + 2.0 / TABLE_STEPS)
    mu, sg = np.asarray(mus)[None, :], np.asarray(sigmas)[None, :]
    return np.exp(-((x[:, None] - mu) ** 2) / (2 * sg ** 2))


@njit(cache=True, nogil=True, parallel=True)
def map_stats(st, lengths, top_k, table, sharp_sigma, out):  # pragma: no cover - compiled
    """Fill out (C, nq, 2 + 1 + K + 2) with max, mean of the top_k (padding counts as -2, as in the
    padded reference), log1p of the sharp kernel's and the K table kernels' sums, the first position
    of the maximum relative to the document's length, and whether the next query token's best match
    sits right after this one's (exp(-|gap| / 2), 0 for the last token). Documents run in parallel."""
    n_docs = lengths.shape[0]
    nq = st.shape[1]
    n_k = table.shape[1]
    inv_h = TABLE_STEPS / 2.0
    starts = np.zeros(n_docs, np.int64)
    for c in range(1, n_docs):
        starts[c] = starts[c - 1] + lengths[c - 1]
    for c in prange(n_docs):
        top = np.full((nq, 3), -2.0)
        sums = np.zeros((nq, n_k + 1))
        best_pos = np.zeros(nq, np.int64)
        row = starts[c]
        for j in range(lengths[c]):
            for i in range(nq):
                v = st[row + j, i]
                if v > top[i, 0]:
                    top[i, 2] = top[i, 1]
                    top[i, 1] = top[i, 0]
                    top[i, 0] = v
                    best_pos[i] = j
                elif v > top[i, 1]:
                    top[i, 2] = top[i, 1]
                    top[i, 1] = v
                elif v > top[i, 2]:
                    top[i, 2] = v
                if v > SHARP_FROM:
                    d = v - 1.0
                    sums[i, 0] += math.exp(-d * d / (2.0 * sharp_sigma * sharp_sigma))
                u = (min(max(v, -1.0), 1.0) + 1.0) * inv_h
                b = int(u)
                f = u - b
                for k in range(n_k):
                    lo = table[b, k]
                    sums[i, k + 1] += lo + f * (table[b + 1, k] - lo)
        for i in range(nq):
            out[c, i, 0] = top[i, 0]
            m = 0.0
            for t in range(top_k):
                m += top[i, t]
            out[c, i, 1] = m / top_k
            for k in range(n_k + 1):
                out[c, i, 2 + k] = math.log1p(sums[i, k])
            out[c, i, 3 + n_k] = best_pos[i] / max(lengths[c], 1)
            out[c, i, 4 + n_k] = 0.0
            if i + 1 < nq:
                out[c, i, 4 + n_k] = math.exp(-abs(best_pos[i + 1] - best_pos[i] - 1) / 2.0)


PQ_BLOCK = 64  # tokens per block in pq_cosines: 64 x (nq + 1) partial sums stay in L1 beside one sub-table


@njit(cache=True, nogil=True, parallel=True)
def pq_cosines(codes, table, nq, out):  # pragma: no cover - compiled
    """out (N, nq): cosines of N product-quantized tokens (codes (N, M) uint8) from lookup tables
    (table (M * ksub, W), W >= nq + 1: per sub-space and codeword its dot product with each query token,
    column nq its squared norm; W padded to a multiple of 8 so the inner loop is whole SIMD lanes).

    Preconditions (not checked here): codes.shape[1] == M, every code < ksub = table rows / M.

    Sub-space by sub-space within blocks of PQ_BLOCK tokens: one sub-table (256 rows) is read while the
    block's sums stay in cache, instead of 32 sub-tables per token (an embedding bag's order). Blocks
    run in parallel."""
    n, m = codes.shape
    ksub, w = table.shape[0] // m, table.shape[1]
    for blk in prange((n + PQ_BLOCK - 1) // PQ_BLOCK):
        lo = blk * PQ_BLOCK
        hi = min(n, lo + PQ_BLOCK)
        acc = np.zeros((PQ_BLOCK, w), np.float32)
        for s in range(m):
            base = s * ksub
            for t in range(lo, hi):
                r = base + codes[t, s]
                for i in range(w):
                    acc[t - lo, i] += table[r, i]
        for t in range(lo, hi):
            inv = 1.0 / max(math.sqrt(acc[t - lo, nq]), 1e-12)
            for i in range(nq):
                out[t, i] = acc[t - lo, i] * inv


@njit(cache=True, nogil=True)
def segment_max(st, lengths, out):  # pragma: no cover - compiled
    """out (C, nq): each document's best cosine per query token; -2 for an empty document."""
    row = 0
    for c in range(lengths.shape[0]):
        for i in range(st.shape[1]):
            out[c, i] = -2.0
        for j in range(lengths[c]):
            for i in range(st.shape[1]):
                v = st[row + j, i]
                if v > out[c, i]:
                    out[c, i] = v
        row += lengths[c]


@njit(cache=True, nogil=True)
def lexical(query, idf, pieces, lengths, out):  # pragma: no cover - compiled
    """out (C, nq, 3): per query word piece its idf / 10, log1p of how often it occurs in each
    document's pieces (flat runs of `lengths`) and whether it occurs at all.

    Each piece is looked up once in a vocabulary-sized slot table (which query position it counts
    for), instead of being compared with every query piece. Query ids must lie in [0, len(idf));
    document pieces outside it are skipped."""
    nq, vocab = query.shape[0], idf.shape[0]
    slot = np.full(vocab, -1, np.int32)
    for i in range(nq):
        if slot[query[i]] < 0:
            slot[query[i]] = i
    counts = np.zeros(nq)
    row = 0
    for c in range(lengths.shape[0]):
        counts[:] = 0.0
        for j in range(lengths[c]):
            p = pieces[row + j]
            if 0 <= p < vocab:
                k = slot[p]
                if k >= 0:
                    counts[k] += 1.0
        for i in range(nq):
            n = counts[slot[query[i]]]
            out[c, i, 0] = idf[query[i]] / 10.0
            out[c, i, 1] = math.log1p(n)
            out[c, i, 2] = 1.0 if n > 0 else 0.0
        row += lengths[c]
