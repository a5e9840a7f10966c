"""Document maps that carry over: self-supervised questions from a corpus's own text and maps, and the
leave-one-file-out protocol that selects map parameters on them (no label of the held-out file read)
and counts every question, answers across two chunks included.

A hashing bag-of-words "encoder" stands in for the model: enough to make crops find their chunks."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from sidestep.docmaps.docmap import MapParams
from sidestep.docmaps.maps import build_map
from sidestep.docmaps.selfsup import self_sup_questions
from sidestep.eval import longdoc_lofo as L
from sidestep.eval.longdoc_prep import LongDocSet, Prepared, _evidence
from sidestep.eval.longdoc_scoring import PLAIN, within_ranks
from sidestep.text.chunking import Chunk

DIM = 64
TOPICS = {
    "Migration": "herons migrate south in autumn along estuaries and rivers toward warm coasts",
    "Diet": "they eat fish frogs insects and crayfish caught in shallow muddy water at dawn",
    "Nesting": "colonies called heronries are built high in tall trees near quiet lakes",
    "Calls": "a harsh croak warns rivals and a soft bill clatter greets a returning mate",
}


def doc_text(seed: int) -> str:
    rng = np.random.default_rng(seed)
    parts = ["# Herons\n\nHerons are long-legged birds of fresh and coastal waters across the world.\n"]
    for title, words in TOPICS.items():
        w = words.split()
        sents = [" ".join(rng.permutation(w)[:9]).capitalize() + " in season " + str(rng.integers(1, 99)) + "."
                 for _ in range(6)]
        parts.append(f"## {title}\n\n" + " ".join(sents) + "\n")
    return "\n".join(parts)


def vec(text: str) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    for w in re.findall(r"\w+", text.lower()):
        v[zlib.crc32(w.encode()) % DIM] += 1.0
    return v / max(np.linalg.norm(v), 1e-9)


class FakeEncoder:
    def encode_queries(self, texts):
        return np.stack([vec(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)


class Enc:
    def __init__(self, text: str, size: int = 100, step: int = 100):  # no overlap: some answers cross
        self.chunks = [Chunk(i, 0, 1, a, min(a + size, len(text))) for i, a in enumerate(range(0, len(text), step))]
        self.pooled = np.stack([vec(text[c.char_start:c.char_end]) for c in self.chunks])
        self.content_hash = f"h{len(text)}"


def prepared(name: str, seeds: list[int], answers_from: int = 0) -> Prepared:
    from sidestep.docmaps.maps import MapVectors, chunk_section_weights

    texts = [doc_text(s) for s in seeds]
    p = MapParams(min_section_chars=50)
    maps = [build_map(t, None, content_hash=str(i), params=p) for i, t in enumerate(texts)]
    encoded = [Enc(t) for t in texts]
    mv = [MapVectors(vec(m.global_text()), np.stack([vec(x) for x in m.section_texts()]),
                     np.stack([vec(s.title) for s in m.sections])) for m in maps]
    qs, ans, q_doc = [], [], []
    for d, t in enumerate(texts):
        for title in TOPICS:
            sec = t[t.index(f"## {title}"):]
            sent = sec.split("\n\n")[1].split(". ")[answers_from]
            qs.append(f"what about {title.lower()}")
            ans.append(" ".join(sent.split()[2:7]))
            q_doc.append(d)
    ds = LongDocSet(name, texts, qs, ans, q_doc)
    evidence, used, left, kinds = _evidence(ds, encoded)
    prep = Prepared(ds, encoded, maps, mv, [chunk_section_weights(m, e.chunks) for m, e in zip(maps, encoded,
                                                                                               strict=True)],
                    evidence, used, left, FakeEncoder().encode_queries(qs), {}, {}, kinds)
    from sidestep.eval.longdoc_prep import POOLS
    for pool in POOLS:  # "context" vectors: the global text's words with the question's
        prep._ctx.update({(pool, i, d): vec(maps[d].global_text() + " " + qs[i]) for i, d in enumerate(q_doc)})
    return prep


@pytest.fixture(autouse=True)
def no_encoder_context(monkeypatch):
    def fill(prep, encoder, pool, pairs):
        for i, d in pairs:
            prep._ctx.setdefault((pool, i, d), vec(prep.maps[d].global_text() + " " + prep.ds.questions[i]))
    monkeypatch.setattr(L, "fill_context", fill)


def test_self_supervised_questions_hold_their_own_span_and_use_headings_and_summaries():
    texts = [doc_text(0), doc_text(1)]
    p = MapParams(min_section_chars=50)
    maps = [build_map(t, None, content_hash=str(i), params=p) for i, t in enumerate(texts)]
    qs = self_sup_questions(texts, maps, per_doc=12, seed=0)
    assert qs == self_sup_questions(texts, maps, per_doc=12, seed=0)  # reproducible
    assert {q.kind for q in qs} == {"crop", "heading", "summary"} and all(q.doc in (0, 1) for q in qs)
    assert all(len([x for x in qs if x.doc == d]) <= 12 for d in (0, 1))
    for q in qs:
        a, b = q.span
        words = texts[q.doc][a:b].split()
        assert 3 <= len(words) <= 10 and "##" not in texts[q.doc][a:b]  # never a heading line
        if q.kind == "heading":
            title = next(s.title for s in maps[q.doc].sections if s.char_start <= a < s.char_end).split(">")[-1]
            assert q.text.startswith(title.strip())
        else:
            assert q.text.split() == words
    with pytest.raises(ValueError, match="unknown kinds"):
        self_sup_questions(texts, maps, kinds=("title",))


def test_answers_across_chunks_are_counted_not_left_out():
    prep = prepared("toy", [0, 1])
    assert prep.evidence_kinds["across_chunks"] > 0  # 100-char windows without overlap cut some answers
    assert sum(prep.evidence_kinds.values()) == len(prep.used) == len(prep.ds.questions)
    assert "answer_across_chunk_boundary" not in prep.left_out


def test_leave_one_file_out_never_reads_the_held_out_files_labels():
    a, b = prepared("a", [0, 1, 2]), prepared("b", [3, 4, 5])
    rep = L.leave_one_file_out([a, b], FakeEncoder(), per_doc=12, seed=0)
    # the same files with other answers (other labels): what was selected on self-supervised questions is the same
    a2, b2 = prepared("a", [0, 1, 2], answers_from=1), prepared("b", [3, 4, 5], answers_from=1)
    rep2 = L.leave_one_file_out([a2, b2], FakeEncoder(), per_doc=12, seed=0)
    for name in ("a", "b"):
        f, f2 = rep["files"][name], rep2["files"][name]
        assert f["settings"]["self_supervised"] == f2["settings"]["self_supervised"]
        assert f["questions_counted"] == len(a.ds.questions)
        assert f["bag_of_chunks"]["recall@3"] == pytest.approx(
            float(np.mean(within_ranks(a if name == "a" else b, (a if name == "a" else b).used, PLAIN) < 3)))
        assert set(f["modes"]) >= {"bag_of_chunks", "shipped_constants", "map_conditioned[self_supervised]",
                                   "map_conditioned[other_files_labels]"}
        d = f["map_conditioned"]["delta_recall@3"]
        assert d["ci95_low"] <= d["delta"] <= d["ci95_high"]
        assert f["self_supervised"]["questions"] > 0
    # selecting on the other file's labels does depend on labels: it is the control, not the method
    assert rep["files"]["a"]["settings"]["other_files_labels"] is not None


def test_encoding_cache_round_trips_without_pickle(tmp_path):
    from sidestep.eval.longdoc_prep import encoded_cache_key, load_encoded, save_encoded
    from sidestep.text.encoder import EncodedDoc

    rng = np.random.default_rng(0)
    docs = [EncodedDoc(f"h{d}", [Chunk(j, 3 * j, 3 * j + 4, 10 * j, 10 * j + 12) for j in range(n)],
                       rng.normal(size=(n, 4)).astype(np.float32),
                       [rng.normal(size=(int(rng.integers(2, 6)), 4)).astype(np.float16) for _ in range(n)])
            for d, n in enumerate((2, 1, 3))]
    f = tmp_path / "c" / "x.npz"
    save_encoded(f, docs)
    back = load_encoded(f)
    assert [e.content_hash for e in back] == ["h0", "h1", "h2"]
    for a, b in zip(docs, back, strict=True):
        assert a.chunks == b.chunks
        np.testing.assert_array_equal(a.pooled, b.pooled)
        assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    src = tmp_path / "f.jsonl"
    src.write_text("a")
    k = encoded_cache_key(src, "sentences", "enc", 10)
    src.write_text("b")
    assert encoded_cache_key(src, "sentences", "enc", 10) != k  # content-addressed
