"""Typed results of the pipeline's steps: what crosses a layer (core -> tasks -> flows -> API / CLI).

Each is a plain dataclass. ``as_dict()`` gives the JSON shape the command line's ``--json`` prints
(the shapes documented in docs/cli.md; optional fields left unset are omitted, as before), and
``from_dict()`` reads that shape back, so a caller over HTTP or a flow's stored result gets the same type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self


class _Report:
    """Shared conversion to and from the ``--json`` shape."""

    # fields that are left out of as_dict() while None (they exist only on one branch of a step)
    _optional: tuple[str, ...] = ()

    def _omitted(self) -> tuple[str, ...]:
        """The optional fields of this instance's branch (a report whose branch decides overrides it)."""
        return self._optional

    def as_dict(self) -> dict[str, Any]:
        keys = getattr(self, "_keys", None)
        if keys is not None:  # read by from_dict: give back exactly the keys it was given, in their order
            extra = getattr(self, "_extra", {})
            return {k: _plain(extra[k] if k in extra else getattr(self, k)) for k in keys}
        out: dict[str, Any] = {}
        omitted = self._omitted()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in omitted:
                continue
            out[f.name] = _plain(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Keys the class does not name are kept beside the fields (``extra``), so ``as_dict()`` of what
        ``from_dict`` read is the same dict: a step may report more than its type names."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        obj = cls(**{k: v for k, v in data.items() if k in names})
        obj._extra = {k: v for k, v in data.items() if k not in names}
        obj._keys = list(data)
        return obj

    @property
    def extra(self) -> dict[str, Any]:
        """What the step reported beyond the named fields (empty for a report built in Python)."""
        return dict(getattr(self, "_extra", {}))

    def __getitem__(self, key: str) -> Any:
        """Read access by key, as the dicts these replace allowed (``report["encoded"]``)."""
        if key not in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            extra = getattr(self, "_extra", {})
            if key in extra:
                return extra[key]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            v = self[key]
        except KeyError:
            return default
        return default if v is None else v


def _plain(v: Any) -> Any:
    if isinstance(v, _Report):
        return v.as_dict()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def skipped_preview(count: int, paths: list[str], shown: int = 5) -> str:
    """The first few skipped paths, and how many more: one readable line however many files were skipped."""
    more = f" and {count - min(shown, len(paths))} more" if count > min(shown, len(paths)) else ""
    return ", ".join(paths[:shown]) + more


@dataclass
class IngestReport(_Report):
    """One source read into one domain: counts of what the incremental upsert did."""

    domain: str
    source: str
    format: str
    run_id: str
    read: int
    new: int
    updated: int
    unchanged: int
    tombstoned: int
    quarantined: int
    duplicates: int
    interactions: int
    live_documents: int
    skipped: int = 0  # files in a text folder not read: not .txt/.md
    skipped_files: list[str] = field(default_factory=list)  # the first of them by path (at most 20)


@dataclass
class EmbedReport(_Report):
    """Chunks encoded for a domain's live documents; unchanged content is reused by hash."""

    domain: str
    encoder: str
    documents: int
    encoded: int
    reused: int
    chunks_encoded: int
    seconds: float
    docs_per_s: float | None = None
    tokens_encoded: int = 0  # word pieces of the chunks encoded, [CLS]/[SEP] included, prompts not
    tokens_per_s: float | None = None
    backend: str | None = None  # what the documents ran on: "torch" or "onnx" (None: nothing to encode)
    # on a Ray cluster ([ray] address): the Ray node ids whose encoder actors wrote shards, and the address
    nodes: list[str] | None = None
    cluster: str | None = None

    _optional = ("nodes", "cluster")


@dataclass
class SummarizeReport(_Report):
    """Document maps built for a domain's live documents (cached by content hash), and how many failed
    (quarantined; those documents stay searchable without a map). ``summarizer`` names the map store;
    it is absent when maps are disabled."""

    domain: str
    enabled: bool
    summarizer: str | None = None
    summarized: int = 0
    reused: int = 0
    failed: int = 0
    unmapped_short: int = 0  # live documents below maps.min_chunks: no map, searched by their chunks
    seconds: float = 0.0

    _optional = ("summarizer",)


@dataclass
class PublishResult(_Report):
    """A domain's index version: published, or why not (``reason``), and what serves now (``version``)."""

    domain: str
    published: bool
    version: str | None
    reason: str | None = None
    parent: str | None = None
    gc: list[str] | None = None
    documents: int | None = None
    chunks: int | None = None
    index: str | None = None
    tokens: dict | None = None
    seconds: float | None = None
    pinned: bool | None = None  # not published because a rollback pinned the domain

    _optional = ("reason", "parent", "gc", "documents", "chunks", "index", "tokens", "seconds", "pinned")

    def _omitted(self) -> tuple[str, ...]:
        # a published version reports all its fields (parent and tokens may be None: first version, no PQ
        # codes); a step that published nothing reports only why
        return ("reason", "pinned") if self.published else self._optional


@dataclass
class DomainReport(_Report):
    """One domain's index built: its sources ingested (none when ingest was skipped), then embed,
    summarize (document maps) and publish."""

    ingest: list[IngestReport]
    embed: EmbedReport
    summarize: SummarizeReport
    index: PublishResult
    ranker: dict | None = None  # the ranker choice (sidestep.pipeline.rankers) where one was made

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls([IngestReport.from_dict(i) for i in data["ingest"]], EmbedReport.from_dict(data["embed"]),
                   SummarizeReport.from_dict(data["summarize"]), PublishResult.from_dict(data["index"]),
                   data.get("ranker"))


@dataclass
class ReindexReport(_Report):
    """The nightly run over its domains: totals, what was published, what failed (domain -> reason)."""

    domains: dict[str, DomainReport] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    encoded: int = 0
    reused: int = 0
    summarized: int = 0
    maps_failed: int = 0
    unmapped_short: int = 0  # live documents below maps.min_chunks (no map by design, not a failure)
    published: list[dict] = field(default_factory=list)
    quarantined: int = 0
    staging_swept: int = 0
    tables: dict[str, dict] | None = None
    codebook: dict | None = None
    pinned: list[dict] = field(default_factory=list)  # domains a rollback pins: nothing published over them
    embed_nodes: list[str] | None = None  # on a Ray cluster: every node whose encoders wrote shards this run
    # per domain without judgments: the general verifier fine-tuned on its own self-supervised lists, which won
    # the gate (adapted, general, MaxSim, ...) and by how much, and whether the adapted one was published
    adaptation: dict[str, dict] | None = None

    _optional = ("tables", "codebook", "embed_nodes", "adaptation")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        out = super().from_dict(data)
        out.domains = {d: DomainReport.from_dict(r) for d, r in out.domains.items()}
        return out

    def add(self, domain: str, built: DomainReport) -> None:
        """Count one domain's built index into the totals."""
        self.domains[domain] = built
        self.summarized += built.summarize.summarized
        self.maps_failed += built.summarize.failed
        self.unmapped_short += built.summarize.unmapped_short
        self.encoded += built.embed.encoded
        self.reused += built.embed.reused
        if built.embed.nodes is not None:
            self.embed_nodes = sorted(set(self.embed_nodes or []) | set(built.embed.nodes))
        self.quarantined += sum(i.quarantined for i in built.ingest)
        if built.index.published:
            self.published.append({"domain": domain, "version": built.index.version})
        elif built.index.pinned:
            self.pinned.append({"domain": domain, "kind": "indexes", "version": built.index.version,
                                "reason": built.index.reason})


@dataclass
class IndexReport(_Report):
    """`index PATH --domain D`: the source ingested, then the domain reindexed from what is stored.

    ``quarantined`` is the ingest's count, ``encoded`` the reindex's, ``published`` the versions published
    (a list of {domain, version}, empty when nothing changed) and ``version`` what the domain serves now."""

    domain: str
    quarantined: int
    encoded: int
    published: list[dict]
    version: str | None
    ingest: IngestReport
    reindex: ReindexReport

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        out = super().from_dict(data)
        out.ingest, out.reindex = IngestReport.from_dict(data["ingest"]), ReindexReport.from_dict(data["reindex"])
        return out


@dataclass
class Hit:
    """One search result: the document, its final score (the verifier's where it ran), recall's score,
    and where in the document the best chunk is."""

    doc_id: str
    score: float
    recall_score: float
    title: str
    snippet: str
    chunk: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hit:
        """One entry of a /search response's ``results`` (title, snippet and chunk may be absent)."""
        return cls(doc_id=data["doc_id"], score=float(data["score"]), recall_score=float(data["recall_score"]),
                   title=data.get("title") or "", snippet=data.get("snippet") or "", chunk=int(data.get("chunk", 0)))


class SearchResults(list):
    """A search's hits, best first (a ``list[Hit]``), with what the response says about them: the index
    version that answered, the domain, the mode, whether the verifier applied (or why not) and timings.
    ``as_dict()`` is the /search response body (the shape ``sidestep search --json`` prints)."""

    def __init__(self, hits: list[Hit], *, index_version: str, domain: str, mode: str = "chunks",
                 verify: dict | None = None, timings_ms: dict | None = None):
        super().__init__(hits)
        self.index_version = index_version
        self.domain = domain
        self.mode = mode
        self.verify = verify or {}
        self.timings_ms = timings_ms or {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResults:
        return cls([Hit.from_dict(h) for h in data["results"]], index_version=data["index_version"],
                   domain=data["domain"], mode=data.get("mode", "chunks"), verify=data.get("verify"),
                   timings_ms=data.get("timings_ms"))

    def as_dict(self) -> dict[str, Any]:
        return {"index_version": self.index_version, "domain": self.domain, "mode": self.mode,
                "results": [h.as_dict() for h in self], "verify": self.verify, "timings_ms": self.timings_ms}

    @property
    def ranked_by(self) -> str:
        """What ordered these hits, and why, in one line (the search table's caption, the demo's summary)."""
        v = self.verify
        if self.mode != "chunks":
            what = "document maps (mode map)"
        elif v.get("applied"):
            what = (f"{v['ranker'] + ', ' if v.get('ranker') else ''}verifier {v.get('verifier_version')} "
                    f"({v.get('verified', v.get('candidates'))} of {v.get('candidates')} candidates read)")
        else:
            what = v.get("ranker") or "recall (pooled cosine)"
        return what + (f": {v['reason']}" if v.get("reason") else "")

    def __repr__(self) -> str:
        return f"SearchResults({list.__repr__(self)}, index_version={self.index_version!r})"


@dataclass
class RecommendedItem:
    """One recommended item: its id and the model's score (a logit)."""

    item_id: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecommendedItem:
        return cls(item_id=str(data["item_id"]), score=float(data["score"]))


class Recommendations(list):
    """A recommendation, best first (a ``list[RecommendedItem]``), with the tables version that answered,
    the history's ids the domain does not know, and a note when nothing could be recommended.
    ``as_dict()`` is the /recommend response body."""

    def __init__(self, items: list[RecommendedItem], *, index_version: str, domain: str,
                 unknown_items: list[str] | None = None, note: str | None = None, timings_ms: dict | None = None):
        super().__init__(items)
        self.index_version = index_version
        self.domain = domain
        self.unknown_items = list(unknown_items or [])
        self.note = note
        self.timings_ms = timings_ms or {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendations:
        return cls([RecommendedItem.from_dict(i) for i in data["items"]], index_version=data["index_version"],
                   domain=data["domain"], unknown_items=data.get("unknown_items"), note=data.get("note"),
                   timings_ms=data.get("timings_ms"))

    def as_dict(self) -> dict[str, Any]:
        out = {"index_version": self.index_version, "domain": self.domain, "items": [i.as_dict() for i in self],
               "unknown_items": self.unknown_items}
        if self.note is not None:
            out["note"] = self.note
        out["timings_ms"] = self.timings_ms
        return out

    def __repr__(self) -> str:
        return f"Recommendations({list.__repr__(self)}, index_version={self.index_version!r})"


@dataclass
class EvalReport(_Report):
    """An evaluation of a BEIR folder: the configuration that ran (``metrics``: ndcg@10, mrr@10, recall@100),
    the baselines beside it, the index version, and where the run is stored (DuckDB ``run_id``)."""

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    index_version: str | None = None
    run_id: str | None = None
    run_group: str | None = None
    domain: str | None = None
    split: str | None = None
    queries: int | None = None
    verify: dict | None = None

    _optional = ("index_version", "run_id", "run_group", "domain", "split", "queries", "verify")


@dataclass
class StatusReport(_Report):
    """The data root's state: per domain the serving version (``serving_version``), counts, quarantine,
    tables and verifier versions; the shared codebook; the last nightly run."""

    data_root: str
    domains: dict[str, dict] = field(default_factory=dict)
    quarantined: int = 0
    codebook_version: str | None = None
    last_nightly: dict | None = None
    bad_entries: dict[str, str] = field(default_factory=dict)  # entries no server loads, with why


@dataclass
class LabReport(_Report):
    """A gradient-lab run: per estimator its bias and variance against the exact gradient (``estimators``),
    the optimisation runs, and where the rows are stored (DuckDB ``run_id``)."""

    task: str
    estimators: dict[str, dict]
    run_id: str | None = None
    seconds: float | None = None

    _optional = ("run_id", "seconds")


@dataclass
class ReportResult(_Report):
    """The report page written: where (``path``), the figures it holds (their names, in page order) and,
    for each section drawn without a figure or with fewer, the note it shows instead (``notes``)."""

    path: str
    figures: list[str]
    notes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RunExport(_Report):
    """A stored run written out as a TREC run or a ranx-style JSON run: where (``out``; None when the
    content was returned instead, in ``content``), and how many queries and result lines it holds."""

    run_id: str
    format: str
    out: str | None
    queries: int
    documents: int
    content: str | dict | None = None

    _optional = ("content",)


@dataclass
class MeasureComparison(_Report):
    """One measure over the same queries for runs A and B: the means, ``delta = b - a``, the paired test's
    two-sided p-value, and the queries where B scores above A (wins), the same (ties), below (losses)."""

    a: float
    b: float
    delta: float
    p_value: float | None
    wins: int
    ties: int
    losses: int


@dataclass
class RunComparison(_Report):
    """Two runs compared measure by measure over the same judged queries (``sidestep compare``)."""

    runs: list[str]
    measures: dict[str, MeasureComparison]
    queries: int
    test: str = "paired t-test"
    qrels: str | None = None

    _optional = ("qrels",)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        obj = super().from_dict(data)
        obj.measures = {k: v if isinstance(v, MeasureComparison) else MeasureComparison.from_dict(v)
                        for k, v in obj.measures.items()}
        return obj
