"""Lookup tables, the sequence model and its training loops, on tiny planted data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidestep.ingest.records import Interaction
from sidestep.rec.data import build_splits, encode_history, popularity
from sidestep.rec.tables import (
    SeqConfig,
    SeqRec,
    history_mask,
    rank_metrics,
    target_ranks,
    trainable_parameters,
)
from sidestep.rec.training import (
    TrainConfig,
    _semi_synthetic,
    evaluate,
    fit_domain,
    popularity_ranks,
    pretrain,
    text_ranks,
)

TINY = SeqConfig(hidden=32, layers=1, heads=2, inner=32, dropout=0.1, max_history=8)


def _cycle_data(n_items: int = 24, users: int = 80, length: int = 7, seed: int = 0):
    """Users walk a fixed cycle of items (i -> i+1): the next item is fully determined by the last one."""
    rng = np.random.default_rng(seed)
    ids = [f"i{i}" for i in range(n_items)]
    rows = []
    for u in range(users):
        start = int(rng.integers(n_items))
        rows.append(Interaction(f"u{u}", tuple(ids[(start + t) % n_items] for t in range(length))))
    return ids, build_splits(rows, ids, max_history=TINY.max_history)


def _codes(n_items: int, positions: int = 4, codewords: int = 8, seed: int = 0) -> torch.Tensor:
    """Distinct codes per item, so that the tables can tell items apart."""
    rng = np.random.default_rng(seed)
    while True:
        c = rng.integers(0, codewords, (n_items, positions))
        if len({tuple(r) for r in c}) == n_items:
            return torch.from_numpy(c)


# ----------------------------------------------------------------------------- data


def test_leave_one_out_splits_of_whole_sequences():
    ids = ["a", "b", "c", "d", "e"]
    data = build_splits([Interaction("u", ("a", "b", "c", "d", "e"))], ids)
    idx = data.index_of()
    assert [int(t) for t in data.test.target] == [idx["e"]]
    assert list(data.test.history[0, :4]) == [idx[x] for x in "abcd"] and data.test.lengths[0] == 4
    assert [int(t) for t in data.valid.target] == [idx["d"]]
    assert sorted(int(t) for t in data.train.target) == [idx["b"], idx["c"]]


def test_recbole_rows_keep_their_split_and_unknown_items_are_counted_not_fatal():
    rows = [Interaction("u", ("a",), "b", "train"), Interaction("u", ("a", "b"), "c", "valid"),
            Interaction("u", ("a", "b", "zz"), "c", "test")]
    data = build_splits(rows, ["a", "b", "c"])
    assert (len(data.train), len(data.valid), len(data.test)) == (1, 1, 0)
    assert data.unknown == {"zz": 1}
    known, unknown = encode_history(["a", "nope", "c"], data.index_of())
    assert list(known) == [1, 3] and unknown == ["nope"]


def test_histories_keep_the_most_recent_items():
    ids = [str(i) for i in range(20)]
    data = build_splits([Interaction("u", tuple(ids[:12]), "12", "test")], ids + ["12"], max_history=5)
    assert list(data.test.history[0]) == [8, 9, 10, 11, 12] and data.test.lengths[0] == 5


# ----------------------------------------------------------------------------- metrics


def test_rank_metrics_agree_with_ir_measures():
    import ir_measures
    from ir_measures import Qrel, R, ScoredDoc, nDCG

    rng = np.random.default_rng(0)
    n_items, n_q = 60, 40
    scores = torch.from_numpy(rng.standard_normal((n_q, n_items)).astype(np.float32))
    target = torch.from_numpy(rng.integers(1, n_items + 1, n_q))
    ours = rank_metrics(target_ranks(scores, target).numpy(), ks=(10, 50))
    qrels = [Qrel(str(q), str(int(t)), 1) for q, t in enumerate(target)]
    run = [ScoredDoc(str(q), str(j + 1), float(scores[q, j])) for q in range(n_q) for j in range(n_items)]
    ref = ir_measures.calc_aggregate([R @ 10, nDCG @ 10, R @ 50, nDCG @ 50], qrels, run)
    assert ours["recall@10"] == pytest.approx(ref[R @ 10], abs=1e-9)
    assert ours["ndcg@10"] == pytest.approx(ref[nDCG @ 10], abs=1e-6)
    assert ours["recall@50"] == pytest.approx(ref[R @ 50], abs=1e-9)
    assert ours["ndcg@50"] == pytest.approx(ref[nDCG @ 50], abs=1e-6)


def test_ties_count_against_the_target_and_masking_never_hides_the_target():
    scores = torch.zeros(1, 5)
    assert int(target_ranks(scores, torch.tensor([3]))[0]) == 4  # a constant scorer ranks the target last
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    hist = torch.tensor([[1, 2, 3, 0]])  # items 1..3 in the history, target 3 is one of them
    assert int(target_ranks(scores, torch.tensor([3]))[0]) == 2
    assert int(target_ranks(scores, torch.tensor([3]), hist)[0]) == 0


def test_item_vectors_are_the_mean_of_their_code_embeddings():
    model = SeqRec(TINY, 4, 8, ["d"])
    codes = _codes(10)
    items = model.tables["d"].item_matrix(codes)
    table = model.tables["d"].table
    manual = torch.stack([table[torch.arange(4), c].mean(0) for c in codes])
    assert torch.allclose(items[1:], manual, atol=1e-6) and torch.equal(items[0], torch.zeros(32))


def test_history_mask_marks_exactly_the_history_items():
    m = history_mask(torch.tensor([[2, 4, 0], [1, 0, 0]]), 5)
    assert m.tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]


# ----------------------------------------------------------------------------- training


def test_scratch_training_learns_the_planted_sequences_far_beyond_popularity():
    ids, data = _cycle_data()
    codes = _codes(len(ids))
    torch.manual_seed(0)
    model = SeqRec(TINY, 4, 8, ["d"])
    res = fit_domain(model, "d", codes, data, "scratch", TrainConfig(epochs=40, batch_size=64, lr=5e-3,
                                                                     patience=40, warmup_steps=5))
    test, _ = evaluate(model, "d", codes, data.test)
    pop = rank_metrics(popularity_ranks(popularity(data), data.test))
    assert test["recall@10"] >= 0.9, (test, res.curve[-1])
    assert pop["recall@10"] < 0.6
    assert res.best_valid["ndcg@10"] == max(c["valid_ndcg@10"] for c in res.curve)


def test_table_only_fine_tuning_changes_nothing_but_the_domain_table():
    ids, data = _cycle_data(seed=1)
    codes = _codes(len(ids), seed=1)
    model = SeqRec(TINY, 4, 8, ["pre"])
    model.add_domain("new", init_from="pre")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_domain(model, "new", codes, data, "table-only", TrainConfig(epochs=3, batch_size=64, lr=1e-2,
                                                                    warmup_steps=1))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "table-only training changed nothing"
    assert all(k.startswith("tables.new.") for k in changed), changed
    assert "tables.new.table" in changed
    own = {id(p) for p in trainable_parameters(model, "new", "table-only")}
    assert own == {id(p) for p in model.tables["new"].parameters()}


def test_the_repeat_bias_learns_to_go_negative_when_users_never_repeat():
    ids, data = _cycle_data(seed=2)
    model = SeqRec(TINY, 4, 8, ["d"])
    fit_domain(model, "d", _codes(len(ids), seed=2), data, "scratch", TrainConfig(epochs=5, batch_size=64, lr=1e-2,
                                                                                  warmup_steps=1))
    assert model.encoder.repeat.item() < -0.05


def test_mixed_domain_pretraining_lowers_the_loss_and_trains_both_tables():
    ids_a, data_a = _cycle_data(seed=3)
    ids_b, data_b = _cycle_data(n_items=18, seed=4)
    model = SeqRec(TINY, 4, 8, ["a", "b"])
    before = {d: model.tables[d].table.detach().clone() for d in ("a", "b")}
    res = pretrain(model, {"a": (_codes(len(ids_a), seed=3), data_a), "b": (_codes(len(ids_b), seed=4), data_b)},
                   TrainConfig(epochs=8, batch_size=64, lr=5e-3, warmup_steps=2, patience=8))
    assert res.curve[-1]["loss"] < res.curve[0]["loss"]
    assert all(not torch.equal(before[d], model.tables[d].table) for d in ("a", "b"))


def test_semi_synthetic_negatives_replace_about_the_requested_share_of_positions():
    codes = torch.zeros(2000, 8, dtype=torch.long)
    fake = _semi_synthetic(codes, 256, 0.5, 1, np.random.default_rng(0))
    changed = (fake != codes).float().mean().item()
    assert 0.45 < changed < 0.5  # half replaced, 1/256 of those by the same codeword


def test_text_zero_shot_ranks_by_cosine_to_the_history():
    emb = np.array([[0, 0, 0], [1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 1, 0]], np.float32)  # row 0 unused
    data = build_splits([Interaction("u", ("a",), "b", "test")], ["a", "b", "c", "d"])
    assert int(text_ranks(emb, data.test)[0]) == 1  # the history item a itself is nearest, b next
    assert int(text_ranks(emb, data.test, masked=True)[0]) == 0


def test_code_alignment_through_the_recommendation_loss_recovers_a_planted_permutation():
    from sidestep.rec.align import apply_permutation, random_permutation, recovery, used_codewords
    from sidestep.rec.training import fit_code_alignment

    ids, data = _cycle_data(seed=5)
    codes = _codes(len(ids), seed=5)
    torch.manual_seed(0)
    model = SeqRec(TINY, 4, 8, ["d"])
    fit_domain(model, "d", codes, data, "scratch", TrainConfig(epochs=30, batch_size=64, lr=5e-3, patience=30,
                                                               warmup_steps=5))
    planted = random_permutation(4, 8, seed=11)  # old codeword c -> new codeword planted[d, c]
    new_codes = torch.from_numpy(np.take_along_axis(planted, codes.numpy().T, axis=1).T)
    truth = np.argsort(planted, axis=1)
    used = used_codewords(new_codes.numpy(), 8)
    align, curve = fit_code_alignment(model, "d", new_codes, data, steps=150, batch_size=64, lr=0.1)
    learned = align.permutation()
    table = model.tables["d"].table.detach()

    def ndcg(perm):
        return evaluate(model, "d", new_codes, data.test, table=apply_permutation(table, perm))[0]["ndcg@10"]

    ident, rand = np.tile(np.arange(8), (4, 1)), random_permutation(4, 8, seed=3)
    assert recovery(learned, truth, used) >= 0.8, recovery(learned, truth, used)
    assert recovery(learned, truth, used) > max(recovery(ident, truth, used), recovery(rand, truth, used)) + 0.4
    assert ndcg(learned) > max(ndcg(ident), ndcg(rand)) + 0.2
    assert curve[-1] < curve[0]


# ----------------------------------------------------------------------------- text fusion


def _next_item_text(n_items: int) -> np.ndarray:
    """Item j's text mentions j and j+1 (mod n): on the cycle data the next item shares text with the last
    one, so the text cosine ranks it near the top (behind the history's own items)."""
    eye = np.eye(n_items, dtype=np.float32)
    return eye + np.roll(eye, 1, axis=1)


def test_text_fusion_weight_is_chosen_on_valid_where_the_text_helps():
    from sidestep.rec.tables import unit_text
    from sidestep.rec.training import choose_text_weight

    ids, data = _cycle_data()
    codes = _codes(len(ids))
    torch.manual_seed(0)
    model = SeqRec(TINY, 4, 8, ["d"])  # untrained: its codes rank at random
    text = unit_text(_next_item_text(len(ids)))
    fusion, by_weight = choose_text_weight(model, "d", codes, text, data.valid, (1, 4, 16), decay=0.1)
    assert fusion.weight > 0 and set(by_weight) == {(w, 0.0) for w in (0.0, 1.0, 4.0, 16.0)}
    assert by_weight[(fusion.weight, 0.0)] > by_weight[(0.0, 0.0)] + 0.3
    valid, _ = evaluate(model, "d", codes, data.valid, text=text, fusion=fusion)
    assert valid["ndcg@10"] == pytest.approx(by_weight[(fusion.weight, 0.0)])
    model.fusion["d"] = fusion  # evaluate reads the domain's fusion; without text it scores the codes alone
    assert evaluate(model, "d", codes, data.test, text=text)[0]["recall@10"] > \
        evaluate(model, "d", codes, data.test)[0]["recall@10"] + 0.3


def test_text_fusion_stays_off_when_the_text_only_hurts_and_one_inner_product_serves_the_fused_logit():
    from sidestep.rec.tables import TextFusion, fused_item_vectors, fused_query, text_user_vectors, unit_text
    from sidestep.rec.training import choose_text_weight

    ids, data = _cycle_data()
    codes = _codes(len(ids))
    torch.manual_seed(0)
    model = SeqRec(TINY, 4, 8, ["d"])
    fit_domain(model, "d", codes, data, "scratch", TrainConfig(epochs=30, batch_size=64, lr=5e-3, patience=30,
                                                               warmup_steps=5))
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((len(ids), 16)).astype(np.float32)
    noise_prior = torch.from_numpy(3 * rng.standard_normal(len(ids)).astype(np.float32))
    fusion, by_weight = choose_text_weight(model, "d", codes, unit_text(noise), data.valid, (1, 4, 16),
                                           prior=noise_prior, prior_weights=(0.5, 1.5))
    assert (fusion.weight, fusion.popularity) == (0.0, 0.0)
    assert by_weight[(0.0, 0.0)] > max(by_weight[(16.0, 0.0)], by_weight[(0.0, 1.5)])

    model.eval()
    model.fusion["d"] = TextFusion(weight=2.5, decay=0.5, popularity=0.7)
    text = unit_text(noise)
    hist, lengths = torch.from_numpy(data.test.history[:5]), torch.from_numpy(data.test.lengths[:5])
    with torch.no_grad():
        items = model.tables["d"].item_matrix(codes)
        user = model.user_vectors("d", items, hist, lengths)
        tuser = text_user_vectors(text, hist, lengths, 0.5)
        want = model.scores(user, items) + 2.5 * tuser @ text[1:].T + 0.7 * noise_prior
    got = fused_query(model, "d", user, tuser) @ fused_item_vectors(model, "d", codes.numpy(), noise,
                                                                    noise_prior.numpy()).T
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_the_popularity_prior_is_chosen_on_valid_where_what_users_buy_next_is_skewed():
    from sidestep.rec.tables import item_prior, unit_text
    from sidestep.rec.training import choose_text_weight

    rng = np.random.default_rng(5)
    ids = [f"i{i}" for i in range(24)]
    zipf = 1.0 / np.arange(1, 25) ** 1.5
    rows = [Interaction(f"u{u}", tuple(ids[j] for j in rng.choice(24, 6, p=zipf / zipf.sum())))
            for u in range(120)]
    data = build_splits(rows, ids, max_history=TINY.max_history)
    codes = _codes(len(ids))
    torch.manual_seed(0)
    model = SeqRec(TINY, 4, 8, ["d"])  # untrained: its codes rank at random; the training counts do not
    prior = item_prior(popularity(data))  # from the training split only
    text = unit_text(np.random.default_rng(1).standard_normal((len(ids), 8)).astype(np.float32))
    fusion, by_weight = choose_text_weight(model, "d", codes, text, data.valid, (), prior=prior,
                                           prior_weights=(0.5, 1, 4))
    assert fusion.weight == 0.0 and fusion.popularity > 0
    assert by_weight[(0.0, fusion.popularity)] > by_weight[(0.0, 0.0)] + 0.1
    model.fusion["d"] = fusion
    assert evaluate(model, "d", codes, data.test, text=text, prior=prior)[0]["ndcg@10"] > \
        evaluate(model, "d", codes, data.test)[0]["ndcg@10"] + 0.1
