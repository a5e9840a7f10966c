"""Self-supervised queries from unlabelled text (titles, heading questions, sentence crops: the piece is always
taken out of its positive) and the ranker choice made on them (the best untrained ranker unless a learned one
beats it beyond the paired 95% interval of the difference)."""

from __future__ import annotations

import pytest

from sidestep.verify.crops import ndcg10_single, paired_ci, pseudo_queries
from sidestep.verify.gate import choose_ranker

TEXT = ("Pumps are checked weekly. The qorvex valve leaks when the seal is worn out. "
        "Technicians replace the seal every spring before the season. Logs are kept for a year.")


def test_each_kind_takes_its_piece_out_of_the_positive():
    titles = ["Checking the pumps weekly", "", ""]
    texts = [TEXT, "## Storing fresh herbs\nWrap the herbs in a damp towel and keep them cold for a week.", TEXT]
    got = {p.pos: p for p in pseudo_queries(titles, texts, 10, seed=0, kinds=("title", "heading"))}
    assert got[0].kind == "title" and got[0].query == titles[0] and got[0].doc_text == TEXT
    assert got[1].kind == "heading" and got[1].query == "what about storing fresh herbs?"
    assert "Storing fresh herbs" not in got[1].doc_text and got[1].doc_text.startswith("Wrap the herbs")
    assert 2 not in got  # no title, no heading, and crops not asked for
    got = {p.pos: p for p in pseudo_queries(titles, texts, 10, seed=0)}
    assert got[2].kind == "crop" and got[2].query in TEXT and got[2].query not in got[2].doc_text
    assert got[2].query != "Pumps are checked weekly."  # never the first sentence of a longer text
    assert 5 <= len(got[2].query.split()) <= 30
    assert pseudo_queries(titles, texts, 10, seed=0) == pseudo_queries(titles, texts, 10, seed=0)
    assert len(pseudo_queries(titles, texts, 2, seed=0)) == 2
    assert pseudo_queries(["", ""], ["One sentence only here.", ""], 5, seed=0) == []  # nothing would be left
    with pytest.raises(ValueError, match="unknown pseudo-query kinds"):
        pseudo_queries(titles, texts, 3, seed=0, kinds=("title", "summary"))


def test_a_titled_corpus_gives_crops_too_not_its_titles_alone():
    """A title is the easiest query a document has: a titled corpus must not give titles alone."""
    titles = [f"Pump station number {i} checks" for i in range(200)]
    texts = [TEXT] * 200
    drawn = pseudo_queries(titles, texts, 200, seed=3)
    kinds = {k: sum(p.kind == k for p in drawn) for k in ("title", "crop")}
    assert len(drawn) == 200 and 70 <= kinds["title"] <= 130 and kinds["title"] + kinds["crop"] == 200
    for p in drawn:
        assert p.query not in p.doc_text  # whichever kind, its piece is out of its positive
    assert {p.kind for p in pseudo_queries(titles, texts, 50, seed=3, kinds=("title",))} == {"title"}


def test_ndcg_of_one_relevant_document_and_the_paired_interval():
    assert ndcg10_single(["a", "b"], "a") == 1.0
    assert ndcg10_single(["b", "a"], "a") == pytest.approx(1 / 1.5849625)
    assert ndcg10_single([str(i) for i in range(20)], "12") == 0.0
    lo, hi = paired_ci([1.0] * 30, [0.0] * 30)
    assert lo == hi == 1.0
    lo, hi = paired_ci([1, 0] * 20, [0, 1] * 20)
    assert lo < 0 < hi


def test_the_best_untrained_ranker_serves_unless_a_learned_one_beats_it_beyond_chance():
    dense, fusion, maxsim = [0.2, 0.4, 0.3], [0.5, 0.5, 0.5], [0.9, 0.8, 0.7]
    c = choose_ranker({"pooled_cosine": dense, "fusion": fusion, "maxsim": maxsim}, ci=paired_ci)
    assert c.ranker == "maxsim" and c.best_untrained == "maxsim" and c.margin == 0.0
    assert c.over_dense == pytest.approx(0.8 - 0.3) and c.over_dense_ci95[0] > 0
    assert "maxsim is the best untrained ranker" in c.reason and c.queries == 3

    learned = choose_ranker({"pooled_cosine": dense * 10, "fusion": fusion * 10, "maxsim": maxsim * 10,
                             "verifier:g": [1, 1, 0.7] * 10})
    assert learned.ranker == "verifier:g" and learned.margin == pytest.approx(0.9 - 0.8)
    assert learned.learned_ci95[0] > 0 and "95% CI" in learned.reason
    # ahead on the mean, but inside its interval: on 3 queries one of which it ties, chance cannot be ruled out
    lucky = choose_ranker({"pooled_cosine": dense, "fusion": fusion, "maxsim": maxsim, "verifier:g": [1, 1, 0.7]})
    assert lucky.ranker == "maxsim" and lucky.margin == 0.0 and lucky.learned_ci95[0] <= 0 < lucky.learned_ci95[1]
    assert "verifier:g leads it by +0.1000, inside its 95% interval" in lucky.reason
    mixed = [m + d for m, d in zip(maxsim * 20, [0.3, -0.25] * 30, strict=True)]  # +0.025 on the mean, noisy
    assert choose_ranker({"pooled_cosine": dense * 20, "fusion": fusion * 20, "maxsim": maxsim * 20,
                          "verifier:g": mixed}).ranker == "maxsim"
    tie = choose_ranker({"pooled_cosine": dense, "fusion": fusion, "maxsim": maxsim, "verifier:g": maxsim})
    assert tie.ranker == "maxsim" and "verifier:g does not beat it (+0.0000)" in tie.reason
    cheap = choose_ranker({"pooled_cosine": fusion, "fusion": fusion, "maxsim": fusion})
    assert cheap.ranker == "pooled_cosine"  # a tie keeps the cheapest
    with pytest.raises(ValueError, match="missing"):
        choose_ranker({"pooled_cosine": dense, "maxsim": maxsim})
