"""The paired negation check: does a ranker tell a statement from its negation?

Pairs are built with the near-miss generator (sidestep.verify.nearmiss) from any text: a sentence
of a passage is changed by a negation or an inverted condition; the two queries are the same crop
of the sentence before and after the change, and the two documents the passage before and after it
(query 1's relevant document is the original passage, query 2's the changed one). Each query ranks
the pair's two documents; a pair counts when both queries rank their own document first. A tie
counts as a coin toss (each query then gets 1/2), so a ranker that cannot tell the two apart scores
the random level, 0.25, whatever its tie-breaking.

Rankers are callables over (queries, each query's candidate texts) -> scores, so any model can be
plugged in: `pooled_ranker`, `maxsim_ranker`, `bm25_ranker`, `random_ranker` and `verifier_ranker`
(any published verifier) are here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sidestep.docmaps.sentences import split_sentences
from sidestep.verify.nearmiss import content_words, near_misses

PAIR_KINDS = ("negation", "condition")
RANDOM_LEVEL = 0.25
Ranker = Callable[[Sequence[str], Sequence[Sequence[str]]], list[np.ndarray]]


@dataclass(frozen=True)
class NegationPair:
    pair_id: str
    kind: str  # "negation" or "condition"
    queries: tuple[str, str]
    docs: tuple[str, str]  # docs[i] is queries[i]'s relevant document
    changed: str


def _edit(a: str, b: str) -> tuple[int, int, int]:
    """(start, end in a, end in b) of the one region where a and b differ."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return p, len(a) - s, len(b) - s


def _crop_around(sent: str, new: str, rng: random.Random, words: tuple[int, int]) -> tuple[str, str] | None:
    """The same word window of both sentences, holding the changed region."""
    p, end_a, end_b = _edit(sent, new)
    spans = [(i, j) for i, j in ((m.start(), m.end()) for m in re.finditer(r"\S+", sent))]
    if not spans:
        return None
    touch = [k for k, (i, j) in enumerate(spans) if j >= p and i <= max(end_a, p)]
    if not touch:
        return None
    lo_k, hi_k = touch[0], touch[-1]
    n = rng.randint(*words)
    first = max(0, min(lo_k, hi_k + 1 - n + rng.randint(0, max(0, n - (hi_k - lo_k + 1)))))
    last = min(len(spans) - 1, max(hi_k, first + n - 1))
    ca, cb = spans[first][0], spans[last][1]
    if ca > p or cb < end_a:
        return None
    q1, q2 = sent[ca:cb], new[ca:cb + (end_b - end_a)]
    return (q1, q2) if q1 != q2 and len(q1.split()) >= 4 else None


def build_pairs(passages: Sequence[tuple[str, str]], *, n_pairs: int | None = None, seed: int = 0,
                kinds: Sequence[str] = PAIR_KINDS, crop_words: tuple[int, int] = (6, 12)) -> list[NegationPair]:
    """At most one pair per passage (its first sentence, in a seeded order, that a rule changes),
    until n_pairs. `passages` are (id, text)."""
    bad = set(kinds) - set(PAIR_KINDS)
    if bad:
        raise ValueError(f"unknown pair kinds {sorted(bad)}; choose from {PAIR_KINDS}")
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    out: list[NegationPair] = []
    for i in order:
        if n_pairs is not None and len(out) >= n_pairs:
            break
        pid, text = passages[i]
        sents = [(a, b) for a, b in split_sentences(text) if len(text[a:b].split()) >= 6]
        rng.shuffle(sents)
        for a, b in sents:
            sent = text[a:b]
            nm = near_misses(sent, sent, n=1, seed=seed, kinds=tuple(kinds))
            if not nm or content_words(nm[0].text) == set() or nm[0].text == sent:
                continue
            crop = _crop_around(sent, nm[0].text, rng, crop_words)
            if crop is None:
                continue
            out.append(NegationPair(f"{pid}:{a}", nm[0].kind, crop, (text, text[:a] + nm[0].text + text[b:]),
                                    nm[0].changed))
            break
    return out


@dataclass
class PairScore:
    ranker: str
    pairs: int
    pairwise_accuracy: float
    query_accuracy: float  # share of queries ranking their own document first
    ci95_low: float
    ci95_high: float
    by_kind: dict[str, float]
    random_level: float = RANDOM_LEVEL

    def as_dict(self) -> dict:
        return asdict(self)


def first_prob(scores: np.ndarray, own: int) -> float:
    """Chance that `own` ranks first under random tie-breaking."""
    top = scores.max()
    if scores[own] < top:
        return 0.0
    return 1.0 / int((scores == top).sum())


def pair_credits(pairs: Sequence[NegationPair], scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the chance both queries rank their own document first; per query: that it does.
    `scores` holds two rows per pair (query 1, query 2), each over (doc 1, doc 2)."""
    if len(scores) != 2 * len(pairs):
        raise ValueError(f"{len(scores)} score rows for {len(pairs)} pairs (two per pair expected)")
    per_q = np.asarray([first_prob(np.asarray(s, np.float64), j % 2) for j, s in enumerate(scores)])
    return per_q[0::2] * per_q[1::2], per_q


def score_pairs(name: str, pairs: Sequence[NegationPair], ranker: Ranker, *, n_boot: int = 2000,
                seed: int = 0) -> tuple[PairScore, np.ndarray]:
    """Pairwise accuracy of one ranker with a bootstrap 95% interval over pairs; also per-pair credits."""
    queries = [q for p in pairs for q in p.queries]
    cands = [list(p.docs) for p in pairs for _ in (0, 1)]
    credit, per_q = pair_credits(pairs, ranker(queries, cands))
    if len(credit):
        boot = np.random.default_rng(seed).choice(credit, size=(n_boot, len(credit))).mean(1)
        lo, hi = float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
    else:
        lo = hi = float("nan")
    kinds = sorted({p.kind for p in pairs})
    by_kind = {k: float(credit[[p.kind == k for p in pairs]].mean()) for k in kinds}
    return PairScore(name, len(pairs), float(credit.mean()) if len(credit) else float("nan"),
                     float(per_q.mean()) if len(per_q) else float("nan"), lo, hi, by_kind), credit


# ----------------------------------------------------------------------------- rankers
def random_ranker(seed: int = 0) -> Ranker:
    rng = np.random.default_rng(seed)
    return lambda qs, cands: [rng.random(len(c)) for c in cands]


_POOL_CACHE: dict[tuple[int, tuple[str, ...]], dict] = {}


def _encoded_pool(encoder, cands: Sequence[Sequence[str]]):
    """Each distinct candidate text encoded once (and once for all rankers of a run over the same
    texts): text -> (pooled chunk vectors, token vectors, word pieces)."""
    texts = sorted({t for c in cands for t in c})
    key = (id(encoder), tuple(texts))
    if key not in _POOL_CACHE:
        _POOL_CACHE.clear()
        _POOL_CACHE[key] = _encode_pool(encoder, texts)
    return _POOL_CACHE[key]


def _encode_pool(encoder, texts: list[str]) -> dict:
    enc = encoder.encode_documents([(str(i), "", t) for i, t in enumerate(texts)])
    ids = encoder.tokenize_documents(texts)["input_ids"]
    out = {}
    for t, e, pieces in zip(texts, enc, ids, strict=True):
        toks = np.concatenate([x[1:-1] for x in e.tokens])
        p = np.asarray([x for c in e.chunks for x in pieces[c.tok_start:c.tok_end]], np.int32)
        out[t] = (np.asarray(e.pooled, np.float32), toks, p)
    return out


def pooled_ranker(encoder) -> Ranker:
    """Dense recall's score: the query's cosine with the document's best chunk."""
    def rank(qs, cands):
        pool = _encoded_pool(encoder, cands)
        qv = encoder.encode_queries(list(qs))
        return [np.asarray([float((pool[t][0] @ q).max()) for t in c]) for q, c in zip(qv, cands, strict=True)]
    return rank


def maxsim_ranker(encoder, max_doc_tokens: int = 512) -> Ranker:
    """ColBERT-style MaxSim over the same token vectors the verifier reads (no training)."""
    from sidestep.verify.candidates import query_tokens
    from sidestep.verify.features import flat_maxsim, flatten_tokens

    def rank(qs, cands):
        pool = _encoded_pool(encoder, cands)
        _, qtoks = encoder.encode_queries_with_tokens(list(qs))
        with torch.inference_mode():
            return [flat_maxsim(query_tokens(qt, 10_000), flatten_tokens([pool[t][1] for t in c], max_doc_tokens))
                    .numpy() for qt, c in zip(qtoks, cands, strict=True)]
    return rank


def bm25_ranker() -> Ranker:
    """BM25 (the project's lexical baseline) with idf over every candidate text of the check."""
    from sidestep.text.lexical import BM25

    def rank(qs, cands):
        texts = sorted({t for c in cands for t in c})
        pos = {t: i for i, t in enumerate(texts)}
        bm = BM25([str(i) for i in range(len(texts))], texts)
        full = bm.score_all(list(qs))
        return [full[j, [pos[t] for t in c]] for j, c in enumerate(cands)]
    return rank


@dataclass
class _MemoryTokens:
    tokens: dict[str, np.ndarray]
    kind: str = "float16"

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]:
        return [self.tokens[d] for d in doc_ids]

    def flat(self, doc_ids: list[str], max_tokens: int):
        from sidestep.verify.features import flatten_tokens
        return flatten_tokens(self.docs(doc_ids), max_tokens)


def verifier_ranker(encoder, model, max_doc_tokens: int = 512) -> Ranker:
    """A trained verifier as served after recall: it reads every candidate (recall = pooled cosine)."""
    from sidestep.retrieval.search import TokenView, rerank
    from sidestep.verify.candidates import idf_table

    def rank(qs, cands):
        pool = _encoded_pool(encoder, cands)
        keys = {t: str(i) for i, t in enumerate(pool)}
        idf = idf_table([p[2] for p in pool.values()], len(encoder.tokenizer))
        view = TokenView(_MemoryTokens({keys[t]: v[1] for t, v in pool.items()}),
                         {keys[t]: v[2] for t, v in pool.items()}, idf)
        qv, qtoks = encoder.encode_queries_with_tokens(list(qs))
        qpieces = encoder.query_ids(list(qs))
        out = []
        for q, qt, qp, c in zip(qv, qtoks, qpieces, cands, strict=True):
            rec = np.asarray([float((pool[t][0] @ q).max()) for t in c], np.float32)
            (sc, _, _), = rerank(model, [view], [qt], [qp], [[keys[t] for t in c]], [rec], max_doc_tokens,
                                 verify_top=0)
            out.append(np.asarray(sc, np.float64))
        return out
    return rank


def run_negation(pairs: Sequence[NegationPair], rankers: dict[str, Ranker], *, seed: int = 0) -> dict:
    """Every ranker on the same pairs; per-pair credits kept for paired comparisons."""
    scores, credits = {}, {}
    for name, r in rankers.items():
        s, c = score_pairs(name, pairs, r, seed=seed)
        scores[name], credits[name] = s.as_dict(), c.tolist()
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    return {"pairs": len(pairs), "kinds": kinds, "random_level": RANDOM_LEVEL, "rankers": scores,
            "examples": [asdict(p) | {"docs": [d[:160] for d in p.docs]} for p in pairs[:5]], "credits": credits}
