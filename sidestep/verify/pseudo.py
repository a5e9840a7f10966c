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
from dataclasses import dataclass

import numpy as np
import torch

from sidestep.rec.doctables import max_chunk_scores
from sidestep.verify.candidates import Candidates, prepare, query_piece_ids, query_tokens
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


def recall_rows(q_pooled: np.ndarray, docs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], step: int = 256):
    """Pooled-cosine recall over the title-free documents, `step` queries at a time: yields (first query,
    (rows, n_docs) scores), a document scoring as its best chunk."""
    chunk_vecs = np.concatenate([p for _, _, p in docs]).astype(np.float32)
    sizes = np.asarray([len(p) for _, _, p in docs], dtype=np.int64)
    if (sizes < 1).any():
        raise ValueError("every document needs at least one chunk vector")
    chunk_doc = np.repeat(np.arange(len(docs)), sizes)
    for s in range(0, len(q_pooled), step):
        yield s, max_chunk_scores(q_pooled[s:s + step], chunk_vecs, chunk_doc, len(docs))


def pseudo_lists(q_pooled: np.ndarray, q_tokens: Sequence[np.ndarray], q_pieces: Sequence[Sequence[int]],
                 positives: Sequence[int], docs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 idf: np.ndarray, *, candidates: int, max_doc_tokens: int, train_top: int, max_query_tokens: int,
                 adapter: torch.Tensor | None = None, allowed: np.ndarray | None = None,
                 near: Sequence[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]] | None = None) -> list[Example]:
    """One training list per pseudo-query whose positive recall finds.

    docs: every document as (token vectors, word pieces, pooled chunk vectors), title-free;
    positives[j]: the document pseudo-query j was taken from. Lists are cut to what serving
    shows the model (`served_rows(train_top)`) when train_top is set, as for real queries. Query tokens
    go through `adapter` (sidestep.verify.adapter) where one is given, as the verify stage's do.
    allowed: a mask of the documents recall may return (default all). near[j]: structural near-misses of
    query j's positive (sidestep.verify.nearmiss), encoded as docs are; they join its list after the
    recall list, each paired with the positive (ranked below it by the pair loss, as for labelled lists)."""
    out: list[Example] = []
    for s, scores in recall_rows(q_pooled, docs):
        for j in range(s, s + len(scores)):
            row = scores[j - s].copy()
            n = len(docs)
            if allowed is not None:
                row[~allowed] = -np.inf
                n = int(allowed.sum())
            top = np.argsort(-row, kind="stable")[:min(candidates, n)]
            hit = np.flatnonzero(top == positives[j])
            if not len(hit):
                continue
            toks, pieces, rec = [docs[k][0] for k in top], [docs[k][1] for k in top], row[top].tolist()
            pairs = []
            for nt, npc, npool in (near[j] if near is not None else []):
                pairs.append((int(hit[0]), len(toks)))
                toks.append(nt)
                pieces.append(npc)
                rec.append(float((npool @ q_pooled[j]).max()))
            c = prepare(adapt(adapter, query_tokens(q_tokens[j], max_query_tokens)),
                        query_piece_ids(q_pieces[j], max_query_tokens), toks, pieces, idf,
                        np.asarray(rec, np.float32), max_doc_tokens, n_list=len(top))
            labels = torch.tensor([k == positives[j] for k in top] + [False] * len(pairs))
            ex: Example | None = Example(c, labels, torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))
            if train_top:
                ex = served_rows(ex, train_top, len(top))
            if ex is not None:
                out.append(ex)
    return out


@dataclass
class HeldOutList:
    """One held-out pseudo-query's whole recall list, then the near-misses of its own document (when given):
    what early stopping and the publishing gate read."""

    top: np.ndarray  # the recall list's document positions, recall order
    recall: np.ndarray  # pooled-cosine scores of every row (recall list, then near-misses)
    gains: np.ndarray  # 1 at the query's own document, 0 elsewhere (near-misses included; all 0 when recall missed it)
    cands: Candidates  # list statistics from the recall rows only, so those rows equal the list without near-misses
    n_near: int = 0

    def plain(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and gains of the recall rows alone (the list as search serves it, no near-miss in it)."""
        return scores[:len(self.top)], self.gains[:len(self.top)]


def held_out_lists(q_pooled: np.ndarray, q_tokens: Sequence[np.ndarray], q_pieces: Sequence[Sequence[int]],
                   positives: Sequence[int], docs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   idf: np.ndarray, *, candidates: int, max_doc_tokens: int, max_query_tokens: int,
                   adapter: torch.Tensor | None = None,
                   near: Sequence[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]] | None = None
                   ) -> list[HeldOutList]:
    """Every pseudo-query's recall list over all `docs`, whole, as search serves it, followed by near[j] (the
    near-misses of its document, gain 0) when given. A query whose document recall missed keeps its list
    (all gains 0): it counts 0 for every ranker, as an unranked query does."""
    out = []
    for s, scores in recall_rows(q_pooled, docs):
        for j in range(s, s + len(scores)):
            row = scores[j - s]
            top = np.argsort(-row, kind="stable")[:candidates]
            nm = list(near[j]) if near is not None else []
            toks = [docs[k][0] for k in top] + [t for t, _, _ in nm]
            pieces = [docs[k][1] for k in top] + [p for _, p, _ in nm]
            rec = np.asarray(row[top].tolist() + [float((p @ q_pooled[j]).max()) for _, _, p in nm], np.float32)
            c = prepare(adapt(adapter, query_tokens(q_tokens[j], max_query_tokens)),
                        query_piece_ids(q_pieces[j], max_query_tokens), toks, pieces, idf, rec, max_doc_tokens,
                        n_list=len(top))
            gains = np.concatenate([(top == positives[j]), np.zeros(len(nm), bool)]).astype(np.float32)
            out.append(HeldOutList(top, rec, gains, c, len(nm)))
    return out
