"""sidestep: batch indexing and serving for retrieval and recommendation.

The public Python API (the command line is a thin layer over it)::

    import sidestep

    eng = sidestep.open("./var")                        # a data root; config="my.toml" names the sources
    eng.reindex(domains=["recipes"])                     # -> ReindexReport
    hits = eng.search("query", domain="recipes", k=10)   # -> a list of Hit
    client = sidestep.Client("http://127.0.0.1:8000")    # the same search / recommend over HTTP

The package holds the core logic grouped by subject (ingest, text, retrieval, verify, docmaps, rec,
eval), which imports neither Prefect nor Ray, and the layers over it: sidestep.storage (paths, Parquet,
versioned artifacts, the DuckDB warehouse), sidestep.tasks and sidestep.flows (Prefect),
sidestep.serving (Ray Serve) and sidestep.cli. Importing sidestep loads none of the heavy ones.
"""

from __future__ import annotations

from .api import APIError, Client, Engine, open
from .results import (
    EmbedReport,
    EvalReport,
    Hit,
    IndexReport,
    IngestReport,
    LabReport,
    MeasureComparison,
    PublishResult,
    Recommendations,
    RecommendedItem,
    ReindexReport,
    ReportResult,
    RunComparison,
    RunExport,
    SearchResults,
    StatusReport,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Client",
    "EmbedReport",
    "Engine",
    "EvalReport",
    "Hit",
    "IndexReport",
    "IngestReport",
    "LabReport",
    "MeasureComparison",
    "PublishResult",
    "Recommendations",
    "RecommendedItem",
    "ReindexReport",
    "ReportResult",
    "RunComparison",
    "RunExport",
    "SearchResults",
    "StatusReport",
    "__version__",
    "open",
]
