from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sidestep.text.encoder import encoder_key, model_dim

REPO = Path(__file__).resolve().parents[2]

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


def test_the_onnx_single_query_path_equals_the_eager_model(encoder):
    """Serving encodes one query at a time through an ONNX Runtime session (exported on another
    length): its pooled and token vectors must be the eager model's, for short and long queries, and a
    padded batch must still take the eager path."""
    import torch

    session = encoder._onnx_session()
    queries = ["tides", "what causes the tides along the estuary at night",
               " ".join(["herons nest in the reeds near the old mill"] * 20)]  # past max_query_tokens
    for q in queries:
        ids = torch.tensor(encoder.query_ids([q]))
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            eager = encoder.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        fast = torch.from_numpy(session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0])
        assert fast.shape == (1, len(encoder.query_ids([q])[0]), 384)
        torch.testing.assert_close(fast, eager.last_hidden_state, atol=1e-5, rtol=1e-4)

    class Counted:
        calls = 0

        def run(self, *args):
            self.calls += 1
            return session.run(*args)

    before, counted = encoder._single, Counted()
    try:
        encoder._single = counted
        pooled, tokens = encoder.encode_queries_with_tokens(queries)  # a padded batch: eager
        assert counted.calls == 0
        one, one_tok = encoder.encode_queries_with_tokens(queries[1:2])  # one query: the session
        assert counted.calls == 1
    finally:
        encoder._single = before
    ref = encoder.st.encode(queries[:2], normalize_embeddings=True)  # the third is cut at max_query_tokens
    np.testing.assert_allclose(pooled[:2], ref, atol=1e-5)
    np.testing.assert_allclose(one[0], ref[1], atol=1e-5)
    np.testing.assert_allclose(one_tok[0].astype(np.float32), tokens[1].astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("first", ["sidestep", "nothing"])
def test_the_encoders_onnx_path_keeps_onnx_runtime_from_phoning_home(tmp_path, first):
    """ONNX Runtime's Linux builds upload telemetry and write a device id in the user's cache once an
    ONNX Runtime environment starts, unless ORT_DISABLE_TELEMETRY is set before the import: the encoder
    module (the one that imports onnxruntime) sets it when it is imported, and the search replica's ONNX
    query encoder (Encoder(fast_single=True)) must then leave no trace. The device id file is the witness;
    with onnxruntime used directly (the control) it must appear, or the check would prove nothing."""
    import subprocess
    import sys

    if first == "sidestep":
        body = """
            import sys
            import sidestep
            assert "ORT_DISABLE_TELEMETRY" not in os.environ, "import sidestep alone must not set it"
            from sidestep.text.encoder import Encoder
            assert "onnxruntime" not in sys.modules  # set before onnxruntime is first imported
            before = os.environ.get("ORT_DISABLE_TELEMETRY")
            enc = Encoder(fast_single=True)
            assert enc._single is not None
            vec, _ = enc.encode_queries_with_tokens(["does the heron nest in reeds"])  # one query: ONNX
            assert vec.shape == (1, enc.dim)
            print(before)
        """
    else:
        body = """
            import onnxruntime as ort
            from onnx import TensorProto, helper
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
            g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            print(os.environ.get("ORT_DISABLE_TELEMETRY"))
        """
    script = "import os\n" + textwrap.dedent(body)
    # a bare environment: ONNX Runtime also keeps quiet where it sees a CI marker (CI, GITHUB_ACTIONS, ...),
    # which would silence the control on a build machine
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / ".cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    if first == "sidestep":
        assert out.stdout.strip().splitlines()[-1] == "1"
        assert written == [], written
    else:
        assert any(p.endswith("deviceid") for p in written), written
