"""The verifier's parts on tiny inline data: map features, lexical features, masks, losses, and a
planted problem it must learn (recall scores are noise there; the evidence is in the token maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidestep.eval.metrics import ndcg_of_scores
from sidestep.text.lexical import BM25, rrf
from sidestep.verify.candidates import cascade, idf_table, prepare, prescore
from sidestep.verify.features import (
    N_TOKEN_FEATURES,
    FlatTokens,
    flat_maxsim,
    flatten_tokens,
    lexical_features,
    lexical_features_flat,
    map_features,
    maxsim,
    token_features,
    token_maps,
)
from sidestep.verify.model import (
    Example,
    Verifier,
    VerifierConfig,
    choose_verify_top,
    collate,
    fit,
    listwise_loss,
    n_parameters,
    score,
    served_rows,
    train_logits,
    val_ndcg10,
)
from sidestep.verify.nearmiss import KINDS, content_words, near_misses


def pad_docs(docs, max_tokens):
    """Reference: every document's tokens padded into one (C, L, d) tensor of unit vectors."""
    lengths = [min(len(d), max_tokens) for d in docs]
    out = torch.zeros((len(docs), max(max(lengths), 1), docs[0].shape[1]))
    mask = torch.zeros(out.shape[:2], dtype=torch.bool)
    for i, (d, n) in enumerate(zip(docs, lengths, strict=True)):
        out[i, :n] = torch.from_numpy(np.asarray(d[:n], dtype=np.float32))
        mask[i, :n] = True
    return torch.nn.functional.normalize(out, dim=-1), mask


def similarity(q, docs):
    return torch.einsum("qd,cld->cql", q, docs)


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_map_features_see_which_query_token_matched_where():
    rng = np.random.default_rng(0)
    q = unit(rng, 3)
    doc = np.concatenate([unit(rng, 5), q[1:2], unit(rng, 2)])  # query token 1 sits at position 5 of 8
    dt, mask = pad_docs([doc], 16)
    sim = similarity(torch.from_numpy(q), dt)
    f = map_features(sim, mask)
    assert f.shape == (1, 3, N_TOKEN_FEATURES - 3)
    assert f[0, 1, 0] == pytest.approx(1.0, abs=1e-5)  # best match of the planted token
    assert f[0, 1, -2] == pytest.approx(5 / 8)  # ... and where it is
    assert float(f[0, 0, 0]) < 0.99
    # MaxSim is the sum of the per-token maxima, padding ignored
    ref = (q @ doc.T).max(1).sum()
    assert float(maxsim(sim, mask)[0]) == pytest.approx(float(ref), abs=1e-5)


def test_flat_token_maps_equal_padded_ones():
    rng = np.random.default_rng(5)
    q = torch.from_numpy(unit(rng, 4))
    docs = [rng.normal(size=(n, 16)).astype(np.float16) for n in (7, 0, 30, 12)]
    sim, mask = token_maps(q, docs, 20)  # one document is cut at 20 tokens, one is empty
    dt, ref_mask = pad_docs(docs, 20)
    ref = similarity(q, dt)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sim * mask[:, None], ref * ref_mask[:, None], atol=1e-5, rtol=1e-5)


def test_flat_features_equal_the_padded_reference():
    """The verify stage's fast path (kernels over real tokens, summed per document) must give the
    features the padded reference gives, including tied best matches, empty and capped documents."""
    rng = np.random.default_rng(7)
    q = torch.from_numpy(unit(rng, 5))
    base = rng.normal(size=(40, 16)).astype(np.float32)
    docs = [base[rng.integers(0, 40, n)] for n in (9, 0, 33, 3, 25)]  # repeated rows: exact ties
    docs[2][4] = q[2].numpy() * 3  # a near-exact match, for the sharp kernel at 1.0
    sim, mask = token_maps(q, docs, 20)
    ref = map_features(sim, mask)
    feats, ms, lengths = token_features(q, flatten_tokens(docs, 20))
    torch.testing.assert_close(feats, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ms, maxsim(sim, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat_maxsim(q, flatten_tokens(docs, 20)), maxsim(sim, mask), atol=1e-5, rtol=1e-5)
    assert lengths.tolist() == [9, 0, 20, 3, 20]
    capped = flatten_tokens(docs, 30).capped(20)  # capping a flat matrix keeps each document's first tokens
    assert capped.lengths.tolist() == [9, 0, 20, 3, 20]
    np.testing.assert_array_equal(capped.vecs, flatten_tokens(docs, 20).vecs)
    ids = [rng.integers(0, 12, n) for n in (30, 0, 7, 50, 1)]
    idf = idf_table(ids, vocab_size=12)
    qids = [3, 5, 3, 11]
    torch.testing.assert_close(lexical_features_flat(qids, ids, idf), lexical_features(qids, ids, idf))
    with pytest.raises(ValueError, match="idf table"):  # an id outside the vocabulary is refused, not read
        lexical_features_flat([3, 12], ids, idf)
    # document pieces outside the vocabulary count for nothing; stored int32 pieces count like int64 ones
    odd = [np.array([99, 3, -1, 3], np.int32), *[i.astype(np.int32) for i in ids]]
    torch.testing.assert_close(lexical_features_flat(qids, odd, idf), lexical_features(qids, odd, idf))
    assert isinstance(flatten_tokens([], 5), FlatTokens)


def test_lexical_features_count_query_pieces_in_each_document():
    idf = idf_table([[1, 2], [2, 3], [2]], vocab_size=5)
    assert idf[2] < idf[1] == idf[3] and idf[4] > idf[1]  # common piece < rarer piece < unseen piece
    f = lexical_features([1, 2], [np.array([1, 1, 2]), np.array([3])], idf)
    assert f.shape == (2, 2, 3)
    assert f[0, 0, 1] == pytest.approx(np.log1p(2)) and f[0, 0, 2] == 1
    assert f[1, 0, 2] == 0 and f[1, 1, 2] == 0
    assert f[0, 0, 0] == pytest.approx(idf[1] / 10)


def _cands(rng, n_q=4, n_docs=6, planted=0, dim=16):
    q = unit(rng, n_q, dim)
    docs = [unit(rng, 10, dim) for _ in range(n_docs)]
    docs[planted][:n_q] = q  # the relevant document holds the query's tokens
    pieces = [np.arange(10) + 100 for _ in range(n_docs)]
    recall = rng.normal(size=n_docs).astype(np.float32)  # recall scores are noise here
    return prepare(torch.from_numpy(q), list(range(n_q)), docs, pieces, np.ones(200, np.float32), recall, 64)


def test_padding_does_not_change_a_query_score():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    model = Verifier(VerifierConfig(width=32, ff=64), 16).eval()
    short, long_ = _cands(rng, n_q=2), _cands(rng, n_q=6)
    alone = score(model, [short])[0]
    together = score(model, [short, long_])  # scored in one call, each at its own length
    np.testing.assert_allclose(alone, together[0], atol=1e-5)
    np.testing.assert_allclose(score(model, [long_])[0], together[1], atol=1e-5)
    other = _cands(rng, n_q=2)  # same length as short: both share one forward pass
    shared = score(model, [short, other])
    np.testing.assert_allclose(alone, shared[0], atol=1e-5)
    np.testing.assert_allclose(score(model, [other])[0], shared[1], atol=1e-5)
    with torch.inference_mode():  # in one padded batch (as `collate` makes it), short is padded to 6 tokens
        feats, qtok, qmask, glob, _ = collate([short, long_], model)
        padded = model(feats, qtok, qmask, glob, projected=True)[:6]
        full = model.encoder(torch.cat([model.cls_in(glob)[:, None, :], model.tok_in(torch.cat(
            [feats, qtok], -1)) + model.pos(torch.arange(6))[None]], 1), src_key_padding_mask=torch.cat(
            [torch.zeros_like(qmask[:, :1]), ~qmask], 1))[:, 0]  # every position of every layer
        ref = model.head(model.norm(full)).squeeze(-1) + model.skip(glob).squeeze(-1)
        fast = model(feats, qtok, qmask, glob, projected=True)  # the last layer for [CLS] only
    np.testing.assert_allclose(alone, padded.numpy(), atol=1e-5)
    np.testing.assert_allclose(ref.numpy(), fast.numpy(), atol=1e-5)
    assert n_parameters(model) < 2_000_000


def test_training_logits_and_gradients_equal_the_padded_full_encoder():
    """Training runs queries of one length together without padding, and the last layer for [CLS] only;
    without dropout its logits and every gradient must equal the padded batch through every position of every
    layer, and with dropout the [CLS] path must still be dropped out (training logits vary between calls)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    items = [_cands(rng, n_q=3), _cands(rng, n_q=6, n_docs=4), _cands(rng, n_q=3, n_docs=5), _cands(rng, n_q=1)]
    model = Verifier(VerifierConfig(width=32, ff=64, dropout=0.0), 16).train()
    feats, qtok, qmask, glob, _ = collate(items, model)
    pad = torch.cat([torch.zeros_like(qmask[:, :1]), ~qmask], 1)
    x = model.inputs(feats, model.query_term(qtok, projected=True), glob)
    ref = model.readout(model.encoder(x, src_key_padding_mask=pad)[:, 0], glob)
    ref.square().sum().backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    got = train_logits(model, items)
    got.square().sum().backward()
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), atol=1e-5)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), want[k].numpy(), atol=1e-5, err_msg=k)
    # one layer: the [CLS]-only path is the whole encoder, so only its own dropout can vary the logits
    dropped = Verifier(VerifierConfig(width=32, ff=64, dropout=0.5, layers=1), 16).train()
    assert not torch.allclose(train_logits(dropped, items), train_logits(dropped, items))
    dropped.eval()
    np.testing.assert_allclose(train_logits(dropped, items).detach().numpy(),
                               np.concatenate(score(dropped, items)), atol=1e-5)


def test_losses_send_gradient_to_every_part():
    rng = np.random.default_rng(2)
    model = Verifier(VerifierConfig(width=32, ff=64), 16)
    c = _cands(rng)
    feats, qtok, qmask, glob, sizes = collate([c])
    logits = model(feats, qtok, qmask, glob)
    labels = torch.zeros(len(logits), dtype=torch.bool)
    labels[0] = True
    listwise_loss(logits, labels, sizes).backward()
    for name, p in model.named_parameters():
        if p.requires_grad and "pos" not in name:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_the_verifier_learns_a_planted_problem_that_recall_misses():
    rng = np.random.default_rng(3)
    train = []
    for _ in range(60):
        c = _cands(rng, planted=int(rng.integers(6)))
        lab = torch.zeros(6, dtype=torch.bool)
        lab[int(torch.argmax(c.maxsim))] = True
        train.append(Example(c, lab))
    val, recall_ndcg = [], []
    for _ in range(20):
        p = int(rng.integers(6))
        c = _cands(rng, planted=p)
        gains = np.zeros(6, np.float32)
        gains[p] = 1
        val.append((c, gains))
        recall_ndcg.append(ndcg_of_scores(c.glob[:, 0].numpy(), gains))
    model, curve = fit(train, val, VerifierConfig(width=32, ff=64), 16, epochs=15, lr=3e-3, patience=15)
    learned = np.mean([ndcg_of_scores(s, g) for s, (_, g) in zip(score(model, [c for c, _ in val]), val, strict=True)])
    assert learned > 0.95 > np.mean(recall_ndcg) + 0.2
    assert curve[0]["loss"] > curve[-1]["loss"]


def test_near_misses_change_what_the_query_asks_about():
    q = "Does aspirin increase the risk of bleeding in adults?"
    text = "Aspirin is associated with increased bleeding risk in adults. The effect was 12 percent."
    out = near_misses(q, text, n=5, seed=0)
    assert {m.kind for m in out} <= set(KINDS) and len(out) >= 4
    assert all(m.text != text for m in out) and len({m.text for m in out}) == len(out)
    by = {m.kind: m for m in out}
    assert "decreased" in by["antonym"].text or "Aspirin is not" in by.get("negation", by["antonym"]).text
    assert by["number"].text != text and "12" not in by["number"].text
    assert near_misses(q, text, n=5, seed=0) == out  # reproducible
    assert near_misses("x", "", n=3) == []
    assert "aspirin" in content_words(q) and "the" not in content_words(q)


def test_antonyms_of_query_words_come_first():
    out = near_misses("intramolecular priming of BC1 RNA", "BC1 RNA primes in an intramolecular fashion.", n=1)
    assert out[0].kind == "antonym" and "intermolecular" in out[0].text


def test_bm25_and_rrf_on_inline_data():
    bm = BM25(["a", "b", "c"], ["cats chase mice", "dogs chase cats and cats", "the stock market"])
    hits = bm.search(["cats"], 3)[0]
    assert [d for d, _ in hits] == ["b", "a"]  # "c" does not match at all
    fused = rrf([["a", "b"], ["b", "c"]], 3, c=60)
    assert fused[0][0] == "b" and fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_pq_codes_are_scored_like_their_decoded_vectors():
    """Scoring PQ codes through lookup tables must equal scoring the decoded vectors: cosines,
    features and MaxSim."""
    import faiss

    rng = np.random.default_rng(11)
    train = unit(rng, 3000, 16)
    codec = faiss.IndexPQ(16, 4, 8)
    codec.train(train)
    docs = [unit(rng, n, 16) for n in (12, 0, 30, 5, 70, 61)]  # 178 tokens: blocks of 64, 64 and 50
    lengths = np.asarray([len(d) for d in docs], np.int64)
    codes = codec.sa_encode(np.concatenate(docs))
    cent = faiss.vector_to_array(codec.pq.centroids).reshape(4, 256, 4)
    coded = FlatTokens(None, lengths, codes, cent)
    decoded = FlatTokens(codec.sa_decode(codes), lengths)
    np.testing.assert_array_equal(coded.vectors(), decoded.vecs)
    q = torch.from_numpy(unit(rng, 3, 16))
    torch.testing.assert_close(coded.cosines(q), decoded.cosines(q), atol=1e-5, rtol=1e-5)
    for a, b in zip(token_features(q, coded.capped(20)), token_features(q, decoded.capped(20)), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert coded.capped(20).lengths.tolist() == [12, 0, 20, 5, 20, 20] and coded.capped(20).codes.shape == (77, 4)
    torch.testing.assert_close(flat_maxsim(q, coded), flat_maxsim(q, decoded), atol=1e-5, rtol=1e-5)


def _list(rng, n_docs=30, n_q=5, dim=16):
    q = torch.from_numpy(unit(rng, n_q, dim))
    docs = [unit(rng, int(n), dim) for n in rng.integers(1, 40, n_docs)]
    pieces = [rng.integers(0, 50, len(d)) for d in docs]
    return q, docs, pieces, idf_table(pieces, 50), rng.normal(size=n_docs).astype(np.float32)


def test_verifying_the_prescore_top_keeps_their_scores_and_orders_the_rest_below():
    """verify_top: only the list's top by prescore get map features and a model score, and those
    equal the whole list's; the rest follow below every verified row, in prescore order."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    model = Verifier(VerifierConfig(width=32, ff=64), 16).eval()
    q, docs, pieces, idf, rec = _list(rng)
    qids = [3, 7, 7, 11, 40]
    whole = prepare(q, qids, docs, pieces, idf, rec, 24)
    part = prepare(q, qids, docs, pieces, idf, rec, 24, verify_top=8)
    prior = prescore(whole.glob).numpy()
    top = np.sort(np.argsort(-prior, kind="stable")[:8])
    assert whole.rows is None and part.rows.tolist() == top.tolist() and part.feats.shape[0] == 8
    torch.testing.assert_close(part.glob, whole.glob[top])
    torch.testing.assert_close(part.feats, whole.feats[top])  # the same token rows were gathered
    torch.testing.assert_close(part.prior, whole.glob[:, [1, 3, 5, 7]].sum(-1))
    full, partial = score(model, [whole])[0], score(model, [part])[0]
    assert partial.shape == full.shape == (30,)
    np.testing.assert_allclose(partial[top], full[top], atol=1e-5)
    rest = np.setdiff1d(np.arange(30), top)
    assert partial[rest].max() < partial[top].min()
    assert np.argsort(-partial[rest], kind="stable").tolist() == np.argsort(-prior[rest], kind="stable").tolist()
    assert prepare(q, qids, docs, pieces, idf, rec, 24, verify_top=30).rows is None  # the whole list anyway
    # verified documents all shorter than the top-k width (3) while others are longer: the same features
    both = np.stack([q.numpy()[:3].sum(0), q.numpy()[3:].sum(0)])  # two tokens close to every query token
    short = [both + 0.01 * i for i in range(3)] + [unit(rng, 30, 16) for _ in range(5)]
    srec = np.asarray([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1], np.float32)
    spieces = [np.array(qids) for _ in range(3)] + [rng.integers(42, 50, 30) for _ in range(5)]
    whole_s = prepare(q, qids, short, spieces, idf, srec, 24)
    part_s = prepare(q, qids, short, spieces, idf, srec, 24, verify_top=3)
    assert part_s.rows.tolist() == [0, 1, 2]
    torch.testing.assert_close(part_s.feats, whole_s.feats[:3])
    with pytest.raises(ValueError, match="served_rows"):  # training lists do not take the serving shortcut
        prepare(q, qids, docs, pieces, idf, rec, 24, n_list=20, verify_top=8)
    np.testing.assert_array_equal(cascade(prior, full, 0), full)


def test_verify_top_is_the_smallest_that_keeps_validation_ndcg():
    """One validation list whose only relevant document is the model's favourite: a choice reaches the
    whole list's nDCG@10 exactly when that document is inside its prescore top."""
    torch.manual_seed(5)
    rng = np.random.default_rng(9)
    model = Verifier(VerifierConfig(width=32, ff=64), 16).eval()
    q, docs, pieces, idf, rec = _list(rng, n_docs=60)
    c = prepare(q, [3, 7, 11, 20, 41], docs, pieces, idf, rec, 24)
    best = int(np.argmax(score(model, [c])[0]))
    gains = np.zeros(60, np.float32)
    gains[best] = 1
    rank = int(np.argsort(-prescore(c.glob).numpy(), kind="stable").tolist().index(best))
    assert 10 <= rank < 50  # this seed's favourite sits mid-list, so both sides of the choice are tested
    chosen, by = choose_verify_top(model, [(c, gains)], choices=range(1, 60))
    assert by[0] == 1.0 and chosen == rank + 1 and by[chosen] == 1.0
    assert all(by[k] < 1.0 for k in range(1, rank + 1))
    assert choose_verify_top(model, []) == (0, {})
    # no relevant document: every choice ties with the whole list, so the smallest is taken
    assert choose_verify_top(model, [(c, np.zeros(60, np.float32))], choices=(10, 20))[0] == 10


def test_training_lists_are_what_the_verify_stage_serves():
    """served_rows keeps the recall list's pre-score top, the near-misses of the positives kept, and
    drops what serving never shows the model: the list's bottom and positives that recall missed."""
    rng = np.random.default_rng(3)
    q, docs, pieces, idf, rec = _list(rng, n_docs=24)
    c = prepare(q, [3, 7, 11, 20, 41], docs, pieces, idf, rec, 24, n_list=20)  # rows 20-23 added for training
    prior = prescore(c.glob[:20]).numpy()
    order = np.argsort(-prior, kind="stable")
    inside, outside = int(order[2]), int(order[15])
    labels = torch.zeros(24, dtype=torch.bool)
    labels[[inside, outside, 20]] = True  # row 20: a positive recall missed
    pairs = torch.tensor([[inside, 22], [outside, 23]])  # rows 22, 23: their near-misses
    ex = served_rows(Example(c, labels, pairs), 8, 20)
    kept = sorted(order[:8].tolist() + [22])
    torch.testing.assert_close(ex.cands.glob, c.glob[kept])
    assert ex.labels.tolist() == [r == inside for r in kept]
    assert ex.pairs.tolist() == [[kept.index(inside), kept.index(22)]]
    lonely = torch.zeros(24, dtype=torch.bool)
    lonely[[outside, 20]] = True
    assert served_rows(Example(c, lonely), 8, 20) is None  # no positive in the served top: no list


def test_validation_can_score_lists_as_the_verify_stage_serves_them():
    """A model trained on served rows (the pre-score top) is validated on the same view: with val_top only the
    pre-score top is scored, so a list whose relevant document the model favours but serving never shows it
    counts as served (fine-tuning's epoch 0 included), not as the whole list would score it."""
    torch.manual_seed(5)
    rng = np.random.default_rng(9)
    model = Verifier(VerifierConfig(width=32, ff=64), 16).eval()
    q, docs, pieces, idf, rec = _list(rng, n_docs=60)
    c = prepare(q, [3, 7, 11, 20, 41], docs, pieces, idf, rec, 24)
    full = score(model, [c])[0]
    best = int(np.argmax(full))
    gains = np.zeros(60, np.float32)
    gains[best] = 1
    prior = prescore(c.glob).numpy()
    assert int(np.argsort(-prior, kind="stable").tolist().index(best)) >= 8  # outside the served top 8
    served = ndcg_of_scores(cascade(prior, full, 8), gains)
    assert val_ndcg10(model, [(c, gains)]) == 1.0 and served < 1.0
    assert val_ndcg10(model, [(c, gains)], 8) == pytest.approx(served)
    assert val_ndcg10(model, [(prepare(q, [3, 7, 11, 20, 41], docs, pieces, idf, rec, 24, verify_top=8), gains)],
                      8) == pytest.approx(served)  # a list already prepared as served is not cascaded twice
    ex = Example(c, torch.tensor(gains > 0))
    _, curve = fit([ex], [(c, gains)], VerifierConfig(width=32, ff=64), 16, epochs=1, init=model, val_top=8)
    assert curve[0]["epoch"] == 0 and curve[0]["val_ndcg10"] == pytest.approx(served)
