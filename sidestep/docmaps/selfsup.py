"""Self-supervised questions from a corpus's own text and maps: what map conditioning is learned on
where nobody has written a question.

Three kinds, each with the character span its own chunk must hold (no label is read):
- "crop": a few consecutive words of a sentence, the query for the chunk that holds them;
- "heading": a section's heading with a few words of one of its sentences (how a question names
  the part of a document it asks about: "season 2 ... premiered"), for the chunk holding those words;
- "summary": a few words of a sentence the section's summary picked (what a question about the
  section's main point looks like), for the chunk holding them.

Crops are short (question length) and never the whole sentence, so the chunk is not found by
copying its text alone. Sentences that are heading lines are skipped. Reproducible from a seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sidestep.docmaps.docmap import DocMap
from sidestep.docmaps.sections import find_headings
from sidestep.docmaps.sentences import clean_text, split_sentences

KINDS = ("crop", "heading", "summary")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class SelfSupQuestion:
    doc: int  # position of the document in the corpus
    text: str
    span: tuple[int, int]  # characters of the document the answering chunk must hold
    kind: str


def _crop(text: str, a: int, b: int, rng: random.Random, lo: int, hi: int) -> tuple[str, tuple[int, int]] | None:
    """lo..hi consecutive words of text[a:b] (never all of a sentence longer than hi words)."""
    words = [(a + m.start(), a + m.end()) for m in _WORD.finditer(text[a:b])]
    if len(words) < lo + 2:
        return None
    n = rng.randint(lo, min(hi, len(words) - 2))
    s = rng.randint(0, len(words) - n)
    ca, cb = words[s][0], words[s + n - 1][1]
    q = clean_text(text[ca:cb]).strip(" ,;:")
    return (q, (ca, cb)) if len(q) >= 12 else None


def _last_title(title: str) -> str:
    return title.split(">")[-1].strip()


def self_sup_questions(texts: Sequence[str], maps: Sequence[DocMap | None], *, per_doc: int = 24, seed: int = 0,
                       kinds: Sequence[str] = KINDS, crop_words: tuple[int, int] = (5, 10)) -> list[SelfSupQuestion]:
    """Up to `per_doc` questions per document, split evenly over `kinds` (a kind a document cannot
    make, e.g. headings in a document without any, gives its share to plain crops)."""
    bad = set(kinds) - set(KINDS)
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)}; choose from {KINDS}")
    out: list[SelfSupQuestion] = []
    for d, (text, m) in enumerate(zip(texts, maps, strict=True)):
        rng = random.Random(f"{seed}\x1f{d}\x1f{len(text)}")
        heads = [(h.start, h.end) for h in find_headings(text)]
        sents = [(a, b) for a, b in split_sentences(text)
                 if not any(hs <= a and b <= he for hs, he in heads) and len(_WORD.findall(text[a:b])) >= 8]
        if not sents:
            continue
        share = {k: per_doc // len(kinds) for k in kinds}
        for k in list(kinds)[:per_doc % len(kinds)]:
            share[k] += 1
        made: list[SelfSupQuestion] = []
        if m is not None and "heading" in share:
            made += _headings(text, m, sents, rng, share.pop("heading"), d, crop_words)
        if m is not None and "summary" in share:
            made += _summaries(text, m, sents, rng, share.pop("summary"), d, crop_words)
        want = per_doc - len(made)
        for a, b in rng.sample(sents, min(len(sents), want)) if want > 0 else []:
            c = _crop(text, a, b, rng, *crop_words)
            if c:
                made.append(SelfSupQuestion(d, c[0], c[1], "crop"))
        out += made
    return out


def _in_section(sents: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(a, b) for a, b in sents if lo <= a and b <= hi]


def _headings(text: str, m: DocMap, sents, rng: random.Random, n: int, d: int, crop_words) -> list[SelfSupQuestion]:
    named = [s for s in m.sections if _last_title(s.title) and _in_section(sents, s.char_start, s.char_end)]
    out = []
    for sec in rng.sample(named, min(n, len(named))):
        a, b = rng.choice(_in_section(sents, sec.char_start, sec.char_end))
        c = _crop(text, a, b, rng, max(3, crop_words[0] - 2), max(4, crop_words[1] - 4))
        if c:
            out.append(SelfSupQuestion(d, f"{_last_title(sec.title)} {c[0]}", c[1], "heading"))
    return out


def _summaries(text: str, m: DocMap, sents, rng: random.Random, n: int, d: int, crop_words) -> list[SelfSupQuestion]:
    """Crops of the sentences the section summaries picked (found back in the text by their words)."""
    picked = []
    for sec in m.sections:
        summary = clean_text(sec.summary)
        picked += [(a, b) for a, b in _in_section(sents, sec.char_start, sec.char_end)
                   if len(clean_text(text[a:b])) > 20 and clean_text(text[a:b])[:60] in summary]
    out = []
    for a, b in rng.sample(picked, min(n, len(picked))):
        c = _crop(text, a, b, rng, *crop_words)
        if c:
            out.append(SelfSupQuestion(d, c[0], c[1], "summary"))
    return out
