"""The embed stage as a Ray Data job on a Ray cluster ([ray] address / `reindex --ray-address`).

The driver plans what to encode (sidestep.pipeline.embed.plan_embed), hands the pending documents to Ray Data
(`from_items` -> `map_batches` over an actor pool of encoders), and each actor encodes a batch with the core's
encoder and writes it as one content-addressed shard on the shared data root, exactly as the single-process
path does (sidestep.pipeline.embed.encode_shard). Everything after embed (maps, index, publish, CURRENT) stays
in the driver, under Prefect.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.common import encoder_for
from sidestep.pipeline.embed import embed_report, encode_shard, plan_embed
from sidestep.results import EmbedReport
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.paths import DataRoot

from .common import RETRY


class ShardEncoder:
    """A Ray Data actor: loads the encoder once, then turns each batch of documents into one shard."""

    def __init__(self, root: str, settings: Settings, key: str, dim: int, n_documents: int):
        import ray

        self.settings = settings
        self.store = EmbeddingStore(DataRoot(Path(root)), key, dim)
        self.node = ray.get_runtime_context().get_node_id()
        # the same batch backend the single process would choose for this job (the store key says int8 or not)
        self.backend = encoder_for(settings).prepare_documents(n_documents)

    def __call__(self, batch: dict) -> dict:
        docs = [(str(h), None if t is None else str(t), str(x))
                for h, t, x in zip(batch["content_hash"], batch["title"], batch["text"], strict=True)]
        info = encode_shard(self.settings, self.store, docs)
        return {"shard": [info.shard], "rows": [info.rows], "docs": [len(docs)], "node": [self.node],
                "backend": [self.backend]}


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """Join the cluster as a driver (kept when this process is already connected; left when we joined)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def pool_size(settings: Settings, batches: int) -> int:
    import ray

    if settings.ray.encoders:
        return min(settings.ray.encoders, batches)
    # the CPUs of the nodes alive now (a node that just died may still be in cluster_resources())
    cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")) or 1.0
    return max(1, min(batches, int(cpus // settings.ray.encoder_cpus)))


def embed_on_cluster(root: str, settings: Settings, domain: str, address: str, log=print) -> EmbedReport:
    plan = plan_embed(DataRoot(Path(root)), settings, domain)
    if not plan.pending:
        return embed_report(plan, 0, 0.0, nodes=[], cluster=address)
    import ray.data

    t0 = time.perf_counter()
    size = settings.ray.batch_docs
    batches = -(-len(plan.pending) // size)
    with connected(address):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.actor_task_retry_on_errors = False
        n = pool_size(settings, batches)
        log(f"embed {domain} on the Ray cluster at {address}: {len(plan.pending)} documents, {batches} batches, "
            f"{n} encoder actors")
        items = [{"content_hash": h, "title": t, "text": x} for h, t, x in plan.pending]
        ds = ray.data.from_items(items, override_num_blocks=batches)
        # max_restarts=0: an encoder whose node dies fails the job (and Prefect retries the task, which encodes
        # only what no complete shard holds yet) instead of waiting for a restart the cluster may not have room for
        out = ds.map_batches(ShardEncoder, fn_constructor_args=(root, settings, plan.key, plan.dim, len(plan.pending)),
                             batch_size=size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
                             num_cpus=settings.ray.encoder_cpus, max_restarts=0, max_task_retries=0)
        rows = out.take_all()
    seconds = time.perf_counter() - t0
    nodes = sorted({r["node"] for r in rows})
    chunks = sum(int(r["rows"]) for r in rows)
    log(f"embed {domain}: {sum(int(r['docs']) for r in rows)} documents in {len(rows)} shards on {len(nodes)} "
        f"node(s) {nodes}, {chunks} chunks, {seconds:.1f} s")
    backends = sorted({str(r["backend"]) for r in rows})
    return embed_report(plan, chunks, seconds, nodes=nodes, cluster=address, backend=",".join(backends) or None)


def run_remote(settings: Settings, fn, *args, **kwargs):
    """fn(*args, **kwargs) as one Ray task with its resources declared ([ray] train_cpus / train_memory_gb;
    the CPUs capped at the largest node's, so that a small cluster can still place it); the caller waits."""
    import ray

    with connected(settings.ray.address):
        largest = max((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
        remote = ray.remote(num_cpus=min(settings.ray.train_cpus, largest) or 1,
                            memory=int(settings.ray.train_memory_gb * 2**30), max_retries=0)(fn)
        return ray.get(remote.remote(*args, **kwargs))


@task(name="embed-domain-on-cluster", **RETRY, cache_policy=NO_CACHE, tags=["embed", "ray"])
def cluster_embed_task(root: str, settings: Settings, domain: str) -> EmbedReport:
    logger = get_run_logger()
    out = embed_on_cluster(root, settings, domain, settings.ray.address, log=logger.info)
    logger.info("embed %s: documents=%d encoded=%d reused=%d chunks_encoded=%d seconds=%.1f nodes=%s", out.domain,
                out.documents, out.encoded, out.reused, out.chunks_encoded, out.seconds, out.nodes)
    return out
