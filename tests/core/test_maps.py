"""Document maps: sections, extractive summaries, budgets, failure handling, conditioning, routing.

Texts are invented and tiny; the 50,000-word document uses synthetic token vectors so its
test measures the map's own cost, not the encoder's.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from sidestep.docmaps.docmap import DocMap, MapError, MapParams, Section
from sidestep.docmaps.maps import (
    build_map,
    chunk_section_weights,
    chunk_sections,
    condition_queries,
    embed_maps,
    map_encoded,
    route_documents,
    section_aware_chunks,
)
from sidestep.docmaps.sections import find_headings, find_sections
from sidestep.docmaps.sentences import TokenView, split_sentences, token_view
from sidestep.docmaps.summarizers import ExtractiveSummarizer, LLMSummarizer, Passage, Summary
from sidestep.text.chunking import Chunk

COOKING = [
    "Fresh pasta dough needs flour, eggs and a pinch of salt.",
    "Knead the dough for ten minutes until it becomes smooth and elastic.",
    "Let the dough rest under a towel before rolling it thin.",
    "A tomato sauce simmers slowly with garlic, olive oil and basil.",
    "Cook the noodles in plenty of salted boiling water.",
    "Drain the pasta and toss it with the warm sauce and grated cheese.",
    "Serve the dish immediately with a little more parmesan on top.",
    "Leftover sauce keeps in the fridge for several days.",
]
SPACE = [
    "The telescope observed a distant galaxy with a bright active nucleus.",
    "Astronomers measured the redshift of its spectral lines.",
    "A supermassive black hole sits at the centre of the galaxy.",
    "Gas spiralling into the black hole emits intense X-rays.",
    "The orbiting observatory recorded the X-ray flares for many weeks.",
    "Dark matter dominates the mass of the surrounding galactic halo.",
    "Stars in the outer disk orbit faster than visible matter predicts.",
    "Future space missions will map the halo in greater detail.",
]


def fake_view(text: str, dim: int = 16, seed: int = 0) -> TokenView:
    """Word-level 'tokens' with random vectors: enough to exercise the map without a model."""
    spans = np.asarray([(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)], dtype=np.int64)
    vecs = np.random.default_rng(seed).standard_normal((len(spans), dim)).astype(np.float16)
    return TokenView(spans[:, 0], spans[:, 1], vecs)


def assert_valid(m: DocMap, text: str, p: MapParams) -> None:
    """Sections partition the text in order; every summary fits its budget; a global summary exists."""
    assert m.sections and m.sections[0].char_start == 0 and m.sections[-1].char_end == len(text)
    for i, (a, b) in enumerate(zip(m.sections, m.sections[1:], strict=False)):
        assert a.char_end == b.char_start and a.char_start < a.char_end and a.idx == i
    assert all(len(s.summary) <= p.section_budget_chars for s in m.sections)
    assert 0 < len(m.global_summary) <= p.global_budget_chars


# ----------------------------------------------------------------------------- text and sections
def test_split_sentences_respects_abbreviations_markup_and_cap():
    text = ("Dr. Smith met J.K. Rowling in 1997. She said yes! <P> A new paragraph </P> <Li> item one </Li>\n"
            "Results are in Fig. 3 for details. Then " + "word " * 300)
    sents = [text[a:b] for a, b in split_sentences(text, max_chars=200)]
    assert sents[:5] == ["Dr. Smith met J.K. Rowling in 1997.", "She said yes!", "A new paragraph", "item one",
                         "Results are in Fig. 3 for details."]
    assert all(len(s) <= 200 for s in sents) and len(sents) > 6


def test_sections_follow_headings():
    text = ("# Herons\n\nHerons are long-legged birds of fresh and coastal waters.\n\n"
            "## Migration\n\nMany herons migrate south in autumn along the estuaries.\n\n"
            "## Diet\n\nThey eat fish, frogs and insects caught in shallow water.\n\n"
            "3.1 Nesting Habits\nHerons nest in colonies called heronries high in the trees, " + "often " * 30 + ".")
    heads = find_headings(text)
    assert [h.title for h in heads] == ["Herons", "Migration", "Diet", "3.1 Nesting Habits"]
    p = MapParams(min_section_chars=20)
    secs = find_sections(text, params=p)
    assert [s.title for s in secs] == ["Herons", "Herons > Migration", "Herons > Diet", "Herons > 3.1 Nesting Habits"]
    assert [s.char_start for s in secs] == [h.start for h in heads]
    m = build_map(text, fake_view(text), content_hash="h", params=p)
    assert_valid(m, text, p)
    assert m.title == "Herons" and "migrate" in m.sections[1].summary
    assert all("Migration" not in s.summary for s in m.sections)  # heading lines are not summary sentences


def test_html_headings_and_small_sections_merge():
    text = ("Statue - wikipedia <H1> Statue of Liberty </H1> <P> The statue stands in the harbor . </P> "
            "<H2> History </H2> <H3> Design </H3> <P> Bartholdi designed the copper figure over many years . </P> "
            "<H3> Construction </H3> <P> The pedestal was built from poured concrete and granite blocks . </P>")
    p = MapParams(min_section_chars=60)
    secs = find_sections(text, params=p)
    titles = [s.title for s in secs]
    # "History" holds no text of its own: it is folded into its first subsection
    assert titles == ["Statue of Liberty", "Statue of Liberty > History > Design",
                      "Statue of Liberty > History > Construction"]
    assert secs[0].char_start == 0  # the preamble before <H1> joins the first section


# ----------------------------------------------------------------------------- valid maps for edge cases
def test_fifty_thousand_words_map_quickly():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(3000)]
    sents = [" ".join(rng.choice(vocab, size=rng.integers(8, 20))).capitalize() + "." for _ in range(4000)]
    text = " ".join(sents)
    assert len(text.split()) >= 50_000
    p = MapParams()
    view = fake_view(text, dim=384)
    t0 = time.perf_counter()
    m = build_map(text, view, content_hash="big", params=p)
    elapsed = time.perf_counter() - t0
    assert_valid(m, text, p)
    assert all(s.char_end - s.char_start <= p.max_section_chars for s in m.sections)
    assert elapsed < 5.0, f"50k-word map took {elapsed:.1f}s"


def test_map_without_token_vectors_still_valid():
    text = " ".join(COOKING * 20)  # no structure, no vectors: cut evenly, lead sentences
    p = MapParams(max_section_chars=2000)
    m = build_map(text, None, content_hash="x", params=p)
    assert_valid(m, text, p)
    assert len(m.sections) >= 3


@pytest.mark.slow
def test_one_sentence_and_unstructured_documents(encoder):
    p = MapParams()
    one = "Herons migrate along the estuary every spring."
    enc = encoder.encode_documents([("one", "", one)])[0]
    m = map_encoded(encoder, enc, one, params=p)
    assert_valid(m, one, p)
    assert len(m.sections) == 1 and m.global_summary == one
    prose = " ".join(COOKING + SPACE)
    enc = encoder.encode_documents([("prose", "", prose)], window_tokens=64, overlap_tokens=8)[0]
    m = map_encoded(encoder, enc, prose, params=p)
    assert_valid(m, prose, p)


@pytest.mark.slow
def test_topic_shift_splits_two_unrelated_topics(encoder):
    text = " ".join(COOKING + SPACE)
    shift = text.index(SPACE[0])
    enc = encoder.encode_documents([("two", "", text)], window_tokens=64, overlap_tokens=8)[0]
    p = MapParams(min_section_chars=150, tiling_window=3)
    view = token_view(encoder.tokenizer, text, enc)
    assert len(view.starts) == enc.chunks[-1].tok_end
    m = build_map(text, view, content_hash="two", params=p)
    assert_valid(m, text, p)
    cuts = [s.char_start for s in m.sections[1:]]
    assert shift in cuts, (cuts, shift)
    assert len(m.sections) <= 3
    pasta = next(s for s in m.sections if s.char_start <= 0 < s.char_end)
    assert "galaxy" not in pasta.summary


# ----------------------------------------------------------------------------- summarizers
def test_extractive_summary_respects_budget_and_order():
    rng = np.random.default_rng(0)
    sents = [f"Sentence number {i} talks about topic {i % 4} in some detail." for i in range(40)]
    vecs = rng.standard_normal((40, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for budget in (60, 130, 300):
        s = ExtractiveSummarizer().summarize(Passage(sents, vecs), budget)
        assert 0 < len(s.text) <= budget and list(s.picked) == sorted(s.picked)
    long_ = ExtractiveSummarizer().summarize(Passage(["word " * 100 + "end."], vecs[:1]), 50)
    assert 0 < len(long_.text) <= 50


def test_facility_location_covers_both_topics():
    """Two clusters of sentences: a two-sentence budget must pick one from each."""
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    vecs = np.stack([a] * 6 + [b] * 3) + 0.01 * np.arange(36, dtype=np.float32).reshape(9, 4)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    sents = [f"Topic A sentence number {i} here." for i in range(6)] + [f"Topic B sentence number {i} here."
                                                                       for i in range(3)]
    s = ExtractiveSummarizer().summarize(Passage(sents, vecs), 2 * len(sents[0]) + 1)
    assert len(s.picked) == 2 and s.picked[0] < 6 <= s.picked[1]


class _Broken:
    name = "broken"

    def params(self):
        return {}

    def summarize(self, passage, budget_chars):
        raise RuntimeError("model exploded")


class _Verbose(_Broken):
    def summarize(self, passage, budget_chars):
        return Summary("x" * (budget_chars + 1))


@pytest.mark.parametrize("summ, reason", [(_Broken(), "model exploded"), (_Verbose(), "exceeds the budget")])
def test_summarizer_failure_raises_map_error(summ, reason):
    text = " ".join(COOKING)
    with pytest.raises(MapError, match=reason) as e:
        build_map(text, fake_view(text), content_hash="doc-1", summarizer=summ)
    assert e.value.content_hash == "doc-1"
    with pytest.raises(MapError, match="empty document"):
        build_map("   ", None, content_hash="doc-2")


class _FakeLLM(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        reply = {"choices": [{"message": {"role": "assistant", "content": "Pasta is cooked. " * 40}}]}
        data = json.dumps(reply).encode() if self.status == 200 else b"boom"
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_llm():
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeLLM.status, _FakeLLM.seen = 200, []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_llm_summarizer_against_local_fake(fake_llm, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "secret")
    llm = LLMSummarizer(fake_llm, "tiny", api_key_env="FAKE_LLM_KEY", trust_env=False, timeout_s=5)
    text = " ".join(COOKING)
    m = build_map(text, None, content_hash="c", summarizer=llm)
    assert m.summarizer == "llm" and "secret" not in json.dumps(m.as_dict())
    assert_valid(m, text, MapParams())
    req = _FakeLLM.seen[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "tiny"
    assert req["auth"] == "Bearer secret"
    _FakeLLM.status = 500
    with pytest.raises(MapError, match="LLM summarizer failed"):
        build_map(text, None, content_hash="c", summarizer=llm)
    monkeypatch.delenv("FAKE_LLM_KEY")
    with pytest.raises(MapError, match="FAKE_LLM_KEY"):
        build_map(text, None, content_hash="c", summarizer=llm)


# ----------------------------------------------------------------------------- vectors
def test_condition_queries_math():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ctx = rng.standard_normal((3, 8)).astype(np.float32)
    ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
    np.testing.assert_allclose(condition_queries(q, ctx, 1.0), q, atol=1e-6)
    np.testing.assert_allclose(condition_queries(q, ctx, 0.0), ctx, atol=1e-6)
    mid = condition_queries(q, ctx, 0.5)
    np.testing.assert_allclose(np.linalg.norm(mid, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mid, (q + ctx) / np.linalg.norm(q + ctx, axis=1, keepdims=True), atol=1e-6)


def test_section_aware_chunks_move_toward_their_section():
    chunks = np.eye(3, dtype=np.float32)
    secs = np.asarray([[0, 0, 1], [0, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(section_aware_chunks(chunks, secs, [0, 0, 1], 0.0), chunks)
    out = section_aware_chunks(chunks, secs, [0, 0, 1], 0.5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert out[0, 2] > 0 and out[1, 2] > 0 and out[2, 1] > 0 and out[0, 1] == 0


def test_heading_term_adds_a_fixed_bonus_per_section():
    chunks = np.eye(3, dtype=np.float32)
    secs = np.asarray([[0, 0, 1], [0, 1, 0]], dtype=np.float32)
    heads = np.asarray([[1, 0, 0], [0, 0, 0]], dtype=np.float32)  # section 1 has no heading: a zero row
    base = section_aware_chunks(chunks, secs, [0, 0, 1], 0.5)
    out = section_aware_chunks(chunks, secs, [0, 0, 1], 0.5, heads, 0.3)
    q = np.asarray([1, 0, 0], dtype=np.float32)
    np.testing.assert_allclose(out @ q - base @ q, [0.3, 0.3, 0.0], atol=1e-6)  # cos(q, heading) * tau, unshrunk
    np.testing.assert_array_equal(section_aware_chunks(chunks, secs, [0, 0, 1], 0.5, heads, 0.0), base)
    np.testing.assert_array_equal(section_aware_chunks(chunks, secs, [0, 0, 1], 0.0, heads, 0.0), chunks)
    only_heads = section_aware_chunks(chunks, secs, [0, 0, 1], 0.0, heads, 1.0)
    np.testing.assert_allclose(only_heads[0], [2, 0, 0])


def test_cross_fitting_holds_every_question_out_once_per_repeat_and_tunes_on_the_other_half(monkeypatch):
    from sidestep.eval import longdoc as L
    from sidestep.eval import longdoc_prep as P

    rng = np.random.default_rng(0)
    n_docs, dim = 8, 6
    encoded, maps, vecs, evidence, q_doc = [], [], [], [], []
    for d in range(n_docs):
        pooled = rng.normal(size=(5, dim)).astype(np.float32)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        encoded.append(type("E", (), {"pooled": pooled, "chunks": [Chunk(j, 0, 1, 0, 1) for j in range(5)]})())
        maps.append(None)
        vecs.append(None)
        for j in (1, 3):
            evidence.append([(j,)])
            q_doc.append(d)
    n_q = len(q_doc)
    ds = P.LongDocSet("toy", ["x"] * n_docs, ["q"] * n_q, ["a"] * n_q, q_doc)
    # each question = its evidence
    q_vecs = np.stack([encoded[d].pooled[e[0][0]] for d, e in zip(q_doc, evidence, strict=True)])
    prep = P.Prepared(ds, encoded, maps, vecs, [np.ones((5, 1), np.float32)] * n_docs, evidence,
                      np.arange(n_q), {}, q_vecs, {})
    for pool in P.POOLS:  # no maps: the "context" of a question is the question (no encoder needed)
        P.fill_context(prep, None, pool, {(i, d) for i, d in enumerate(q_doc)})
    tuned_on: list[set[int]] = []
    real_tune = L.tune

    def spy(preps, encoder, devs):
        tuned_on.append({int(i) for i in devs[0]})
        return real_tune(preps, encoder, devs)

    monkeypatch.setattr(L, "tune", spy)
    held, settings = L.cross_fit([prep], None, seed=3, repeats=2)
    assert len(settings) == 4 and [s["split_seed"] for s in settings] == [3, 3, 4, 4]
    for r in range(2):
        a, b = (set(x.tolist()) for x in L.split_questions(prep, 3 + r))
        assert a | b == set(range(n_q)) and not a & b and a and b
        assert tuned_on[2 * r] == a and tuned_on[2 * r + 1] == b  # tuned on one half, applied to the other
    np.testing.assert_array_equal(held[0].within["bag_of_chunks"], 0)  # the evidence chunk is the query itself
    rep = L.report(prep, held[0])
    assert rep["within_document"]["bag_of_chunks"]["recall@1"] == 1.0 and rep["repeats"] == 2
    assert len(rep["within_document_recall@3_per_repeat"]["section_aware"]) == 2


def test_chunk_sections_by_largest_overlap():
    m = DocMap("h", "", [Section(0, "a", 0, 100, ""), Section(1, "b", 100, 250, ""), Section(2, "c", 250, 300, "")],
               "g", "extractive")
    chunks = [Chunk(0, 0, 9, 0, 90), Chunk(1, 8, 20, 80, 200), Chunk(2, 18, 26, 180, 260), Chunk(3, 24, 30, 240, 300)]
    assert chunk_sections(m, chunks) == [0, 1, 1, 2]
    w = chunk_section_weights(m, chunks)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[1], [20 / 120, 100 / 120, 0.0])  # straddles sections 0 and 1
    secs = np.eye(3, dtype=np.float32)
    mixed = section_aware_chunks(np.zeros((4, 3), np.float32), secs, w, 1.0)
    assert mixed[1, 0] > 0 and mixed[1, 1] > mixed[1, 0] and mixed[1, 2] == 0
    np.testing.assert_allclose(section_aware_chunks(np.zeros((4, 3), np.float32), secs, [0, 1, 1, 2], 1.0)[1],
                               [0, 1, 0])
    assert DocMap.from_dict(m.as_dict()) == m


@pytest.mark.slow
def test_routing_picks_the_document_whose_map_matches(encoder):
    def one(h: str, title: str, summary: str) -> DocMap:
        return DocMap(h, title, [Section(0, title, 0, 10, summary)], summary, "extractive")

    maps = [one("a", "Pasta", " ".join(COOKING[:3])), one("b", "Galaxies", " ".join(SPACE[:3])),
            one("c", "Herons", "Herons are wading birds that nest in colonies near lakes and rivers.")]
    mv = embed_maps(encoder, maps)
    assert mv[0].section_vecs.shape == (1, 384) and mv[0].title_vecs.shape == (1, 384)
    assert np.dot(mv[0].title_vecs[0], encoder.encode_queries(["Pasta"])[0]) > 0.9  # the heading alone
    g = np.stack([v.global_vec for v in mv])
    q = encoder.encode_queries(["how long should I knead the dough", "what emits the x-rays near the black hole",
                                "where do wading birds build their nests"])
    docs, scores = route_documents(q, g, top_r=2)
    assert docs[:, 0].tolist() == [0, 1, 2]
    assert scores.shape == (3, 2) and np.all(scores[:, 0] >= scores[:, 1])
    fused, _ = route_documents(q, g, top_r=1, chunk_max=np.tile([[0.0, 0.0, 5.0]], (3, 1)), map_weight=0.0)
    assert fused[:, 0].tolist() == [2, 2, 2]  # with all weight on chunk scores the maps do not matter


def test_longdoc_evidence_is_the_chunk_holding_the_answer():
    from sidestep.eval.longdoc_prep import answer_spans, evidence_chunks, normalize

    text = "In 2010 the  team won\n10 games. Later , it won the Title again ."
    spans = answer_spans(*normalize(text), "10 GAMES.")
    assert [text[a:b] for a, b in spans] == ["10 games."]  # case and whitespace do not matter
    assert answer_spans(*normalize(text), "201") == []  # word boundaries: no match inside "2010"
    chunks = [Chunk(0, 0, 5, 0, 32), Chunk(1, 4, 9, 20, 45), Chunk(2, 8, 12, 42, len(text))]
    assert evidence_chunks(spans, chunks) == ([(0,), (1,)], None)  # either chunk that holds it
    across = answer_spans(*normalize(text), "it won the title again")
    # across a boundary: counted, and found only when both chunks that hold its parts are
    assert evidence_chunks(across, chunks) == ([(1, 2)], None)
    assert evidence_chunks([], chunks) == ([], "answer_not_in_document")
    assert evidence_chunks(spans, chunks[:0]) == ([], None)  # beyond the indexed chunks: counted, as a miss


def test_an_answer_across_two_chunks_is_found_only_when_both_rank_within_k():
    from sidestep.eval.longdoc_scoring import MISS, _rank

    scores = np.asarray([0.9, 0.1, 0.8, 0.5])
    assert _rank(scores, [(0,)]) == 0 and _rank(scores, [(3,)]) == 2
    assert _rank(scores, [(2, 3)]) == 2  # its worse chunk decides: both are in the top 3, not in the top 2
    assert _rank(scores, [(1, 2), (3,)]) == 2  # the best alternative counts
    assert _rank(scores, []) == MISS


def test_map_store_round_trips_heading_vectors(tmp_path):
    from sidestep.docmaps.maps import MapVectors
    from sidestep.storage.maps import MapStore
    from sidestep.storage.paths import DataRoot

    store = MapStore(DataRoot(tmp_path.resolve()), "extractive-test", 3)
    maps = [DocMap("h1", "T", [Section(0, "T > A", 0, 5, "a"), Section(1, "", 5, 9, "b")], "g", "extractive"),
            DocMap("h2", "U", [Section(0, "U", 0, 4, "c")], "g", "extractive")]
    heads = np.asarray([[1, 0, 0], [0, 0, 0]], np.float32)
    vecs = [MapVectors(np.ones(3, np.float32), np.eye(3, dtype=np.float32)[:2], heads),
            MapVectors(np.ones(3, np.float32), np.eye(3, dtype=np.float32)[:1])]  # stored before headings: zeros
    store.write(maps, vecs)
    got = store.gather(["h1", "h2"])
    assert got["h1"][0] == maps[0]
    np.testing.assert_array_equal(got["h1"][1].title_vecs, heads)
    np.testing.assert_array_equal(got["h2"][1].title_vecs, np.zeros((1, 3), np.float32))
