"""Index version files: the FAISS index and its chunk table, written into a staging
folder and loaded back (verified) into a pure `IndexedCorpus`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidestep.retrieval.index import DocSearcher, configure_search
from sidestep.retrieval.ivfpq import RerankedIndex
from sidestep.retrieval.search import IndexedCorpus, MapIndex, TokenView

from . import schemas
from .artifacts import CorruptArtifact, IndexStore
from .atomic import write_parquet, write_with
from .ivf import is_ivf, read_ivfpq, write_ivfpq

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.parquet"
MAPS_FILE = "maps.parquet"
GOLDEN_FILE = "golden.parquet"
GOLDEN_QUERIES = 5
GOLDEN_DEPTH = 10


def write_version_files(staged: Path, index: faiss.Index | RerankedIndex, chunks: pa.Table,
                        maps: pa.Table | None = None, golden_vector: Callable[[int], np.ndarray] | None = None) -> None:
    if isinstance(index, RerankedIndex):  # on-disk lists + the re-rank vectors (storage/ivf.py)
        write_ivfpq(staged, index.trained, [index.ivf], index.vectors)
    else:
        write_with(staged / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    if "section" not in chunks.column_names:
        chunks = chunks.append_column("section", pa.array([-1] * chunks.num_rows, pa.int32()))
    write_parquet(staged / CHUNKS_FILE, chunks.cast(schemas.INDEX_CHUNKS))
    write_parquet(staged / GOLDEN_FILE, golden_queries(index, chunks["doc_id"].to_pylist(), golden_vector))
    if maps is not None:
        write_parquet(staged / MAPS_FILE, maps)


def golden_queries(index: faiss.Index, doc_ids: list[str], vector: Callable[[int], np.ndarray] | None = None,
                   n: int = GOLDEN_QUERIES) -> pa.Table:
    """A few chunk rows whose vector must find their own document again when the version is loaded.

    `vector(row)` should come from outside the index (the publisher passes the embedding store's vector of
    the chunk row's document and chunk number), so that an index whose rows do not line up with its chunk
    table fails at build time already; without it the index's own vectors are used, which only proves at
    load that the files still belong together. Rows that cannot pass (a chunk duplicated in many
    documents) are skipped; when fewer than half of the tried rows pass, the build is refused."""
    tried = sorted({i * index.ntotal // (4 * n) for i in range(4 * n)}) if index.ntotal else []
    rows, vecs = [], []
    for r in tried:
        v = np.asarray(vector(r) if vector is not None else index.reconstruct(int(r)), np.float32)
        if _finds(index, doc_ids, v, doc_ids[r]):
            rows.append(r)
            vecs.append(v.tolist())
    if tried and len(rows) < len(tried) / 2:
        raise CorruptArtifact(f"only {len(rows)} of {len(tried)} chunk vectors find their own document in the new "
                              "index: its rows do not line up with its chunk table")
    rows, vecs = rows[:: max(1, len(rows) // n)][:n], vecs[:: max(1, len(rows) // n)][:n]
    return pa.table({"row": pa.array(rows, pa.int64()), "doc_id": [doc_ids[r] for r in rows],
                     "vector": pa.array(vecs, pa.list_(pa.float32()))})


def _finds(index: faiss.Index, doc_ids: list[str], vector: np.ndarray, doc: str) -> bool:
    """Is `doc` among the documents of the GOLDEN_DEPTH nearest chunk rows?"""
    _, rows = index.search(vector.reshape(1, -1), min(GOLDEN_DEPTH, index.ntotal))
    return doc in {doc_ids[r] for r in rows[0] if r >= 0}


def check_version(folder: Path, manifest: dict, index: faiss.Index, doc_ids: list[str]) -> None:
    """Counts and golden queries of a version; a mismatch raises CorruptArtifact."""
    name = f"{manifest.get('domain')}/{manifest.get('version')}"
    if index.ntotal != len(doc_ids):
        raise CorruptArtifact(f"{name}: the index has {index.ntotal} vectors but the chunk table {len(doc_ids)} rows")
    want = manifest.get("counts", {}).get("chunks")
    if want is not None and want != index.ntotal:
        raise CorruptArtifact(f"{name}: manifest counts {want} chunks, the index holds {index.ntotal}")
    if not (folder / GOLDEN_FILE).is_file():  # versions published before golden queries existed
        return
    g = pq.read_table(folder / GOLDEN_FILE).to_pydict()
    for i, (row, doc, vec) in enumerate(zip(g["row"], g["doc_id"], g["vector"], strict=True)):
        if not _finds(index, doc_ids, np.asarray(vec, np.float32), doc):
            raise CorruptArtifact(f"{name}: golden query {i} (chunk row {row}) did not find {doc!r} in its "
                                  f"nearest {GOLDEN_DEPTH} chunks")


def read_index(folder: Path, manifest: dict | None = None, *, nprobe: int | None = None,
               refine_k: int | None = None) -> faiss.Index | RerankedIndex:
    """A version's index: an IVF-PQ one memory-mapped with its re-rank vectors (search parameters: the
    arguments, else those the version was built with), any other kind read into memory."""
    if is_ivf(folder):
        built = (manifest or {}).get("index", {})
        return read_ivfpq(folder, nprobe=nprobe or built.get("nprobe", 16),
                          refine_k=refine_k or built.get("refine_k", 100))
    return faiss.read_index(str(folder / INDEX_FILE))


def validate_folder(folder: Path, manifest: dict) -> None:
    """check_version on a version folder before it becomes current (the publisher's last gate)."""
    index = read_index(folder, manifest)
    check_version(folder, manifest, index, pq.read_table(folder / CHUNKS_FILE, columns=["doc_id"])["doc_id"]
                  .to_pylist())


def _map_index(folder: Path, index: faiss.Index, doc_ids: list[str], sections: list[int]) -> MapIndex | None:
    """Document maps of a version, with the chunk vectors map search needs (exact indexes only)."""
    if not (folder / MAPS_FILE).is_file():
        return None
    t = pq.read_table(folder / MAPS_FILE).to_pydict()
    dim = index.d
    has = np.asarray([v is not None for v in t["global_vec"]])
    gv = np.zeros((len(has), dim), np.float32)
    if has.any():
        gv[has] = np.asarray([v for v in t["global_vec"] if v is not None], np.float32)
    svecs = [np.asarray(v, np.float32).reshape(-1, dim) if v is not None else np.zeros((0, dim), np.float32)
             for v in t["section_vecs"]]
    tvecs = [np.asarray(v, np.float32).reshape(-1, dim) if v is not None else np.zeros((0, dim), np.float32)
             for v in t.get("title_vecs", [None] * len(svecs))]  # versions sealed before heading vectors: none
    pos = {d: i for i, d in enumerate(t["doc_id"])}
    return MapIndex(doc_ids=t["doc_id"], global_vecs=gv, has_map=has, global_summaries=t["global_summary"],
                    section_vecs=svecs, title_vecs=tvecs, chunk_doc=np.asarray([pos[d] for d in doc_ids], np.int64),
                    chunk_section=np.asarray(sections, np.int64), chunk_vecs=index.reconstruct_n(0, index.ntotal))


def load_version(store: IndexStore, domain: str, version: str, *, verify: bool = True,
                 overfetch: int = 4, doc_score: str = "max", ef_search: int | None = None,
                 nprobe: int | None = None, refine_k: int | None = None) -> IndexedCorpus:
    """Load a published version; with verify, checksums are checked first, then counts and golden queries
(any failure → CorruptArtifact, so a serving replica keeps its old version)."""
    manifest = store.verify(domain, version) if verify else store.manifest(domain, version)
    folder = store.path(domain, version)
    index = read_index(folder, manifest, nprobe=nprobe, refine_k=refine_k)
    configure_search(index, ef_search)
    chunks = pq.read_table(folder / CHUNKS_FILE)
    doc_ids = chunks["doc_id"].to_pylist()
    sections = chunks["section"].to_pylist() if "section" in chunks.column_names else [-1] * len(doc_ids)
    if verify:
        check_version(folder, manifest, index, doc_ids)
    try:
        searcher = DocSearcher(index, doc_ids, overfetch=overfetch, doc_score=doc_score)
    except ValueError as e:
        raise CorruptArtifact(f"{domain}/{version}: {e}") from e
    return IndexedCorpus(
        domain=domain,
        version=version,
        searcher=searcher,
        titles=chunks["title"].to_pylist(),
        snippets=chunks["snippet"].to_pylist(),
        chunk_idx=chunks["chunk_idx"].to_pylist(),
        manifest=manifest,
        maps=_map_index(folder, index, doc_ids, sections) if isinstance(index, faiss.IndexFlat) else None,
    )


def load_current(store: IndexStore, domain: str, **kw) -> IndexedCorpus | None:
    v = store.current(domain)
    return load_version(store, domain, v, **kw) if v else None


def read_chunks(store: IndexStore, domain: str, version: str) -> pa.Table:
    return pq.read_table(store.path(domain, version) / CHUNKS_FILE)


def load_token_view(root, settings, domain: str, version: str, kind: str | None = None) -> TokenView:
    """Token vectors (float16 shards or the version's PQ codes: `kind`, by default
    settings.verify.token_store), word pieces and idf of one published index version."""
    from .tokens import PQTokenSource, TokenSource, has_pq, read_pieces

    store = IndexStore(root)
    folder = store.path(domain, version)
    manifest = store.manifest(domain, version)
    pieces = read_pieces(folder)
    if pieces is None:
        raise FileNotFoundError(f"index {domain}/{version} has no word pieces; republish it "
                                f"(`sidestep reindex --domain {domain} --force`) to verify against it")
    if (kind or settings.verify.token_store) == "pq":
        if not has_pq(folder):
            raise FileNotFoundError(f"index {domain}/{version} has no PQ token codes; republish it with "
                                    "verify.token_store = 'pq'")
        source = PQTokenSource(folder)
    else:
        source = TokenSource(root.embeddings(manifest["encoder"]), pq.read_table(folder / CHUNKS_FILE))
    return TokenView(source, pieces[0], pieces[1])
