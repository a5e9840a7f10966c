"""Codebook and lookup-table versions: the files inside `codebooks/<version>/` and
`tables/<domain>/<version>/`, written into a staging folder and loaded back verified.

A tables version is self-contained for serving: the domain's codes, its table,
the sequence encoder it was trained with and the FAISS index over its item
vectors; its manifest names the codebook version the codes came from.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidestep.rec.quantize import Codebook, CodebookSpec

from .artifacts import IndexStore
from .atomic import write_bytes, write_parquet, write_with
from .paths import SHARED, DataRoot

CODEBOOK_FILE = "codebook.faiss"
CODES_FILE = "codes.parquet"
MODEL_FILE = "model.pt"
ITEMS_INDEX_FILE = "items.faiss"


def codebook_store(root: DataRoot) -> IndexStore:
    return IndexStore(root, "codebooks")


def table_store(root: DataRoot) -> IndexStore:
    return IndexStore(root, "tables")


# ----------------------------------------------------------------------------- codebooks


def write_codebook(staged: Path, book: Codebook) -> dict:
    write_bytes(staged / CODEBOOK_FILE, book.to_bytes())
    spec = book.spec
    return {"spec": {"positions": spec.positions, "bits": spec.bits, "opq": spec.opq, "sample": spec.sample,
                     "seed": spec.seed, "opq_iterations": spec.opq_iterations},
            "fit_error": book.fit_error, "dim": book.dim}


def load_codebook(root: DataRoot, version: str | None = None) -> tuple[str, Codebook] | None:
    store = codebook_store(root)
    version = version or store.current(SHARED)
    if version is None:
        return None
    manifest = store.verify(SHARED, version)
    data = (store.path(SHARED, version) / CODEBOOK_FILE).read_bytes()
    spec = CodebookSpec(**manifest["spec"])
    return version, Codebook.from_bytes(data, spec, float(manifest["fit_error"]))


def codebook_usage(root: DataRoot, domain: str | None = None) -> dict | None:
    """The current codebook's code usage as its manifest recorded it when it was fitted: per domain the
    codeword entropy of each code position (``entropy_per_position``, bits), dead codewords and colliding
    items; None when no codebook is published."""
    store = codebook_store(root)
    version = store.current(SHARED)
    if version is None:
        return None
    manifest = store.manifest(SHARED, version)
    diag = {d: m for d, m in manifest.get("diagnostics", {}).items() if domain is None or d == domain}
    spec = manifest.get("spec", {})
    return {"version": version, "created_at": manifest.get("created_at"), "positions": spec.get("positions"),
            "codewords": 1 << spec["bits"] if "bits" in spec else None, "diagnostics": diag}


# ----------------------------------------------------------------------------- codes


def codes_table(item_ids: list[str], content_hashes: list[str], codes: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(codes, dtype=np.int32).reshape(-1))
    return pa.table({
        "item_id": pa.array(item_ids, pa.string()),
        "content_hash": pa.array(content_hashes, pa.string()),
        "codes": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1]),
    })


def read_codes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    t = pq.read_table(path)
    width = t.schema.field("codes").type.list_size
    flat = t["codes"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return t["item_id"].to_pylist(), t["content_hash"].to_pylist(), flat.reshape(-1, width).astype(np.int64)


# ----------------------------------------------------------------------------- tables


@dataclass
class TableVersion:
    domain: str
    version: str
    manifest: dict
    item_ids: list[str]
    hashes: list[str]
    codes: np.ndarray
    model_state: dict  # {"config": ..., "encoder": state_dict, "table": state_dict}
    items_index: faiss.Index

    @property
    def item_index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


def write_table_files(staged: Path, codes: pa.Table, model_state: dict, item_vectors: np.ndarray) -> None:
    """codes.parquet, model.pt (config + encoder + this domain's table) and items.faiss (exact inner
    product over `item_vectors`: unit code vectors, unit text vectors and the log-count prior, see
    sidestep.rec.tables.fused_item_vectors)."""
    import torch

    write_parquet(staged / CODES_FILE, codes)
    buf = io.BytesIO()
    torch.save(model_state, buf)
    write_bytes(staged / MODEL_FILE, buf.getvalue())
    vecs = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    write_with(staged / ITEMS_INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))


def load_table_version(root: DataRoot, domain: str, version: str | None = None, *, verify: bool = True,
                       ) -> TableVersion | None:
    import torch

    store = table_store(root)
    version = version or store.current(domain)
    if version is None:
        return None
    manifest = store.verify(domain, version) if verify else store.manifest(domain, version)
    folder = store.path(domain, version)
    item_ids, hashes, codes = read_codes(folder / CODES_FILE)
    state = torch.load(io.BytesIO((folder / MODEL_FILE).read_bytes()), map_location="cpu", weights_only=True)
    index = faiss.read_index(str(folder / ITEMS_INDEX_FILE))
    if index.ntotal != len(item_ids):
        raise ValueError(f"{domain}/{version}: items.faiss holds {index.ntotal} vectors for {len(item_ids)} items")
    return TableVersion(domain, version, manifest, item_ids, hashes, codes, state, index)


def manifest_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)
