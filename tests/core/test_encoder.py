from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sidestep.text.encoder import encoder_key, model_dim, packaged_model_path

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


SHIPPED_KEY = "all-minilm-l6-v2-d76b35fa2b"  # names the embedding caches and published versions made so far


def model_copy(dest: Path, *, pooling: dict | None = None, normalize: bool = True, prompts: dict | None = None) -> Path:
    """The shipped model's folder, copied (its weights linked), with another pooling, without its
    Normalize module, or with prompts."""
    import json
    import shutil

    src = packaged_model_path()
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for f in src.rglob("*"):
        if f.suffix in {".safetensors", ".bin"}:
            (dest / f.relative_to(src)).symlink_to(f)
    if pooling is not None:
        (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if not normalize:
        modules = json.loads((dest / "modules.json").read_text())
        (dest / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    if prompts is not None:
        cfg = json.loads((dest / "config_sentence_transformers.json").read_text())
        (dest / "config_sentence_transformers.json").write_text(json.dumps({**cfg, "prompts": prompts}))
    return dest


CLS = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
       "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
VARIANTS = {
    "cls": {"pooling": CLS},
    "cls-no-normalize": {"pooling": CLS, "normalize": False},
    "prompts": {"prompts": {"query": "query: ", "document": "passage: "}},
    "prompts-excluded-from-mean": {"prompts": {"query": "query: ", "document": "passage: "},
                                   "pooling": {"embedding_dimension": 384, "pooling_mode": "mean",
                                               "include_prompt": False}},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    """One load per variant, shared by the tests that read it."""
    from sidestep.text.encoder import Encoder

    folder = model_copy(tmp_path_factory.mktemp("models") / request.param, **VARIANTS[request.param])
    return request.param, Encoder(folder)


TEXTS = ["what causes tides", "A much longer sentence about the migration of herons along the estuary at dusk."]
DOCS = [("h1", "Tides", "The moon's pull raises the sea twice a day."), ("h2", "", "herons"),
        ("h3", "Herons", "Grey herons nest in colonies in tall trees near water, and feed on fish and frogs.")]


def test_vectors_follow_the_models_pooling_normalisation_and_prompts(variant):
    """Another pooling (CLS), no Normalize module, prompts (with the prompt kept in or left out of the
    mean): the vectors are what sentence-transformers gives for the same folder, queries with its query
    prompt and documents (a padded batch of one-chunk documents) with its document prompt."""
    from sidestep.text.encoder import doc_text

    name, enc = variant
    st = enc.st
    q_ref = st.encode_query(TEXTS)
    d_ref = st.encode_document([doc_text(t, x) for _, t, x in DOCS])
    if name.startswith("prompts"):
        np.testing.assert_allclose(q_ref, st.encode(TEXTS, prompt_name="query"), atol=1e-6)
        np.testing.assert_allclose(d_ref, st.encode([doc_text(t, x) for _, t, x in DOCS], prompt="passage: "),
                                   atol=1e-6)
        assert np.abs(q_ref - st.encode(TEXTS)).max() > 1e-2  # the prompt matters: the check can fail
    np.testing.assert_allclose(enc.encode_queries(TEXTS), q_ref, atol=1e-5)
    docs = enc.encode_documents(DOCS)
    assert all(len(d.chunks) == 1 for d in docs)
    np.testing.assert_allclose(np.stack([d.pooled[0] for d in docs]), d_ref, atol=1e-5)
    norms = np.linalg.norm(d_ref, axis=1)
    if name == "cls-no-normalize":
        assert np.abs(norms - 1).min() > 1e-2  # unnormalized, as the model gives them
    else:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_token_vectors_are_the_models_without_the_prompt(variant):
    """Token vectors come from the same forward pass: the model's token_embeddings for [CLS], the
    text's pieces and [SEP], read with the prompt (whose rows are left out, so rows align with ids)."""
    _, enc = variant
    docs = enc.encode_documents(DOCS)
    n_prompt = len(enc.prompt_ids["document"])
    ref = enc.st.encode_document([f"{t} {x}".strip() for _, t, x in DOCS], output_value="token_embeddings")
    for d, r in zip(docs, ref, strict=True):
        r = r.float().cpu().numpy()
        c = d.chunks[0]
        assert d.tokens[0].shape == (c.tok_end - c.tok_start + 2, 384) and r.shape[0] == d.tokens[0].shape[0] + n_prompt
        want = np.concatenate([r[:1], r[1 + n_prompt:]])
        np.testing.assert_allclose(d.tokens[0].astype(np.float32), want, atol=2e-3)
    _, qtok = enc.encode_queries_with_tokens(TEXTS[:1])
    assert qtok[0].shape[0] == len(enc.query_ids(TEXTS[:1])[0])


def test_the_onnx_single_query_path_pools_as_the_model(variant):
    """The search replica's ONNX session replaces the transformer only; the model's own pooling,
    normalize (or not) and prompt follow, so one query gets the model's vector."""
    name, enc = variant
    before = enc._single
    try:
        enc._single = enc._onnx_session()
        assert enc._fast_single_reproduces()
        one, tok = enc.encode_queries_with_tokens(TEXTS[1:])
    finally:
        enc._single = before
    np.testing.assert_allclose(one[0], enc.st.encode_query(TEXTS[1:])[0], atol=1e-5)
    _, eager_tok = enc.encode_queries_with_tokens(TEXTS[1:])
    np.testing.assert_allclose(tok[0].astype(np.float32), eager_tok[0].astype(np.float32), atol=2e-3)


def test_the_key_changes_with_pooling_normalisation_and_prompts_and_not_for_the_shipped_model(tmp_path):
    """The key names the embedding cache: a copy pooled otherwise (or without Normalize, or with
    prompts) must not reuse the mean-pooled vectors; an unchanged copy hashes as the shipped model, whose
    key stays what caches and published versions were made under."""
    assert encoder_key(None) == SHIPPED_KEY

    def digest(folder: Path) -> str:
        return encoder_key(folder).rsplit("-", 1)[1]

    assert digest(model_copy(tmp_path / "same")) == SHIPPED_KEY.rsplit("-", 1)[1]
    digests = {name: digest(model_copy(tmp_path / name, **kw)) for name, kw in VARIANTS.items()}
    assert len(set(digests.values())) == len(VARIANTS) and SHIPPED_KEY.rsplit("-", 1)[1] not in digests.values()
    # the same pooling in sentence-transformers' current config form is the same encoder
    cls_new_form = model_copy(tmp_path / "cls-new", pooling={"embedding_dimension": 384, "pooling_mode": "cls"})
    assert digest(cls_new_form) == digests["cls"]
    mean_new_form = model_copy(tmp_path / "mean-new", pooling={"embedding_dimension": 384, "pooling_mode": "mean"})
    assert digest(mean_new_form) == SHIPPED_KEY.rsplit("-", 1)[1]


def test_the_shipped_models_vectors_are_unchanged(encoder):
    """The shipped model through its modules gives what the encoder computed before it read them: the
    mean of the transformer's last hidden state over the mask, L2-normalized, on padded batches; its
    token vectors are that hidden state."""
    import torch

    assert encoder.prompts == {"query": "", "document": ""} and encoder.device.type == "cpu"
    long_text = " ".join(f"word{i}" for i in range(150))
    docs = encoder.encode_documents([*DOCS, ("h4", "", long_text)], window_tokens=64, overlap_tokens=8)
    enc = encoder.tokenize_documents([f"{t} {x}".strip() for _, t, x in [*DOCS, ("h4", "", long_text)]])
    seqs = [encoder.wrap_specials(ids[c.tok_start:c.tok_end])
            for d, ids in zip(docs, enc["input_ids"], strict=True) for c in d.chunks]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [encoder.pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.inference_mode():
        out = encoder.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    m = mask.unsqueeze(-1).float()
    old = torch.nn.functional.normalize((out * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
    np.testing.assert_allclose(np.concatenate([d.pooled for d in docs]), old, atol=1e-6)
    old_tok = [out[r, :len(s)].to(torch.float16).numpy() for r, s in enumerate(seqs)]
    for new, ref in zip([t for d in docs for t in d.tokens], old_tok, strict=True):
        np.testing.assert_allclose(new.astype(np.float32), ref.astype(np.float32), atol=2e-3)


def test_device_setting(settings):
    import torch

    from sidestep.config import EncoderConfig
    from sidestep.text.encoder import resolve_device

    assert EncoderConfig().device == "cpu" and settings.encoder.device == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError):
        EncoderConfig(device="tpu")


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
