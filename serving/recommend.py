"""The recommendation service a replica runs: each domain's published tables + hot reload.

Plain Python (no Ray), like SearchService. A history is encoded by the
sequence model over the domain's lookup tables; items come from the FAISS index
built at publish time over unit code vectors, unit text vectors and the item's
log-count prior, so one inner product with [user / temperature, weight * text
user, popularity weight] is the model's fused logit (`sidestep.rec.tables.TextFusion`). The history's own items
then get the model's learned repeat bias, exactly as evaluation scores them, so `score` is the
logit `eval-rec` ranks by. Tables published before text fusion have code vectors
only and are served by cosine / temperature plus the repeat bias, the same scale;
those published before the prior have no prior column and are served without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sidestep.config import Settings
from sidestep.rec.data import encode_history
from sidestep.storage.paths import DataRoot
from sidestep.storage.recstore import TableVersion, load_table_version, table_store

from .versions import VersionedDomains


@dataclass
class LoadedTables:
    tables: TableVersion
    model: object  # sidestep.rec.tables.SeqRec
    items: object  # torch (N+1, H) item matrix, row 0 = padding
    index: dict[str, int]
    vectors: np.ndarray  # (N, index dim): the index's rows, to score history items exactly
    text: object | None = None  # torch (N+1, dim) unit text vectors (row 0 zero), from the fused index
    prior: bool = False  # the index's last column is the log-count prior (tables published since it exists)


def _load(root: DataRoot, domain: str, version: str) -> LoadedTables:
    import torch

    from sidestep.rec.tables import model_from_state

    tv = load_table_version(root, domain, version)
    model = model_from_state(tv.model_state, domain)
    with torch.no_grad():
        items = model.tables[domain].item_matrix(torch.from_numpy(tv.codes))
    hidden = model.cfg.hidden
    vectors = tv.items_index.reconstruct_n(0, tv.items_index.ntotal)
    prior = "popularity" in tv.model_state.get("text_fusion", {})  # the index ends with the prior column
    text = None
    if vectors.shape[1] > hidden + prior:  # the fused index: code part, text part, [prior]
        part = vectors[:, hidden:vectors.shape[1] - prior]
        text = torch.cat([torch.zeros(1, part.shape[1]), torch.from_numpy(part.copy())])
    return LoadedTables(tv, model, items, tv.item_index, vectors, text, prior)


class RecommendService(VersionedDomains):
    what = "tables"

    def __init__(self, settings: Settings, root: DataRoot):
        super().__init__(table_store(root))
        self.settings = settings
        self.root = root
        self.refresh()

    def load(self, domain: str, version: str) -> LoadedTables:
        return _load(self.root, domain, version)

    def version_of(self, loaded: LoadedTables) -> str:
        return loaded.tables.version

    def describe(self, loaded: LoadedTables) -> str:
        return f"({len(loaded.tables.item_ids)} items)"

    def domains(self) -> list[str]:
        return sorted(self.loaded)

    def recommend(self, history: list[str], k: int = 10, domain: str | None = None,
                  exclude_history: bool = False) -> dict:
        import torch

        from sidestep.rec.tables import fused_query, text_user_vectors

        t0 = time.perf_counter()
        if not 1 <= k <= self.settings.serve.max_k:
            raise ValueError(f"k must be in 1..{self.settings.serve.max_k}, got {k}")
        if domain is None:
            if len(self.loaded) != 1:
                raise ValueError(f"no domain given; choose one of {self.domains()}")
            domain = next(iter(self.loaded))
        if domain not in self.loaded:
            raise LookupError(f"no published tables for domain {domain!r}; domains with tables: {self.domains()}")
        lt = self.get(domain)
        known, unknown = encode_history(history, lt.index, max_history=lt.model.cfg.max_history)
        out = {"index_version": lt.tables.version, "domain": domain, "items": [], "unknown_items": unknown}
        if len(known) == 0:
            out["note"] = "no item of the history is known to this domain: nothing to recommend from"
            out["timings_ms"] = {"total": round((time.perf_counter() - t0) * 1e3, 3)}
            return out
        with torch.no_grad():
            hist, lengths = torch.from_numpy(known).unsqueeze(0), torch.tensor([len(known)])
            user = lt.model.user_vectors(domain, lt.items, hist, lengths)
            if lt.text is not None:
                fusion = lt.model.fusion[domain]
                query = fused_query(lt.model, domain, user, text_user_vectors(lt.text, hist, lengths, fusion.decay),
                                    prior=lt.prior)
            else:
                query = np.ascontiguousarray(user.numpy() / lt.model.cfg.temperature, np.float32)
            repeat = lt.model.encoder.repeat
            bias = 0.0 if repeat is None else float(repeat)
        t1 = time.perf_counter()
        seen = sorted(set(known.tolist()))
        # k + |history| from the index covers a negative repeat bias; the history's own items are scored
        # exactly with the bias added, which covers a positive one
        scores, ids = lt.tables.items_index.search(query, min(k + len(seen), lt.tables.items_index.ntotal))
        cand = {int(i): float(s) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0}
        rows = np.asarray(seen, dtype=np.int64) - 1
        for i, s in zip(rows.tolist(), (lt.vectors[rows] @ query[0]).tolist(), strict=True):
            cand[i] = s + bias
        if exclude_history:
            for i in rows.tolist():
                cand.pop(i, None)
        top = sorted(cand.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        items = [{"item_id": lt.tables.item_ids[i], "score": s} for i, s in top]
        out["items"] = items
        out["timings_ms"] = {"encode_history": round((t1 - t0) * 1e3, 3),
                             "search": round((time.perf_counter() - t1) * 1e3, 3),
                             "total": round((time.perf_counter() - t0) * 1e3, 3)}
        return out

    def health(self) -> dict:
        unavailable = self.unavailable()
        status = "ok" if not unavailable else "degraded" if self.loaded else "no_tables"
        return {"status": status,
                "domains": {d: lt.tables.version for d, lt in sorted(self.loaded.items())},
                "errors": dict(self.errors), "fallback": dict(self.fallback), "unavailable": unavailable,
                "bad_entries": dict(self.bad_entries)}

    def heartbeat(self) -> dict[str, dict[str, str]]:
        return {"tables": self.served()}
