"""Title pseudo-queries: self-supervised training lists for the verifier, from the corpus alone.

SciFact gives the verifier 809 training claims; the corpus has 5,183 titled abstracts. A
title is a short statement of what its abstract found, much like a claim, so each title
becomes a query whose one positive is its own abstract. The abstracts are re-encoded
*without* their titles, and every candidate of a pseudo list is read that way: left in,
the title would sit verbatim inside its positive and the verifier would learn to spot
a copied span, which no real query offers. Candidates come from pooled-cosine recall
over the same title-free abstracts, so the hard negatives are what recall would confuse.

No label is read: the lists are the corpus's own structure (an inverse-cloze-style task),
and test queries never enter them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sidestep.rec.doctables import max_chunk_scores
from sidestep.verify.candidates import prepare, query_piece_ids, query_tokens
from sidestep.verify.features import adapt
from sidestep.verify.model import Example, served_rows


def title_docs(titles: Sequence[str | None], texts: Sequence[str | None], n: int, seed: int) -> list[int]:
    """Up to n documents (positions, ascending) with a text and a title of at least three words (shorter
    ones, such as "Introduction", say too little to be a query), drawn at random."""
    ok = [i for i, (t, x) in enumerate(zip(titles, texts, strict=True))
          if len((t or "").split()) >= 3 and (x or "").strip()]
    if len(ok) <= n:
        return ok
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ok, n, replace=False).tolist())


def pseudo_lists(q_pooled: np.ndarray, q_tokens: Sequence[np.ndarray], q_pieces: Sequence[Sequence[int]],
                 positives: Sequence[int], docs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 idf: np.ndarray, *, candidates: int, max_doc_tokens: int, train_top: int, max_query_tokens: int,
                 adapter: torch.Tensor | None = None) -> list[Example]:
    """One training list per pseudo-query whose positive recall finds.

    docs: every document as (token vectors, word pieces, pooled chunk vectors), title-free;
    positives[j]: the document pseudo-query j was taken from. Lists are cut to what serving
    shows the model (`served_rows(train_top)`) when train_top is set, as for real queries. Query tokens
    go through `adapter` (sidestep.verify.adapter) where one is given, as the verify stage's do."""
    chunk_vecs = np.concatenate([p for _, _, p in docs]).astype(np.float32)
    sizes = np.asarray([len(p) for _, _, p in docs], dtype=np.int64)
    if (sizes < 1).any():
        raise ValueError("every document needs at least one chunk vector")
    chunk_doc = np.repeat(np.arange(len(docs)), sizes)
    out: list[Example] = []
    step = 256
    for s in range(0, len(positives), step):
        scores = max_chunk_scores(q_pooled[s:s + step], chunk_vecs, chunk_doc, len(docs))
        for j in range(s, min(s + step, len(positives))):
            row = scores[j - s]
            top = np.argsort(-row, kind="stable")[:candidates]
            labels = torch.from_numpy(top == positives[j])
            if bool(labels.any()):
                c = prepare(adapt(adapter, query_tokens(q_tokens[j], max_query_tokens)),
                            query_piece_ids(q_pieces[j], max_query_tokens),
                            [docs[k][0] for k in top], [docs[k][1] for k in top], idf, row[top].astype(np.float32),
                            max_doc_tokens, n_list=len(top))
                ex: Example | None = Example(c, labels)
                if train_top:
                    ex = served_rows(ex, train_top, len(top))
                if ex is not None:
                    out.append(ex)
    return out
