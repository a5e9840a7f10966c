"""What several flows compose the same way: building one domain's index from its sources."""

from __future__ import annotations

from collections.abc import Sequence

from sidestep.config import Settings, SourceConfig
from sidestep.results import DomainReport
from sidestep.tasks.cluster import cluster_embed_task
from sidestep.tasks.embed import embed_task
from sidestep.tasks.index import publish_task
from sidestep.tasks.ingest import ingest_task
from sidestep.tasks.rankers import choose_ranker_task
from sidestep.tasks.summarize import summarize_task


def index_domain(root: str, settings: Settings, domain: str, sources: Sequence[SourceConfig], *,
                 force: bool = False) -> DomainReport:
    """Ingest each source, embed what changed, summarize (document maps), then build and publish the
    domain's index: each step a task of the calling flow (its own retries, its own row in the UI).
    An unchanged corpus encodes nothing and publishes nothing; `force` publishes a new version anyway."""
    ingests = [ingest_task(root, s, settings.ingest.max_text_bytes) for s in sources]
    # [ray] address set: the embed stage runs as a Ray Data job on that cluster (tasks/cluster.py)
    emb = cluster_embed_task(root, settings, domain) if settings.ray.address else embed_task(root, settings, domain)
    maps = summarize_task(root, settings, domain)
    pub = publish_task(root, settings, domain, force=force)
    # which ranker serves the domain while it has no verifier of its own (the best untrained one, or the
    # general verifier where it beats them beyond chance), chosen on its held-out self-supervised queries
    # (not over a domain a rollback pinned: its choice stays with the version it was rolled back to)
    ranker = None if pub.pinned else choose_ranker_task(root, settings, domain, force=force)
    return DomainReport(ingest=ingests, embed=emb, summarize=maps, index=pub, ranker=ranker)
