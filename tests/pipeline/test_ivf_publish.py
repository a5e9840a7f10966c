"""Publishing past the exact-search threshold: an IVF-PQ version, memory-mapped by the loader, and a
rebuild between refits that reuses the parent's quantizer and copies its codes of unchanged chunks."""

from __future__ import annotations

import json

from sidestep.config import SourceConfig
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.retrieval.ivfpq import RerankedIndex
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.indexes import load_current

TOPICS = ["database backups", "on-call paging", "annual leave", "expense reports", "laptop encryption",
          "office access badges", "travel booking", "code review", "incident postmortems", "password rotation"]


def _docs(edit: int = 0) -> list[dict]:
    docs = []
    for i in range(80):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Policy {i} about {topic}: step {i % 7} applies to team {i // 10}."
        if i < edit:
            text += " This paragraph was revised last week."
        docs.append({"id": f"d{i}", "title": f"{topic} {i}", "text": text})
    return docs


def _publish(root, settings, corpus, docs, **kw):
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    ingest_source(root, SourceConfig(domain="ivf", path=str(corpus), format="jsonl"), max_text_bytes=10_000)
    embed_domain(root, settings, "ivf", show_progress=False)
    return publish_domain(root, settings, "ivf", **kw)


def test_ivfpq_publish_load_and_rebuild_between_refits(data_root, settings, encoder, tmp_path):
    s = settings.model_copy(update={
        "index": settings.index.model_copy(update={"exact_max_vectors": 0, "scale_kind": "ivfpq", "ivf_pq_m": 48,
                                                   "ivf_nprobe": 4, "ivf_refine_k": 80,
                                                   "ivf_refit_fraction": 0.25}),
        "maps": settings.maps.model_copy(update={"enabled": False})})
    corpus = tmp_path / "c.jsonl"
    first = _publish(data_root, s, corpus, _docs())
    assert first.published and first.index == "ivfpq_rerank"
    store = IndexStore(data_root)
    m1 = store.current_manifest("ivf")
    assert m1["index"]["quantizer_reused"] is False and m1["index"]["vectors_encoded_since_fit"] == 0
    loaded = load_current(store, "ivf")
    assert isinstance(loaded.searcher.index, RerankedIndex)
    q = encoder.encode_queries(["Policy 4 about laptop encryption"])
    assert "d4" in [h.doc_id for h in loaded.searcher.search(q, 5)[0]]

    second = _publish(data_root, s, corpus, _docs(edit=5))  # 5 of 80 documents changed: no refit
    m2 = store.current_manifest("ivf")
    assert second.published and m2["index"]["quantizer_reused"] is True
    assert m2["index"]["codes_copied"] == first.chunks - 5 and m2["index"]["vectors_encoded_since_fit"] == 5
    new = load_current(store, "ivf").searcher.index
    for row in (0, 3, 40, 79):  # every chunk finds itself first, copied or newly encoded
        assert new.search(new.reconstruct(row).reshape(1, -1), 1)[1][0, 0] == row

    third = _publish(data_root, s, corpus, _docs(edit=30))  # 5 + 25 more since the fit > 25 %: refit
    assert third.published and store.current_manifest("ivf")["index"]["quantizer_reused"] is False


def test_the_fingerprint_names_build_parameters_not_search_ones(settings):
    import pyarrow as pa

    from sidestep.pipeline.index import fingerprint

    docs = pa.table({"doc_id": ["a"], "content_hash": ["h"]})

    def fp(**kw):
        return fingerprint(settings.model_copy(update={"index": settings.index.model_copy(update=kw)}), "k", docs)

    base = fp()
    assert fp(scale_kind="hnsw") != base and fp(ivf_pq_m=32) != base and fp(ivf_nlist=256) != base
    assert fp(ivf_nprobe=64) == base and fp(ivf_refine_k=300) == base  # search-time: no new version
