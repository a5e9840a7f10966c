"""Structural near-misses: a relevant text changed so that it no longer satisfies the query.

Pooled cosine barely moves when one word flips a claim ("increases" -> "decreases"),
so a verifier trained only on topical negatives never learns to look. These rules
make such negatives from the training positives themselves: negation inserted or
removed, an antonym, two entities' roles swapped, a number or unit changed, a
condition inverted. Edits prefer the words the query shares with the text, because
that is where a near-miss changes the answer to the query. Rules, no model: the
output is reproducible from a seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# antonyms and condition inversions (both directions are used)
ANTONYMS = [
    ("increase", "decrease"), ("increased", "decreased"), ("increases", "decreases"), ("increasing", "decreasing"),
    ("higher", "lower"), ("high", "low"), ("more", "less"), ("major", "minor"), ("greater", "smaller"),
    ("larger", "smaller"), ("large", "small"), ("positive", "negative"), ("positively", "negatively"),
    ("activate", "inhibit"), ("activates", "inhibits"), ("activated", "inhibited"), ("activation", "inhibition"),
    ("upregulated", "downregulated"), ("upregulates", "downregulates"), ("upregulation", "downregulation"),
    ("enhances", "reduces"), ("enhanced", "reduced"), ("promotes", "suppresses"), ("promote", "suppress"),
    ("induces", "prevents"), ("induced", "prevented"), ("elevated", "reduced"), ("gain", "loss"),
    ("benefit", "harm"), ("beneficial", "harmful"), ("improves", "worsens"), ("improved", "worsened"),
    ("efficient", "inefficient"), ("effective", "ineffective"), ("stable", "unstable"), ("resistant", "sensitive"),
    ("intramolecular", "intermolecular"), ("intracellular", "extracellular"), ("hypermethylation", "hypomethylation"),
    ("hyperactivity", "hypoactivity"), ("overexpression", "underexpression"), ("agonist", "antagonist"),
    ("dominant", "recessive"), ("early", "late"), ("earlier", "later"), ("acute", "chronic"), ("rare", "common"),
    ("present", "absent"), ("presence", "absence"), ("with", "without"), ("before", "after"), ("above", "below"),
    ("inside", "outside"), ("maximum", "minimum"), ("strong", "weak"), ("stronger", "weaker"), ("fast", "slow"),
    ("faster", "slower"), ("rapid", "slow"), ("male", "female"), ("men", "women"), ("adults", "children"),
    ("healthy", "diseased"), ("survival", "mortality"), ("sufficient", "insufficient"), ("required", "dispensable"),
    ("necessary", "unnecessary"), ("correlated", "uncorrelated"), ("associated", "unassociated"),
    ("significant", "insignificant"), ("consistent", "inconsistent"), ("common", "rare"), ("in vivo", "in vitro"),
]
_ANT: dict[str, str] = {}
for a, b in ANTONYMS:
    _ANT.setdefault(a, b)
    _ANT.setdefault(b, a)
PREFIX_SWAPS = [("intra", "inter"), ("hyper", "hypo"), ("over", "under"), ("up", "down"), ("pro", "anti"),
                ("endo", "exo"), ("homo", "hetero"), ("mono", "poly")]
AUXILIARIES = ("is", "are", "was", "were", "can", "could", "may", "might", "does", "do", "did", "will", "has",
               "have", "had", "should")
UNITS = [("mg", "g"), ("ml", "l"), ("µm", "mm"), ("nm", "µm"), ("hours", "days"), ("days", "weeks"),
         ("weeks", "months"), ("months", "years"), ("%", "-fold")]
KINDS = ("negation", "antonym", "role_swap", "number", "condition")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")
_NUM = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]*\d)")
STOP = frozenset(["the", "a", "an", "of", "in", "on", "for", "to", "and", "or", "by", "with", "is", "are", "was",
                  "were", "be", "been", "that", "this", "these", "those", "from", "at", "as", "it", "its", "we",
                  "our", "their", "which", "who", "whom", "find", "evidence"])


@dataclass(frozen=True)
class NearMiss:
    kind: str
    text: str
    changed: str  # what was changed, for logs and tests


def content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in STOP}


def _match_case(src: str, word: str) -> str:
    return word.capitalize() if src[:1].isupper() else word


def _replace_at(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _candidates(text: str, query_words: set[str]) -> list[re.Match]:
    """Word matches, those the query shares first."""
    words = list(_WORD.finditer(text))
    shared = [m for m in words if m.group().lower() in query_words]
    return shared + [m for m in words if m.group().lower() not in query_words]


def antonym(text: str, query_words: set[str], rng: random.Random) -> NearMiss | None:
    for m in _candidates(text, query_words):
        w = m.group().lower()
        if w in _ANT:
            new = _match_case(m.group(), _ANT[w])
            return NearMiss("antonym", _replace_at(text, m.start(), m.end(), new), f"{m.group()} -> {new}")
        for a, b in PREFIX_SWAPS:
            for x, y in ((a, b), (b, a)):
                if w.startswith(x) and len(w) > len(x) + 4 and m.group().lower() in query_words:
                    new = _match_case(m.group(), y + w[len(x):])
                    return NearMiss("antonym", _replace_at(text, m.start(), m.end(), new), f"{m.group()} -> {new}")
    return None


def negation(text: str, query_words: set[str], rng: random.Random) -> NearMiss | None:
    """Remove a 'not'/'no', or insert 'not' after the auxiliary nearest a shared word."""
    m = re.search(r"\b(not|no)\s+", text, flags=re.IGNORECASE)
    if m and rng.random() < 0.5:
        return NearMiss("negation", _replace_at(text, m.start(), m.end(), ""), f"removed {m.group().strip()!r}")
    auxes = list(re.finditer(r"\b(" + "|".join(AUXILIARIES) + r")\b", text))
    if not auxes:
        if m:
            return NearMiss("negation", _replace_at(text, m.start(), m.end(), ""), f"removed {m.group().strip()!r}")
        return None
    shared = [w.start() for w in _candidates(text, query_words) if w.group().lower() in query_words]
    aux = min(auxes, key=lambda a: min((abs(a.start() - s) for s in shared), default=a.start()))
    return NearMiss("negation", _replace_at(text, aux.end(), aux.end(), " not"),
                    f"inserted 'not' after {aux.group()!r}")


def role_swap(text: str, query_words: set[str], rng: random.Random) -> NearMiss | None:
    """Swap two content words of one sentence (the query's first), so who-does-what-to-whom changes."""
    for sent in re.finditer(r"[^.!?]+[.!?]?", text):
        s = sent.group()
        words = [w for w in _WORD.finditer(s) if len(w.group()) > 3 and w.group().lower() not in STOP]
        picked = [w for w in words if w.group().lower() in query_words]
        pool = picked if len(picked) >= 2 else words
        pairs = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1:] if a.group().lower() != b.group().lower()]
        if not pairs:
            continue
        a, b = pairs[0] if picked and len(picked) >= 2 else rng.choice(pairs)
        swapped = s[:a.start()] + b.group() + s[a.end():b.start()] + a.group() + s[b.end():]
        out = text[:sent.start()] + swapped + text[sent.end():]
        return NearMiss("role_swap", out, f"{a.group()} <-> {b.group()}")
    return None


def number(text: str, query_words: set[str], rng: random.Random) -> NearMiss | None:
    nums = list(_NUM.finditer(text))
    if nums:
        m = rng.choice(nums)
        v = float(m.group(1))
        new = v * rng.choice([2, 3, 5, 10]) if rng.random() < 0.5 or v < 2 else v / rng.choice([2, 4, 10])
        s = f"{new:g}" if "." in m.group(1) else str(max(int(round(new)), 0) if new >= 1 else f"{new:g}")
        if s == m.group(1):
            s = str(int(v) + 7)
        return NearMiss("number", _replace_at(text, m.start(1), m.end(1), s), f"{m.group(1)} -> {s}")
    for a, b in UNITS:
        for x, y in ((a, b), (b, a)):
            m = re.search(rf"(?<=\d)\s?{re.escape(x)}\b", text)
            if m:
                return NearMiss("number", _replace_at(text, m.start(), m.end(), " " + y), f"{x} -> {y}")
    return None


def condition(text: str, query_words: set[str], rng: random.Random) -> NearMiss | None:
    """Invert a condition: with/without, presence/absence, before/after, in vivo/in vitro, if/unless."""
    pairs = [("with", "without"), ("presence", "absence"), ("before", "after"), ("in vivo", "in vitro"),
             ("if", "unless"), ("during", "after"), ("treated", "untreated"), ("deficient", "proficient")]
    hits = []
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            hits += [(m, y) for m in re.finditer(rf"\b{re.escape(x)}\b", text, flags=re.IGNORECASE)]
    if not hits:
        return None
    m, y = rng.choice(hits)
    new = _match_case(m.group(), y)
    return NearMiss("condition", _replace_at(text, m.start(), m.end(), new), f"{m.group()} -> {new}")


RULES = {"negation": negation, "antonym": antonym, "role_swap": role_swap, "number": number, "condition": condition}


def near_misses(query: str, text: str, *, n: int = 3, seed: int = 0, kinds: tuple[str, ...] = KINDS
                ) -> list[NearMiss]:
    """Up to n distinct near-misses of `text` for `query`, one per rule, rules in a seeded order."""
    rng = random.Random(f"{seed}\x1f{query}\x1f{text[:64]}")
    qw = content_words(query)
    order = list(kinds)
    rng.shuffle(order)
    # antonyms of words the query itself uses are the most telling: try them first when there are any
    if "antonym" in order and any(w in _ANT for w in qw):
        order.remove("antonym")
        order.insert(0, "antonym")
    out: list[NearMiss] = []
    for kind in order:
        if len(out) >= n:
            break
        nm = RULES[kind](text, qw, rng)
        if nm and nm.text != text and all(nm.text != o.text for o in out):
            out.append(nm)
    return out
