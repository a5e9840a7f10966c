"""Self-supervised queries from any corpus, no label read: each query is a piece of one document, and that
document, with the piece taken out, is its one positive.

Three kinds; each drawn document gives one, drawn at random among the kinds that apply to it:

- title: a title of at least three words (a short statement of what the text is about, much like a query);
  the positive is the text without it;
- heading: a Markdown heading (`## Storing fresh herbs`) becomes a question ("what about storing fresh
  herbs?"); the positive is the text without the heading line;
- crop: one sentence of 5-30 words from the middle of the text (inverse cloze); the positive is the text
  without that sentence. A document of one sentence gives none.

The piece is always removed from its positive: left in, the query would sit verbatim in its document and
every ranker would find it, which no real query offers.

Why a random kind, not the first that applies: a titled corpus would otherwise give titles alone, and a title
is the easiest query a document has (on 200 held-out SciFact titles MaxSim scored 0.986 nDCG@10). A
verifier trained on them learns little a real query needs, and a choice among rankers made on them is a tie.
Measured leave-one-corpus-out on SciFact (BENCHMARKS.md): the general verifier trained on titles and crops
scored 0.7167 nDCG@10 against 0.6998 on titles alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sidestep.eval.bootstrap import paired_bootstrap

KINDS = ("title", "heading", "crop")
_SENT = re.compile(r"[^.!?\n]+[.!?]?")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PseudoQuery:
    """One self-supervised query: `pos` the document it was taken from, `doc_text` that document's text with
    the query's piece removed (the positive as every ranker reads it)."""

    pos: int
    query: str
    doc_text: str
    kind: str


def _words(s: str) -> int:
    return len(s.split())


def heading_query(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """A question from one of the text's Markdown headings (three words or more), and the text without it."""
    heads = [m for m in _HEADING.finditer(text) if _words(m.group(1)) >= 2]
    if not heads:
        return None
    m = heads[int(rng.integers(len(heads)))]
    rest = (text[:m.start()] + text[m.end():]).strip()
    if _words(rest) < 5:
        return None
    return f"what about {m.group(1).strip().rstrip('?.:').lower()}?", rest


def sentence_crop(text: str, rng: np.random.Generator, min_words: int = 5, max_words: int = 30
                  ) -> tuple[str, str] | None:
    """One sentence of the text (not its first when it has more than two) as the query, the rest as the positive;
    None when no sentence fits or nothing would be left."""
    sents = [m for m in _SENT.finditer(text) if min_words <= _words(m.group()) <= max_words]
    if len(sents) > 2:
        sents = sents[1:]
    if not sents:
        return None
    m = sents[int(rng.integers(len(sents)))]
    rest = (text[:m.start()] + text[m.end():]).strip()
    if _words(rest) < min_words:
        return None
    return m.group().strip(), rest


def pseudo_queries(titles: Sequence[str | None], texts: Sequence[str | None], n: int, seed: int,
                   kinds: Sequence[str] = KINDS, exclude: set[int] | None = None) -> list[PseudoQuery]:
    """Up to n self-supervised queries from n distinct documents drawn at random (positions ascending); each
    document gives one query of a kind drawn at random among those of `kinds` that apply to it."""
    bad = set(kinds) - set(KINDS)
    if bad:
        raise ValueError(f"unknown pseudo-query kinds {sorted(bad)}; known: {list(KINDS)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    out: list[PseudoQuery] = []
    for i in order.tolist():
        if len(out) >= n:
            break
        if exclude and i in exclude:
            continue
        text, title = (texts[i] or "").strip(), (titles[i] or "").strip()
        if not text:
            continue
        options: list[tuple[str, tuple[str, str]]] = []
        for kind in (k for k in KINDS if k in kinds):
            if kind == "title":
                got = (title, text) if _words(title) >= 3 else None
            elif kind == "heading":
                got = heading_query(text, rng)
            else:
                got = sentence_crop(text, rng)
            if got:
                options.append((kind, got))
        if options:
            kind, (query, rest) = options[int(rng.integers(len(options)))]
            out.append(PseudoQuery(i, query, rest, kind))
    return sorted(out, key=lambda p: p.pos)


def ndcg10_single(ranked: Sequence[str], positive: str) -> float:
    """nDCG@10 of a ranking with one relevant document (gain 1): 1 / log2(rank + 1) within the top ten."""
    for r, d in enumerate(ranked[:10], 1):
        if d == positive:
            return float(1.0 / np.log2(r + 1))
    return 0.0


def paired_ci(a: Sequence[float], b: Sequence[float], *, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(a - b) over queries."""
    if not len(a):
        return 0.0, 0.0
    ci = paired_bootstrap(np.asarray(a, np.float64), np.asarray(b, np.float64), draws=reps, seed=seed)
    return ci["lo"], ci["hi"]
