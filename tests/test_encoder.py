from __future__ import annotations

import numpy as np
import pytest

from sidestep.encoder import encoder_key, model_dim

pytestmark = pytest.mark.slow


def test_pooling_reproduces_sentence_transformers(encoder):
    texts = ["what causes tides", "A much longer sentence about the migration of herons along the estuary."]
    ours = encoder.encode_queries(texts)
    ref = encoder.st.encode(texts, normalize_embeddings=True)
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_documents_are_chunked_and_keep_token_embeddings(encoder):
    long_text = " ".join(f"word{i}" for i in range(400))
    docs = [("h-short", "Title", "short body"), ("h-long", "", long_text)]
    out = encoder.encode_documents(docs, window_tokens=64, overlap_tokens=8)
    short, long_ = out
    assert len(short.chunks) == 1 and len(long_.chunks) > 5
    # the single chunk of a short document is exactly the document's sentence embedding
    ref = encoder.st.encode(["Title short body"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(short.pooled[0], ref, atol=1e-5)
    for c, tok in zip(long_.chunks, long_.tokens, strict=True):
        assert tok.dtype == np.float16 and tok.shape == (c.tok_end - c.tok_start + 2, 384)
        assert c.tok_end - c.tok_start <= 62
    # chunk character spans point into the text the encoder read
    assert long_text[long_.chunks[1].char_start:long_.chunks[1].char_end].startswith("word")


def test_encoder_key_identifies_weights_without_loading(encoder):
    assert encoder_key(None) == encoder.key
    assert model_dim(None) == encoder.dim == 384


def test_encoding_long_documents_leaves_the_sentence_transformer_usable(encoder):
    long_text = "lorem ipsum " * 400
    encoder.encode_documents([("h", "", long_text)])
    assert encoder.st.encode([long_text]).shape == (1, 384)  # still truncates at max_seq_length
