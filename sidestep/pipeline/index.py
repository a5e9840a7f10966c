"""Rebuild a domain's FAISS index from cached embeddings and publish it atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidestep.config import Settings
from sidestep.docmaps.maps import chunk_sections
from sidestep.fingerprint import digest
from sidestep.results import PublishResult
from sidestep.retrieval.index import IVFBuild, build_index
from sidestep.retrieval.ivfpq import IVFPQSpec, auto_nlist
from sidestep.storage.artifacts import CorruptArtifact, IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.indexes import CHUNKS_FILE, read_index, validate_folder, write_version_files
from sidestep.storage.ivf import read_trained
from sidestep.storage.maps import MapStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.pins import active_pin, pinned_reason
from sidestep.storage.schemas import index_maps_schema
from sidestep.storage.tokens import TokenSource, write_pieces, write_pq_tokens
from sidestep.text.chunking import Chunk
from sidestep.text.encoder import doc_text, load_tokenizer, model_dim
from sidestep.verify.candidates import idf_table

from .common import store_key
from .summarize import map_key, map_wanted

SNIPPET_CHARS = 280
log = logging.getLogger("sidestep.retrieval.index")


def fingerprint(settings: Settings, key: str, docs: pa.Table, mapped: set[str] | None = None) -> str:
    """Everything the index content depends on; equal fingerprints → nothing to publish."""
    params = {"encoder": key, "chunking": settings.chunking.identity(), "index": settings.index.model_dump(
        include={"exact_max_vectors", "hnsw_m", "hnsw_ef_construction"}),
        "maps": sorted(mapped) if mapped is not None else None}
    # the index kind above the exact threshold and its build parameters, named only where they differ from
    # the defaults (fingerprints of versions published before these keys existed stay what they were)
    scale = {k: v for k, v in settings.index.model_dump(include={"scale_kind", "ivf_nlist", "ivf_pq_m"}).items()
             if v != type(settings.index).model_fields[k].default}
    if scale:
        params["index_scale"] = scale
    params["tokens"] = settings.verify.token_store + (f"{settings.verify.pq_bytes}" if
                                                      settings.verify.token_store == "pq" else "")
    return digest(params, (f"{d}\x1f{c}\n" for d, c in sorted(zip(docs["doc_id"].to_pylist(),
                                                                  docs["content_hash"].to_pylist(), strict=True))))


def publish_domain(root: DataRoot, settings: Settings, domain: str, *, force: bool = False) -> PublishResult:
    docs, generation = DocumentStore(root).snapshot(domain, include_deleted=False)
    docs = docs.sort_by("doc_id")
    key = store_key(settings)
    dim = model_dim(settings.encoder.model_path)
    map_store = MapStore(root, map_key(settings), dim) if settings.maps.enabled else None
    hashes = set(docs["content_hash"].to_pylist())
    emb = EmbeddingStore(root, key, dim)
    # documents below maps.min_chunks are published without a map, even where an earlier setting built one
    mapped = map_store.known() & map_wanted(settings, emb, hashes) if map_store else None
    # the fingerprint needs only which documents have maps; the maps themselves are read to publish
    fp = fingerprint(settings, key, docs, mapped)
    store = IndexStore(root)
    pin = active_pin(store, domain)  # a rollback holds the domain until unpinned or newer documents arrive
    if pin is not None:
        return PublishResult(domain, False, store.current(domain), reason=pinned_reason(pin, domain), pinned=True)
    current = store.current_manifest(domain)
    if current and current.get("fingerprint") == fp and not force:
        return PublishResult(domain, False, current["version"], reason="unchanged corpus and parameters")
    if docs.num_rows == 0:
        return PublishResult(domain, False, store.current(domain), reason="no live documents")
    t0 = time.perf_counter()
    maps = map_store.gather(mapped) if map_store else {}
    rows, pooled = emb.gather(docs["content_hash"].to_pylist())
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(rows["content_hash"].to_pylist()):
        by_hash.setdefault(h, []).append(i)
    missing = [h for h in set(docs["content_hash"].to_pylist()) if h not in by_hash]
    if missing:
        raise RuntimeError(f"{len(missing)} documents of {domain} have no embeddings; run the embed step first")
    cidx, cs, ce = (rows[c].to_pylist() for c in ("chunk_idx", "char_start", "char_end"))
    ts, te = rows["tok_start"].to_pylist(), rows["tok_end"].to_pylist()
    shard, toff, ntok = (rows[c].to_pylist() for c in ("shard", "token_offset", "n_tokens"))
    out: dict[str, list] = {k: [] for k in ("doc_id", "title", "content_hash", "chunk_idx", "char_start", "char_end",
                                            "shard", "token_offset", "n_tokens", "snippet", "section")}
    order: list[int] = []
    doc_maps: dict[str, list] = {k: [] for k in ("doc_id", "global_summary", "section_titles", "global_vec",
                                                 "section_vecs", "title_vecs")}
    pieces_of: list[np.ndarray] = []
    texts = [doc_text(t or "", x) for t, x in zip(docs["title"].to_pylist(), docs["text"].to_pylist(), strict=True)]
    doc_pieces = load_tokenizer(settings.encoder.model_path)(texts, add_special_tokens=False)["input_ids"]
    for n, (d, t, h) in enumerate(zip(*(docs[c].to_pylist() for c in ("doc_id", "title", "content_hash")),
                                      strict=True)):
        full = texts[n]
        rows_of_doc = sorted(by_hash[h], key=lambda i: cidx[i])
        pieces_of.append(np.asarray([p for i in rows_of_doc for p in doc_pieces[n][ts[i]:te[i]]], np.int32))
        sections = _sections(maps.get(h), rows_of_doc, cs, ce)
        _add_map(doc_maps, d, maps.get(h))
        for i, sec in zip(rows_of_doc, sections, strict=True):
            order.append(i)
            out["section"].append(sec)
            for k, v in (("doc_id", d), ("title", t), ("content_hash", h), ("chunk_idx", cidx[i]),
                         ("char_start", cs[i]), ("char_end", ce[i]), ("shard", shard[i]),
                         ("token_offset", toff[i]), ("n_tokens", ntok[i]),
                         ("snippet", full[cs[i]:ce[i]][:SNIPPET_CHARS])):
                out[k].append(v)
    vectors = pooled[np.asarray(order, dtype=np.int64)]
    ix = settings.index
    ivf, since_fit = _ivf_build(settings, store, domain, out, key, force)
    index, params = build_index(vectors, exact_max_vectors=ix.exact_max_vectors, hnsw_m=ix.hnsw_m,
                                ef_construction=ix.hnsw_ef_construction, ef_search=ix.hnsw_ef_search,
                                scale_kind=ix.scale_kind, ivf=ivf)
    version = new_version_name(fp)
    manifest = {
        "fingerprint": fp,
        "documents_generation": generation,
        "counts": {"documents": docs.num_rows, "chunks": len(order)},
        "index": params.as_dict() | ({"vectors_encoded_since_fit": since_fit} if params.kind == "ivfpq_rerank"
                                      else {}),
        "encoder": key,
        "chunking": settings.chunking.identity(),
        "embeddings": {"encoder": key, "shards": sorted(set(out["shard"]))},
    }
    if settings.maps.enabled:
        manifest["maps"] = {"key": map_key(settings), "documents_with_map": sum(
            v is not None for v in doc_maps["global_vec"])}
    with store.lock(domain):
        pin = active_pin(store, domain)  # a rollback while this run built its version
        if pin is not None:
            return PublishResult(domain, False, store.current(domain), reason=pinned_reason(pin, domain),
                                 pinned=True)
        now = store.current_manifest(domain)
        if now and now.get("fingerprint") == fp and not force:  # another run published it meanwhile
            return PublishResult(domain, False, now["version"], reason="published concurrently by another run")
        if now and now.get("documents_generation", -1) > generation:  # a slower run read an older snapshot
            return PublishResult(domain, False, now["version"], reason=(
                f"input older than what serves: documents generation {generation} < {now['documents_generation']}"
                " of the current version"))
        store.clean_staging(domain)
        with store.staging(domain) as staged:
            chunk_table = pa.table(out)
            # golden queries come from the embedding store by (document, chunk), not from the index itself
            key_row = {(h, c): i for i, (h, c) in enumerate(zip(rows["content_hash"].to_pylist(), cidx, strict=True))}
            write_version_files(staged, index, chunk_table,
                                pa.table(doc_maps, schema=index_maps_schema(dim)) if settings.maps.enabled
                                else None,
                                golden_vector=lambda r: pooled[key_row[(out["content_hash"][r], out["chunk_idx"][r])]])
            doc_list = docs["doc_id"].to_pylist()
            write_pieces(staged, doc_list, pieces_of, idf_table(pieces_of, len(load_tokenizer(
                settings.encoder.model_path))))
            if settings.verify.token_store == "pq":
                # --force refits the token codec too; otherwise unchanged documents keep their codes
                parent, unchanged, stats = (None, set(), None) if force else _unchanged_docs(store, domain, docs, key)
                manifest["tokens"] = write_pq_tokens(staged, TokenSource(emb.dir, chunk_table),
                                                     m=settings.verify.pq_bytes, parent=parent, unchanged=unchanged,
                                                     parent_stats=stats)
            manifest = store.publish(domain, staged, version, manifest, validate=validate_folder)
    removed = store.gc(domain, settings.index.keep_versions)
    return PublishResult(domain, True, version, parent=manifest["parent"], gc=removed, documents=docs.num_rows,
                         chunks=len(order), index=params.kind, tokens=manifest.get("tokens"),
                         seconds=round(time.perf_counter() - t0, 3))


def _unchanged_docs(store: IndexStore, domain: str, docs: pa.Table, encoder: str
                    ) -> tuple[Path | None, set[str], dict | None]:
    """The serving version's folder, the documents whose content it already holds unchanged, and its token
    statistics; nothing to reuse when it was built by another encoder or fails verification."""
    now = store.current(domain)
    if now is None:
        return None, set(), None
    try:
        manifest = store.verify(domain, now)  # never copy codes out of a damaged version
    except CorruptArtifact as e:
        log.warning("token codes of %s/%s not reused: %s", domain, now, e)
        return None, set(), None
    if manifest.get("encoder") != encoder:
        return None, set(), None
    folder = store.path(domain, now)
    old = pq.read_table(folder / CHUNKS_FILE, columns=["doc_id", "content_hash"]).to_pydict()
    had = dict(zip(old["doc_id"], old["content_hash"], strict=True))
    same = {d for d, h in zip(docs["doc_id"].to_pylist(), docs["content_hash"].to_pylist(), strict=True)
            if had.get(d) == h}
    return folder, same, manifest.get("tokens")


def _ivf_build(settings: Settings, store: IndexStore, domain: str, out: dict[str, list], encoder: str,
               force: bool) -> tuple[IVFBuild, int]:
    """How to build an IVF-PQ index of the chunk rows `out`, and how many vectors its quantizer will have
    encoded since it was fit. Between refits (the serving version is IVF-PQ, verified, same encoder,
    chunking and code size, and fewer than ivf_refit_fraction of the rows are new since the fit) the
    parent's quantizer is reused and its codes of unchanged chunks are copied; otherwise (or with
    --force) the quantizer is trained afresh."""
    ix, n = settings.index, len(out["doc_id"])
    spec = IVFPQSpec(nlist=ix.ivf_nlist or auto_nlist(n), m=ix.ivf_pq_m, nprobe=ix.ivf_nprobe,
                     refine_k=ix.ivf_refine_k)
    fresh = IVFBuild(spec, ix.ivf_train_vectors, ix.ivf_shard_vectors, ix.ivf_build_workers)
    now = store.current(domain)
    if force or n <= ix.exact_max_vectors or ix.scale_kind != "ivfpq" or now is None:
        return fresh, 0
    try:
        manifest = store.verify(domain, now)  # never build on a damaged version
    except CorruptArtifact as e:
        log.warning("IVF quantizer of %s/%s not reused: %s", domain, now, e)
        return fresh, 0
    built = manifest.get("index", {})
    if (built.get("kind") != "ivfpq_rerank" or built.get("pq_m") != spec.m or manifest.get("encoder") != encoder
            or manifest.get("chunking") != settings.chunking.identity()
            or (ix.ivf_nlist and built.get("nlist") != ix.ivf_nlist)):
        return fresh, 0
    folder = store.path(domain, now)
    old = pq.read_table(folder / CHUNKS_FILE, columns=["content_hash", "chunk_idx"]).to_pydict()
    pos = {(h, c): i for i, (h, c) in enumerate(zip(out["content_hash"], out["chunk_idx"], strict=True))}
    # a chunk is its content hash and number (content-addressed vectors); each new row is claimed once
    new_row = np.asarray([pos.pop((h, c), -1) for h, c in zip(old["content_hash"], old["chunk_idx"], strict=True)],
                         np.int64)
    since = n - int((new_row >= 0).sum()) + int(built.get("vectors_encoded_since_fit", 0))
    if since > ix.ivf_refit_fraction * n:
        return fresh, 0
    parent = read_index(folder, manifest)
    return IVFBuild(spec, ix.ivf_train_vectors, ix.ivf_shard_vectors, ix.ivf_build_workers,
                    trained=read_trained(folder), parent=parent.ivf, new_row=new_row), since


def _sections(entry, rows: list[int], cs: list[int], ce: list[int]) -> list[int]:
    if entry is None:
        return [-1] * len(rows)
    return chunk_sections(entry[0], [Chunk(k, 0, 0, cs[i], ce[i]) for k, i in enumerate(rows)])


def _add_map(doc_maps: dict[str, list], doc_id: str, entry) -> None:
    doc_maps["doc_id"].append(doc_id)
    if entry is None:
        for k in ("global_summary", "section_titles", "global_vec", "section_vecs", "title_vecs"):
            doc_maps[k].append(None)
        return
    m, v = entry
    doc_maps["global_summary"].append(m.global_summary)
    doc_maps["section_titles"].append([s.title for s in m.sections])
    doc_maps["global_vec"].append(v.global_vec.tolist())
    doc_maps["section_vecs"].append(v.section_vecs.tolist())
    doc_maps["title_vecs"].append((v.title_vecs if v.title_vecs is not None else np.zeros_like(v.section_vecs))
                                  .tolist())
