"""Typed configuration: one pydantic model, embedded defaults, optional TOML file.

Lookup order: an explicit path, then `$SIDESTEP_CONFIG`, then the embedded
defaults (the sample corpus that ships inside the package).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
SAMPLES_DIR = Path(__file__).parent / "samples"
FORMATS = ("beir", "jsonl", "csv", "parquet", "textdir", "recbole", "unisrec", "lcrec")
Format = Literal["beir", "jsonl", "csv", "parquet", "textdir", "recbole", "unisrec", "lcrec"]


def check_name(value: str, what: str = "domain") -> str:
    """Domain and version names become folder names: keep them to a safe alphabet."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise ValueError(
            f"invalid {what} name {value!r}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    domain: str = Field(description="Domain the documents belong to (a folder name under the data root).")
    path: str = Field(description="Source path; relative paths resolve against the config file's folder.")
    format: Format | None = Field(None, description="Input format; detected from the path when omitted.")
    id_field: str = Field("id", description="Id column/key for jsonl, csv and parquet sources.")
    title_field: str | None = Field("title", description="Title column/key (optional).")
    text_field: str = Field("text", description="Text column/key for jsonl, csv and parquet sources.")
    snapshot: bool = Field(True, description="The source is the full corpus: documents missing from it are tombstoned.")
    eval: bool = Field(False, description="Evaluate this domain (a BEIR folder with test qrels) in the demo.")

    _v = field_validator("domain")(lambda cls, v: check_name(v))


class ChunkingConfig(_Strict):
    window_tokens: int = Field(256, ge=16, le=512, description="Tokens per chunk, [CLS] and [SEP] included.")
    overlap_tokens: int = Field(32, ge=0, description="Tokens shared by consecutive chunks of a document.")
    max_chunks_per_doc: int = Field(256, ge=1, description="Longer documents keep their first chunks only.")
    boundaries: Literal["tokens", "sentences"] = Field(
        "tokens", description="Where chunks start and end: tokens (fixed windows sliding by window - overlap "
                              "tokens), or sentences (windows that start and end on sentence boundaries, each "
                              "sharing at least one whole sentence with the next, so a span inside two adjacent "
                              "sentences is never cut by a chunk boundary).")

    def identity(self) -> dict:
        """What fingerprints and cache keys hold of the chunking: every field, except `boundaries` at its
        default (keys of versions, maps and embeddings made before it existed stay what they were)."""
        d = self.model_dump()
        if d["boundaries"] == "tokens":
            del d["boundaries"]
        return d

    def is_default(self) -> bool:
        return self == ChunkingConfig()


class EncoderConfig(_Strict):
    model_path: str | None = Field(None,
                                   description="A sentence-transformers folder; None = packaged all-MiniLM-L6-v2.")
    batch_size: int = Field(32, ge=1, le=1024)
    num_threads: int | None = Field(None, description="torch threads; None = all cores.")
    max_query_tokens: int = Field(128, ge=8, le=512)
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where the encoder runs: cpu, cuda, or auto (cuda where torch sees a GPU, else cpu). "
                           "On a GPU every batch runs on the eager model (the search replica's ONNX query "
                           "session is CPU only).")
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="How documents are encoded for indexing: torch (the eager model), onnx (an optimised "
                            "ONNX Runtime graph of the same weights, CPU only, vectors equal to 1e-5), or auto "
                            "(onnx for jobs of 1,000 documents or more, where its few seconds of start-up pay off).")
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: the onnx graph with int8 weights (needs backend = \"onnx\"); faster, not exact, "
                            "so its vectors are stored under their own encoder key (a full re-encode).")
    max_batch_tokens: int = Field(8192, ge=256, description="Padded tokens per document batch on the onnx path.")

    @model_validator(mode="after")
    def _int8_needs_onnx(self):
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(f'[encoder] quantize = "{self.quantize}" needs backend = "onnx"')
        return self


class IndexConfig(_Strict):
    exact_max_vectors: int = Field(
        200_000, ge=0, description="Exact inner-product search up to this many chunk vectors; scale_kind above."
    )
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    doc_score: Literal["max", "mean_top2"] = Field("max", description="How chunk scores become a document score.")
    chunk_overfetch: int = Field(4, ge=1, le=64, description="Chunks fetched per requested document.")
    keep_versions: int = Field(5, ge=1, description="Published versions kept per domain (indexes and tables); "
                                                    "older ones are deleted after a publish, never the current.")
    scale_kind: Literal["ivfpq", "hnsw"] = Field(
        "ivfpq", description="Index kind above exact_max_vectors: IVF-PQ with exact re-ranking (memory-mapped, "
                             "built in shards; BENCHMARKS.md 'Indexes at scale') or HNSW over flat vectors.")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; None = about sqrt(vectors), a power of two.")
    ivf_pq_m: int = Field(48, ge=1, description="PQ bytes per vector (must divide the dimension).")
    ivf_nprobe: int = Field(16, ge=1, description="Lists scanned per query.")
    ivf_refine_k: int = Field(100, ge=1, description="PQ candidates re-ranked exactly per query (at least k).")
    ivf_train_vectors: int = Field(40_000, ge=1, description="Sample the quantizer is trained on (≥ 39·nlist used).")
    ivf_shard_vectors: int = Field(250_000, ge=1, description="Vectors per shard encoded in parallel.")
    ivf_build_workers: int = Field(2, ge=1, description="Shards encoded at a time.")
    ivf_refit_fraction: float = Field(
        0.2, ge=0, le=1, description="Retrain the quantizer once vectors encoded since it was fit pass this share "
                                     "of the index; below it a version reuses its parent's quantizer and codes.")


class IngestConfig(_Strict):
    max_text_bytes: int = Field(1_000_000, ge=1, description="Longer texts are quarantined.")


class MapsConfig(_Strict):
    enabled: bool = Field(True, description="Build document maps (summarize stage) during reindex.")
    summarizer: Literal["extractive", "llm"] = Field(
        "extractive", description="extractive runs offline on the CPU; llm calls an OpenAI-compatible endpoint.")
    llm_endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible API (llm summarizer).")
    llm_model: str | None = Field(None, description="Model name for the llm summarizer.")
    llm_api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    min_chunks: int = Field(3, ge=1, description=(
        "Documents of fewer chunks get no map: their chunks already hold the whole text, and map search judges "
        "a document without a map by its best chunk (with map_weight > 0, mapped documents are routed by a "
        "blend with their map's score instead). 1 maps every document."))
    section_budget_chars: int = Field(300, ge=40, description="Length budget of a section summary.")
    global_budget_chars: int = Field(600, ge=40, description="Length budget of the global summary.")
    # Defaults: the settings `sidestep eval-longdoc` (benchmarks/longdoc.py) chose most often over its folds,
    # each chosen on questions it did not report.
    route_top_r: int = Field(2, ge=1, description="Documents routed to in map search mode.")
    map_weight: float = Field(0.0, ge=0, le=1, description="Routing score = w*cos(q, map) + (1-w)*best chunk.")
    alpha: float = Field(1.0, ge=0, le=1, description="Query conditioning: a*e(q) + (1-a)*e(summary + q); 1 = off.")
    gamma: float = Field(0.4, ge=0, description="Section-aware chunks: e(chunk) + g*e(section summary).")
    tau: float = Field(0.7, ge=0, description="Section-aware chunks also score t*cos(q, e(heading path)).")


class RecConfig(_Strict):
    """Discrete codes + lookup tables (VQ-Rec) for domains with interactions."""

    positions: int = Field(32, ge=1, le=256, description="D: code positions per item (PQ sub-quantizers).")
    bits: int = Field(8, ge=1, le=12, description="log2(M) codewords per position; lowered for tiny catalogues.")
    opq: bool = Field(True, description="Learn an OPQ rotation before product quantization.")
    fit_sample: int = Field(50_000, ge=256, description="Items sampled to fit the codebook.")
    drift_threshold: float = Field(
        1.25, gt=1, description="Refit when quantization error on current items exceeds this times the fit error.")
    hidden: int = Field(300, ge=8, description="Width of code embeddings and of the sequence encoder.")
    layers: int = Field(2, ge=1, le=8)
    heads: int = Field(2, ge=1, le=16)
    inner: int = Field(256, ge=8, description="Feed-forward width of the sequence encoder.")
    dropout: float = Field(0.5, ge=0, lt=1)
    max_history: int = Field(50, ge=1, le=512, description="Most recent items of a history the model reads.")
    temperature: float = Field(0.07, gt=0, description="Softmax temperature over cosine scores.")
    epochs: int = Field(30, ge=1, description="Most epochs; the learning rate decays to zero over them (cosine), "
                                               "so keep epochs x epoch time within max_train_seconds.")
    batch_size: int = Field(512, ge=8)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(8, ge=1, description="Epochs without a better valid NDCG@10 before stopping.")
    table_epochs: int = Field(5, ge=1, description="Table-only fine-tuning's schedule: it trains one domain's "
                                                   "table against a frozen encoder, so a short schedule at a "
                                                   "high learning rate suffices (picked on the valid split).")
    table_lr: float = Field(1e-2, gt=0, description="Table-only fine-tuning's peak learning rate.")
    warm_epochs: int = Field(5, ge=1, description="Nightly: when a domain's interactions changed, its serving tables "
                                                  "and encoder are fine-tuned for this many epochs (warm start) "
                                                  "instead of trained from scratch.")
    text_weights: list[Annotated[float, Field(ge=0)]] = Field(
        [0, 1, 2, 3, 4, 6, 8, 12, 16], description="Fusion weights tried after training: each domain's logits "
        "become cos(user, item) / temperature + weight x the text cosine of the recency-weighted history "
        "(the text-only zero-shot scorer). The weight with the best valid NDCG@10 is kept with the tables "
        "(0 always competes, so the text is added only where it helps); [0] turns fusion off.")
    text_decay: float = Field(0.7, gt=0, le=1, description="Recency decay of the text user (weight decay**age).")
    popularity_weights: list[Annotated[float, Field(ge=0)]] = Field(
        [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3], description="Weights of the popularity prior, log(1 + the item's training "
        "interactions), tried together with each text weight: a cosine cannot say how often an item is bought. "
        "The pair with the best valid NDCG@10 is kept ((0, 0) competes); [0] turns the prior off.")
    max_train_seconds: float | None = Field(None, description="Wall-clock budget per training run.")
    threads: int | None = Field(None, description="torch threads for training; None = all cores.")


class VerifyConfig(_Strict):
    enabled: bool = Field(True, description="Rerank recall's candidates with the domain's published verifier "
                                            "(when one exists); requests may still ask for verify=false.")
    candidates: int = Field(100, ge=1, le=1000, description="Recall depth the verifier reranks.")
    max_doc_tokens: int = Field(512, ge=16, description="Document tokens read per candidate (its chunks, in order).")
    verify_top: int | None = Field(
        None, ge=0, description="Candidates the verifier model reads: the list's top by a cheap pre-score (the sum "
                                "of the list z-scores of recall cosine, MaxSim, idf-weighted MaxSim and BM25); the "
                                "rest follow below them in that order. None: the verifier's own choice, made after "
                                "training on its held-out training queries (the smallest of 10-50, at most train_top, "
                                "within 0.001 of the whole list's validation nDCG@10); 0: every candidate.")
    token_store: Literal["float16", "pq"] = Field(
        "pq", description="Token vectors the maps are built from: product-quantized into each index version "
                          "(pq, pq_bytes per token: smaller and faster to read), or the embedding shards as "
                          "stored (float16, 768 bytes per token).")
    pq_bytes: int = Field(43, ge=8, le=192, description="PQ sub-quantizers (one byte each) per token vector. "
                                                        "Where it does not divide the encoder's dimension, the "
                                                        "vectors are zero-padded to a multiple of it (384-d in "
                                                        "43 bytes: 43 sub-spaces of 9).")
    train_token_store: Literal["float16", "pq"] = Field(
        "float16", description="Token vectors the verifier trains on. float16 (the embedding shards) gives it "
                               "exact maps; it still scores whatever token_store serves. Trained on PQ maps it "
                               "learns their quantization noise and ranks worse, even on PQ maps.")
    num_threads: int | None = Field(2, ge=1, description="torch threads of the verifier replica (Ray gives a "
                                                         "fractional-CPU actor one); None leaves Ray's setting.")
    train_top: int = Field(
        30, ge=0, description="Training lists: the recall list's top this many by the pre-score (the model is "
                              "served its top verify_top), plus the near-misses of the positives among them; "
                              "queries with no positive there are left out. 0: the whole list, with positives "
                              "recall missed, sampled at random each epoch.")
    adapter_epochs: int = Field(
        12, ge=0, description="Epochs of the query adapter, a learned linear map of the query's token vectors trained "
                              "before the verifier (MaxSim under the adapted query, listwise; the best validation "
                              "epoch is kept, the identity competing). 0: no adapter (the identity).")
    adapter_top: int = Field(30, ge=1, description="The adapter's training lists: recall's top this many, plus the "
                                                   "query's positives.")
    epochs: int = Field(20, ge=1, description="Training epochs (the best validation epoch is kept).")
    patience: int = Field(
        20, ge=1, description="Stop after this many epochs without a better validation nDCG@10. The learning rate "
                              "anneals over `epochs` (one cycle), and on SciFact the best validation epoch has come "
                              "anywhere from 8 to 18 of 20, often after flat stretches: a patience of 8 once "
                              "stopped at epoch 11 on a 0.0001 difference.")
    near_misses: int = Field(3, ge=0, le=5, description="Structural near-misses generated per training positive.")
    near_miss_weight: float = Field(
        1.0, ge=0, description="Weight of the positive-above-its-near-miss hinge loss beside the listwise loss. "
                               "Over the whole schedule a lighter weight lets ranking crowd it out: at 0.3 the "
                               "verifier of epoch 18 prefers the constraint-satisfying scifact-antonym document "
                               "for 66% of queries, at 1.0 for 92%.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Training queries held out for early stopping.")
    pseudo_docs: int = Field(
        0, ge=0, description="Title pseudo-queries (self-supervised lists beside the labelled ones): this many "
                                "titled documents (a random sample when the domain has more) are re-encoded without "
                                "their titles and form the pseudo corpus; 0 (the default) turns pseudo-queries off. "
                                "On SciFact (5,183 documents, 700 queries) they moved test nDCG@10 by about +0.004 "
                                "and validation by less than its noise, for 6-7 more minutes of training.")
    pseudo_queries: int = Field(
        700, ge=0, description="Pseudo-queries drawn from the pseudo corpus: a document's title is the query, the "
                                "title-free document its one positive, recall's top candidates the negatives.")
    self_supervised_docs: int = Field(
        2000, ge=20, description="`train-verifier --self-supervised` (no judgments read): at most this many titled "
                                 "documents (a random sample when the domain has more) become title pseudo-queries "
                                 "over their title-free text, each with structural near-misses of its document.")
    self_supervised_held_out: float = Field(
        0.2, gt=0, lt=0.4, description="Self-supervised training: the share of those documents held out for early "
                                       "stopping, and the same share again for the publishing gate (a document's "
                                       "title is a query in one part only, and held-out documents are no training "
                                       "list's candidates).")
    general_per_domain: int = Field(
        600, ge=10, description="`train-verifier --general`: self-supervised queries drawn from each indexed domain's "
                                "text (a tenth of them validate). Leave-one-corpus-out on SciFact, 600 rather than 300 "
                                "moved the general verifier from 0.7167 to 0.7220 nDCG@10 and its training (SciFact's "
                                "809 judged claims beside two 5,000-document corpora) from 629 s to 792 s on 2 cores.")
    ranker_queries: int = Field(
        200, ge=0, description="Held-out self-supervised queries (titles, heading questions, sentence crops of the "
                               "domain's own documents) the ranker of a domain without its own verifier is chosen "
                               "on, at index time: the best of pooled cosine, MaxSim and BM25 + dense fusion, or "
                               "the general verifier where it beats them beyond the paired 95% interval of the "
                               "difference. 0: dense recall serves, as before.")
    nightly_adapt: bool = Field(
        True, description="Nightly: each domain without judgments gets the general verifier fine-tuned on its own "
                          "self-supervised lists, published only where it beats the general verifier, MaxSim and "
                          "the best untrained ranker on the domain's held-out self-supervised queries (the best "
                          "of them beyond the paired 95% interval of the difference).")
    batch_max_size: int = Field(8, ge=1, description="Requests the verifier deployment scores together.")
    batch_wait_s: float = Field(0.0, ge=0, description="How long the verifier waits to fill a batch. Requests "
                                "queued while it scores the previous batch fill the next one without any wait; "
                                "a wait only delays a request that arrives alone.")


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_query_chars: int = Field(2000, ge=1)
    max_k: int = Field(1000, ge=1)
    max_body_bytes: int = Field(65_536, ge=1024, description="Larger request bodies get HTTP 413.")
    token_env: str = Field("SIDESTEP_API_TOKEN", description="When this environment variable is set, /search "
                                                             "and /recommend require it as a bearer token.")
    reload_poll_s: float = Field(2.0, gt=0, description="How often replicas look for a new CURRENT version.")


class ReportConfig(_Strict):
    latency_json: str | None = Field(None, description="A benchmark's JSON with latency samples (`latency_ms` "
                                     "lists) for the report's latency histogram; relative to the config file.")


class RayConfig(_Strict):
    address: str | None = Field(None, description="A Ray cluster (`HOST:PORT` of its head, or `auto`): the nightly "
                                "flow's embed stage runs there as a Ray Data job; None = one process, no Ray.")
    encoders: int | None = Field(None, ge=1, description="Encoder actors in the pool; None = one per CPU the "
                                 "cluster has (each holds `encoder_cpus`).")
    encoder_cpus: float = Field(1.0, gt=0, description="CPUs each encoder actor declares.")
    batch_docs: int = Field(512, ge=1, le=100_000, description="Documents per map_batches batch = per embedding "
                                                               "shard (the single-process path writes 512).")
    train_cpus: float = Field(2.0, gt=0, description="CPUs a training task declares (codebook fit, tables).")
    train_memory_gb: float = Field(2.0, gt=0, description="Memory a training task declares (GiB).")


class Settings(_Strict):
    data_root: str | None = Field(None, description="Data root; $SIDESTEP_HOME wins; default ./var.")
    default_domain: str | None = Field(None, description="Domain searched when a request names none.")
    nightly_cron: str = Field("0 2 * * *", description="Cron (UTC) of the nightly reindex deployment.")
    nightly_niceness: int = Field(0, ge=0, le=19, description="CPU niceness of `sidestep reindex` and of the "
                                  "nightly deployment's runs; 10 on a machine shared with serving, so that the "
                                  "batch job yields the cores (a run that leads its own session also lowers its "
                                  "session's autogroup, without which Linux shares the CPU per session); 0: "
                                  "the same priority as everything else.")
    sources: list[SourceConfig] = Field(default_factory=list)
    chunking: ChunkingConfig = ChunkingConfig()
    encoder: EncoderConfig = EncoderConfig()
    index: IndexConfig = IndexConfig()
    ingest: IngestConfig = IngestConfig()
    maps: MapsConfig = MapsConfig()
    rec: RecConfig = RecConfig()
    verify: VerifyConfig = VerifyConfig()
    serve: ServeConfig = ServeConfig()
    report: ReportConfig = ReportConfig()
    ray: RayConfig = RayConfig()

    def domains(self) -> list[str]:
        seen: list[str] = []
        for s in self.sources:
            if s.domain not in seen:
                seen.append(s.domain)
        return seen

    def sources_for(self, domain: str) -> list[SourceConfig]:
        return [s for s in self.sources if s.domain == domain]


def default_settings() -> Settings:
    """The embedded defaults: the sample corpus shipped in `sidestep/samples`."""
    return load_settings(SAMPLES_DIR / "sidestep.toml")


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    if path is None:
        path = os.environ.get("SIDESTEP_CONFIG") or None
    if path is None:
        return default_settings()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    with p.open("rb") as f:
        raw = tomllib.load(f)
    settings = Settings.model_validate(raw)
    base = p.resolve().parent
    for s in settings.sources:
        if not Path(s.path).is_absolute() and "://" not in s.path:
            s.path = str((base / s.path).resolve())
    if settings.report.latency_json and not Path(settings.report.latency_json).is_absolute():
        settings.report.latency_json = str((base / settings.report.latency_json).resolve())
    return settings
