"""The pipeline's steps called directly, without Prefect: ingest -> embed -> summarize -> publish on a
tiny corpus; the search request's recall stage through the functions the Ray app runs; the one
fingerprint helper."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

from sidestep.config import SourceConfig
from sidestep.fingerprint import digest
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.index import publish_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.pipeline.summarize import summarize_domain
from sidestep.results import EmbedReport, IngestReport, PublishResult, SummarizeReport, skipped_preview

DOCS = [
    {"id": "a", "title": "Backups", "text": "Database backups run nightly at two and are kept for thirty days."},
    {"id": "b", "title": "Paging", "text": "A sev2 incident pages the on-call engineer of the owning team."},
    {"id": "c", "title": "Leave", "text": "Annual leave is requested in the HR portal two weeks ahead."},
]


def _build(root, settings, source):
    ing = ingest_source(root, source, max_text_bytes=settings.ingest.max_text_bytes)
    emb = embed_domain(root, settings, "tiny", show_progress=False)
    maps = summarize_domain(root, settings, "tiny")
    return ing, emb, maps, publish_domain(root, settings, "tiny")


def test_ingest_embed_publish_without_prefect_and_an_unchanged_corpus_publishes_nothing(data_root, settings,
                                                                                         encoder, tmp_path):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS) + "{not json\n")
    source = SourceConfig(domain="tiny", path=str(corpus), format="jsonl")
    settings = _every_document_mapped(settings)  # one-chunk documents: no map by default (the test below)
    ing, emb, maps, pub = _build(data_root, settings, source)
    assert isinstance(ing, IngestReport) and (ing.read, ing.new, ing.quarantined, ing.live_documents) == (4, 3, 1, 3)
    assert isinstance(emb, EmbedReport) and (emb.documents, emb.encoded, emb.reused) == (3, 3, 0)
    assert emb.chunks_encoded >= 3
    assert isinstance(maps, SummarizeReport) and maps.enabled and (maps.summarized, maps.failed) == (3, 0)
    assert isinstance(pub, PublishResult) and pub.published and (pub.documents, pub.chunks) == (3, emb.chunks_encoded)
    assert set(pub.as_dict()) == {"domain", "published", "version", "parent", "gc", "documents", "chunks", "index",
                                  "tokens", "seconds"}

    ing2, emb2, maps2, pub2 = _build(data_root, settings, source)
    assert (ing2.new, ing2.updated, ing2.unchanged, ing2.tombstoned) == (0, 0, 3, 0)
    assert (emb2.encoded, emb2.reused) == (0, 3)
    assert (maps2.summarized, maps2.reused, maps2.failed) == (0, 3, 0)
    assert not pub2.published and pub2.version == pub.version
    assert pub2.as_dict() == {"domain": "tiny", "published": False, "version": pub.version,
                              "reason": "unchanged corpus and parameters"}

    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS[:2]))  # one document gone: a new version
    ing3, emb3, _, pub3 = _build(data_root, settings, source)
    assert (ing3.tombstoned, ing3.live_documents, emb3.encoded) == (1, 2, 0)
    assert pub3.published and pub3.parent == pub.version and pub3.documents == 2


def _every_document_mapped(settings):
    return settings.model_copy(update={"maps": settings.maps.model_copy(update={"min_chunks": 1})})


def test_a_text_folder_reports_every_file_it_does_not_read(data_root, settings, tmp_path):
    """A PDF or a binary dropped in a notes folder is not read (only .txt/.md are), and the ingest says so by
    name rather than staying silent: every such regular file counted, the first 20 by path named. Hidden files
    (.DS_Store) and folders (.git), links and special files are not listed."""
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / ".git").mkdir()
    (notes / "a.md").write_text("# Hives\n\nThe queen was laying well in hive one.\n")
    (notes / "sub" / "b.TXT").write_text("Varroa counts were low in the spring.\n")
    (notes / "report [final].pdf").write_bytes(b"%PDF-1.4 not text")
    (notes / "sub" / "scale.bin").write_bytes(bytes(range(256)))
    for i in range(23):
        (notes / "sub" / f"photo{i:02d}.jpg").write_bytes(b"\xff\xd8")
    (notes / ".DS_Store").write_bytes(b"\0\1")
    (notes / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (notes / "link.bin").symlink_to(notes / "sub" / "scale.bin")
    os.mkfifo(notes / "pipe.dat")
    rep = ingest_source(data_root, SourceConfig(domain="tiny", path=str(notes)),
                        max_text_bytes=settings.ingest.max_text_bytes)
    assert (rep.format, rep.read, rep.new, rep.quarantined) == ("textdir", 2, 2, 0)
    assert rep.skipped == 25
    assert rep.skipped_files == ["report [final].pdf"] + [f"sub/photo{i:02d}.jpg" for i in range(19)]
    assert skipped_preview(rep.skipped, rep.skipped_files) == (
        "report [final].pdf, sub/photo00.jpg, sub/photo01.jpg, sub/photo02.jpg, sub/photo03.jpg and 20 more")
    back = IngestReport.from_dict(json.loads(json.dumps(rep.as_dict())))
    assert (back.skipped, back.skipped_files) == (rep.skipped, rep.skipped_files)


def test_documents_shorter_than_min_chunks_get_no_map_and_the_setting_decides_what_is_published(
        data_root, settings, tmp_path):
    """maps.min_chunks: only documents of that many chunks are summarized (the map of a one-window document
    repeats it), publish carries maps for those alone, and changing the setting publishes a version that
    follows it. Also with sentence-aligned chunks, whose embeddings live under their own store key."""
    from sidestep.config import ChunkingConfig
    from sidestep.storage.artifacts import IndexStore
    from sidestep.storage.indexes import load_current

    long_text = " ".join(f"Rule {i}: change requests of class {i} need {i + 1} reviewers and a rollback plan."
                         for i in range(60))
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in [*DOCS, {"id": "long", "title": "Change policy",
                                                                      "text": long_text}]))
    source = SourceConfig(domain="tiny", path=str(corpus), format="jsonl")
    small = {"window_tokens": 64, "overlap_tokens": 8}
    for boundaries in ("tokens", "sentences"):
        chunked = settings.model_copy(update={"chunking": ChunkingConfig(**small, boundaries=boundaries)})
        _, emb, maps, pub = _build(data_root, chunked, source)
        assert emb.chunks_encoded >= 3 + 3 and pub.published
        assert (maps.summarized, maps.failed, maps.unmapped_short) == (1, 0, 3), (boundaries, maps)
        corpus_ = load_current(IndexStore(data_root), "tiny")
        by_doc = dict(zip(corpus_.maps.doc_ids, corpus_.maps.has_map.tolist(), strict=True))
        assert by_doc == {"a": False, "b": False, "c": False, "long": True}, boundaries

        every = chunked.model_copy(update={"maps": chunked.maps.model_copy(update={"min_chunks": 1})})
        _, _, maps1, pub1 = _build(data_root, every, source)  # the short ones summarized now, a new version
        assert (maps1.summarized, maps1.reused, maps1.unmapped_short) == (3, 1, 0) and pub1.published
        assert load_current(IndexStore(data_root), "tiny").maps.has_map.all()
        _, _, maps3, pub3 = _build(data_root, chunked, source)  # back to 3: their stored maps are not published
        assert (maps3.summarized, maps3.reused, maps3.unmapped_short) == (0, 1, 3) and pub3.published
        assert load_current(IndexStore(data_root), "tiny").maps.has_map.tolist() == [False, False, False, True]


def test_the_pipeline_layer_imports_no_prefect_no_ray_and_no_layer_above():
    code = ("import sys\n"
            "import sidestep.pipeline.embed, sidestep.pipeline.evalrec, sidestep.pipeline.evaluate\n"
            "import sidestep.pipeline.index, sidestep.pipeline.ingest, sidestep.pipeline.rec\n"
            "import sidestep.pipeline.summarize, sidestep.pipeline.verifier\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'ray') or\n"
            "      m.startswith(('sidestep.tasks', 'sidestep.flows', 'sidestep.serving'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_recall_stage_pickles_and_runs_through_the_verify_stage_the_ray_app_calls(sample, settings):
    """The search replica's recall stage, its verify request across a pickle (the actor call to the
    verifier deployment), the verifier service's batch, and the replica's answer."""
    import asyncio

    from sidestep.retrieval.search import RecallStage, VerifyRequest
    from sidestep.serving.app import _verified
    from sidestep.serving.core import SearchService
    from sidestep.serving.verify import VerifierService

    svc = SearchService(settings, sample.root, verifier=None)  # the Ray app's search replica
    svc.ranker_choice = lambda domain: None  # no ranker chosen for the domain (tests/pipeline/test_rankers.py)
    stage = svc.recall_stage("database backups", 3, "handbook", True)
    assert isinstance(stage, RecallStage) and isinstance(stage.request, VerifyRequest)
    req = pickle.loads(pickle.dumps(stage.request))
    assert (req.domain, req.index_version, req.doc_ids, req.qpieces) == (
        "handbook", stage.corpus.version, [h.doc_id for h in stage.hits], stage.request.qpieces)
    assert req.qtok.shape == stage.request.qtok.shape and len(req.recall) == len(req.doc_ids) >= 3

    async def verify_remote():  # what VerifierDeployment.verify answers for a batch of one
        return VerifierService(settings, sample.root).verify_batch([req])[0]

    verified = asyncio.run(_verified(verify_remote()))
    assert verified == {"applied": False, "reason": "no verifier is published for domain 'handbook'"}
    out = svc.finish(stage, verified)
    assert set(out) == {"index_version", "domain", "mode", "results", "verify", "timings_ms"}
    assert out["verify"] == {"requested": True, "applied": False, "reason": verified["reason"]}
    assert [h["doc_id"] for h in out["results"]] == req.doc_ids[:3]
    assert {"encode", "recall", "total"} <= set(out["timings_ms"])
    off = svc.finish(svc.recall_stage("database backups", 3, "handbook", False), None)
    assert off["verify"] == {"requested": False, "applied": False} and len(off["results"]) == 3


def test_digest_is_sha256_over_sorted_json_then_the_streams():
    params = {"b": [1, 2], "a": "x"}
    want = hashlib.sha256(json.dumps(params, sort_keys=True).encode() + b"h1h2").hexdigest()
    assert digest(params, ["h1"], [b"h2"]) == want
    assert digest(params, ["h1", "h2"], length=10) == want[:10]
    assert digest(None, ["h1"]) == hashlib.sha256(b"h1").hexdigest()
    assert digest({"a": 1}) != digest({"a": 2})
