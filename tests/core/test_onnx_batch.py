"""The ONNX Runtime batch path for indexing: equal to the eager model (fp32), bucketing that keeps every
output at its input's position, int8 under its own key, and the choice of backend."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sidestep.config import EncoderConfig
from sidestep.text.encoder import AUTO_ONNX_MIN_DOCS, Encoder, encoder_key
from sidestep.text.onnx_batch import INT8_SCHEME, length_buckets

DOCS = [
    ("h-short", "Tides", "The moon pulls the sea."),
    ("h-mid", "Herons", "Grey herons nest in colonies in tall trees near water, and feed on fish. " * 3),
    ("h-long", "", " ".join(f"estuary{i % 37} reeds mill heron" for i in range(300))),
    ("h-tiny", "", "ok"),
]


def test_length_buckets_cover_every_position_once_longest_first_within_limits():
    rng = random.Random(0)
    lengths = [rng.randint(3, 256) for _ in range(500)]
    buckets = length_buckets(lengths, batch_size=32, max_tokens=2048)
    flat = [i for b in buckets for i in b]
    assert sorted(flat) == list(range(500))  # every position exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in buckets:
        assert len(b) <= 32
        assert len(b) == 1 or len(b) * lengths[b[0]] <= 2048  # padded tokens within the budget
    # short sequences run in bigger batches than long ones
    assert len(buckets[-1 if len(buckets[-1]) == 32 else -2]) > len(buckets[0])
    # without a token budget: fixed-size batches, as the eager path has always made them
    assert [len(b) for b in length_buckets(lengths, 32)][:-1] == [32] * (500 // 32)
    assert length_buckets([300, 5], 8, max_tokens=100) == [[0], [1]]  # a too-long sequence still runs alone
    with pytest.raises(ValueError):
        length_buckets([1], 0)


@pytest.fixture(scope="module")
def onnx_encoder():
    enc = Encoder(backend="onnx")
    assert enc.prepare_documents(len(DOCS)) == "onnx"
    return enc


@pytest.mark.slow
def test_onnx_documents_equal_the_eager_model(onnx_encoder, encoder):
    """fp32 ONNX chunk vectors are the torch path's to 1e-5, token vectors to float16 rounding, chunks
    the same; the graph is the fused one (attention, skip-layer-norm)."""
    assert encoder.prepare_documents(len(DOCS)) == "torch"  # the default backend (auto) on a small job
    assert {"Attention", "SkipLayerNormalization"} <= set(onnx_encoder._batch.fused)
    fast = onnx_encoder.encode_documents(DOCS, window_tokens=64, overlap_tokens=8)
    ref = encoder.encode_documents(DOCS, window_tokens=64, overlap_tokens=8)
    assert onnx_encoder.key == encoder.key == encoder_key(None)  # equal vectors share the store
    for f, r in zip(fast, ref, strict=True):
        assert f.content_hash == r.content_hash and f.chunks == r.chunks
        np.testing.assert_allclose(f.pooled, r.pooled, atol=1e-5)
        for tf, tr in zip(f.tokens, r.tokens, strict=True):
            assert tf.dtype == np.float16 and tf.shape == tr.shape
            np.testing.assert_allclose(tf.astype(np.float32), tr.astype(np.float32), atol=4e-3, rtol=2e-3)


@pytest.mark.slow
def test_onnx_hidden_states_equal_the_eager_model_on_a_padded_batch(onnx_encoder):
    import torch

    seqs = onnx_encoder.query_ids(["tides", "what causes the tides along the estuary at night and in spring"])
    width = max(map(len, seqs))
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    with torch.inference_mode():
        eager = onnx_encoder.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    fast = onnx_encoder._batch.hidden(ids.numpy(), mask.numpy())
    for r, s in enumerate(seqs):
        np.testing.assert_allclose(fast[r, :len(s)], eager.last_hidden_state[r, :len(s)].numpy(), atol=1e-5)


@pytest.mark.slow
def test_bucketed_onnx_batches_keep_every_output_at_its_input(onnx_encoder, encoder):
    """Sequences of many lengths in shuffled order, through token-bounded buckets: each output row is its
    own input's (the torch path, one sequence at a time, is the reference)."""
    rng = random.Random(1)
    words = ["heron", "tide", "reed", "mill", "estuary", "moon", "colony", "fish", "water", "night"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 90))) for _ in range(24)]
    seqs = [encoder.wrap_specials(encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    onnx_encoder.max_batch_tokens = 300  # many small buckets
    try:
        got, toks = onnx_encoder.encode_ids(seqs, want_tokens=True, role="document")
    finally:
        onnx_encoder.max_batch_tokens = 8192
    for i in rng.sample(range(len(seqs)), 6):
        ref, rtok = encoder.encode_ids([seqs[i]], want_tokens=True, role="document")
        np.testing.assert_allclose(got[i], ref[0], atol=1e-5)
        assert toks[i].shape == (len(seqs[i]), 384)


@pytest.mark.slow
def test_queries_never_take_the_batch_graph(onnx_encoder, encoder):
    np.testing.assert_allclose(onnx_encoder.encode_queries(["does the heron nest in reeds", "tides"]),
                               encoder.encode_queries(["does the heron nest in reeds", "tides"]), atol=1e-6)


@pytest.mark.slow
def test_auto_takes_onnx_for_large_jobs_only(onnx_encoder):
    onnx_encoder.backend = "auto"
    try:
        assert onnx_encoder.prepare_documents(AUTO_ONNX_MIN_DOCS - 1) == "torch"
        assert onnx_encoder.prepare_documents(AUTO_ONNX_MIN_DOCS) == "onnx"
    finally:
        onnx_encoder.backend = "onnx"


@pytest.mark.slow
def test_int8_vectors_are_close_but_stored_under_their_own_key(encoder):
    q8 = Encoder(backend="onnx", quantize="int8")
    assert q8.prepare_documents(1) == "onnx"
    assert q8.key == encoder_key(None, "int8") != encoder.key
    assert q8.key.endswith(f"-int8-{INT8_SCHEME}")  # vectors of another int8 scheme never share a cache
    # the first layer's products stay fp32 (the layer quantization moves most), every later layer is int8
    kept, quantized = q8._batch.kept_fp32, q8._batch.int8_products
    assert kept and all("/layer.0/" in n for n in kept)
    assert quantized == 5 * len(kept)  # the other five layers' products, each quantized
    fast = q8.encode_documents(DOCS)
    ref = encoder.encode_documents(DOCS)
    cos = np.concatenate([(f.pooled * r.pooled).sum(1) for f, r in zip(fast, ref, strict=True)])
    assert cos.min() > 0.97 and not np.allclose(cos, 1.0, atol=1e-4)  # quantized: close, not equal


def test_int8_needs_the_onnx_backend():
    assert EncoderConfig().backend == "auto" and EncoderConfig().quantize == "none"
    assert EncoderConfig(backend="onnx", quantize="int8").quantize == "int8"
    with pytest.raises(ValueError, match="needs backend"):
        EncoderConfig(backend="auto", quantize="int8")
    with pytest.raises(ValueError):
        EncoderConfig(backend="tensorrt")
