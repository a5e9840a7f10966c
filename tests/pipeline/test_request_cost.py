"""The cost of a search request is bounded whatever k is: the verifier reads at most `[verify] candidates`
of recall's hits and the rest follow in recall order, so k = 10x candidates builds the maps of candidates
only. Measured in-process (no Ray) on the code the replicas run: the search replica's recall stage and
the verify stage's `rerank`, with the bytes allocated while building a request's maps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from sidestep.config import SAMPLES_DIR, SourceConfig, default_settings
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.retrieval.search import rerank
from sidestep.serving.core import SearchService
from sidestep.storage.indexes import load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.verify.model import Verifier, VerifierConfig

CANDIDATES = 4
QUERY = "how are database backups kept"
HANDBOOK = SAMPLES_DIR / "handbook" / "corpus.jsonl"


@pytest.fixture(scope="module")
def handbook(encoder, tmp_path_factory):
    """The sample handbook (60 documents) ingested, embedded and published by the pipeline's steps."""
    root = DataRoot(tmp_path_factory.mktemp("cost-root"))
    s = default_settings().model_copy(deep=True)
    s.maps.enabled = False
    s.verify.candidates = CANDIDATES
    ingest_source(root, SourceConfig(domain="handbook", path=str(HANDBOOK), format="jsonl"),
                  max_text_bytes=s.ingest.max_text_bytes)
    embed_domain(root, s, "handbook", show_progress=False)
    assert publish_domain(root, s, "handbook").published
    return SimpleNamespace(root=root, settings=s)


def _service(handbook) -> SearchService:
    return SearchService(handbook.settings, handbook.root, verifier=None)


def allocated_bytes(fn) -> int:
    """Bytes the CPU allocator handed out while `fn` ran (torch's profiler; numpy's share the allocator
    only through torch.from_numpy, so numpy work is counted by tracemalloc beside it)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    torch_bytes = sum(max(e.cpu_memory_usage, 0) for e in prof.events() if e.cpu_memory_usage > 0)
    return int(torch_bytes + numpy_peak)


def test_verify_reads_at_most_candidates_and_the_rest_follow_in_recall_order(handbook):
    svc = _service(handbook)
    stage = svc.recall_stage(QUERY, 10, "handbook", True)
    assert len(stage.hits) >= 10
    req = stage.request
    assert req is not None and len(req.doc_ids) == len(req.recall) == CANDIDATES
    assert req.doc_ids == [h.doc_id for h in stage.hits[:CANDIDATES]]
    scores = [float(i) for i in range(CANDIDATES)]  # a verifier that reverses recall's order
    out = svc.finish(stage, {"applied": True, "verifier_version": "v", "scores": scores, "timings_ms": {}})
    ids = [r["doc_id"] for r in out["results"]]
    assert ids[:CANDIDATES] == req.doc_ids[::-1]
    assert ids[CANDIDATES:] == [h.doc_id for h in stage.hits[CANDIDATES:10]]
    assert len(ids) == 10 and out["verify"]["candidates"] == CANDIDATES
    short = svc.finish(svc.recall_stage(QUERY, 2, "handbook", True),
                       {"applied": True, "verifier_version": "v", "scores": scores, "timings_ms": {}})
    assert len(short["results"]) == 2


def test_the_maps_of_a_request_cost_the_same_for_k_far_beyond_candidates(handbook):
    svc = _service(handbook)
    corpus = svc.get("handbook")
    view = load_token_view(handbook.root, svc.settings, "handbook", corpus.version)
    torch.manual_seed(0)
    dim = int(np.asarray(svc.recall_stage(QUERY, 1, "handbook", True).request.qtok).shape[1])
    model = Verifier(VerifierConfig(width=32, ff=64), dim).eval()

    def maps(k: int) -> tuple[int, int]:
        req = svc.recall_stage(QUERY, k, "handbook", True).request
        assert req is not None
        box = {}

        def run() -> None:
            box["out"] = rerank(model, [view], [req.qtok], [req.qpieces], [req.doc_ids], [req.recall],
                                svc.settings.verify.max_doc_tokens, 0)

        return allocated_bytes(run), len(req.doc_ids)

    maps(CANDIDATES)  # warm-up: first-call allocations are not the request's
    small, n_small = maps(CANDIDATES)
    large, n_large = maps(10 * CANDIDATES)
    print(f"\nmaps of one request: k={CANDIDATES}: {small / 1024:.0f} KiB over {n_small} candidates; "
          f"k={10 * CANDIDATES}: {large / 1024:.0f} KiB over {n_large} candidates (ratio {large / small:.2f})")
    assert n_small == n_large == CANDIDATES
    assert large <= 1.25 * small, f"k=10x candidates allocated {large / small:.1f}x the maps"
