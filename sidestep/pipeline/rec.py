"""Recommendation stages: fit_codebooks, finetune_tables, rebuild the item index.

Each stage is a plain function over (root, settings) so that flows, the command
line and tests share it; sidestep.tasks.rec wraps them in Prefect tasks (retries, tags).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.ingest.records import Interaction
from sidestep.rec.data import RecData, build_splits, popularity
from sidestep.rec.quantize import Codebook, CodebookSpec, diagnostics, drift, fit_codebook
from sidestep.rec.tables import fused_item_vectors, item_prior, model_from_state, model_state, unit_text
from sidestep.storage.artifacts import CorruptArtifact, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.paths import SHARED, DataRoot
from sidestep.storage.pins import active_pin, pinned_reason
from sidestep.storage.recstore import (
    TableVersion,
    codebook_store,
    codes_table,
    load_codebook,
    load_table_version,
    table_store,
    write_codebook,
    write_table_files,
)
from sidestep.storage.warehouse import Warehouse
from sidestep.text.encoder import model_dim

from .common import store_key

Log = Callable[[str], None]
MODES = ("scratch", "table-only", "full")


class RecError(RuntimeError):
    """A recommendation stage cannot run (no interactions, no codebook, missing pre-trained domain)."""


@dataclass
class Items:
    ids: list[str]
    hashes: list[str]
    vectors: np.ndarray  # (N, dim) unit pooled text vectors


def load_items(root: DataRoot, settings: Settings, domain: str) -> Items:
    """Every live item of a domain with its text vector (mean of its chunks' pooled vectors)."""
    docs = DocumentStore(root).read(domain, include_deleted=False).sort_by("doc_id")
    if docs.num_rows == 0:
        raise RecError(f"domain {domain!r} has no items; ingest it first")
    ids, hashes = docs["doc_id"].to_pylist(), docs["content_hash"].to_pylist()
    store = EmbeddingStore(root, store_key(settings), model_dim(settings.encoder.model_path))
    rows, pooled = store.gather(hashes)
    pos: dict[str, list[int]] = {}
    for i, h in enumerate(rows["content_hash"].to_pylist()):
        pos.setdefault(h, []).append(i)
    missing = sorted({h for h in hashes if h not in pos})
    if missing:
        raise RecError(f"{len(missing)} items of {domain!r} have no embeddings; run the embed step first")
    vecs = np.stack([pooled[pos[h]].mean(0) for h in hashes]).astype(np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return Items(ids, hashes, vecs)


def load_interactions(root: DataRoot, domain: str) -> list[Interaction]:
    t = DocumentStore(root).read_interactions(domain)
    if t.num_rows == 0:
        raise RecError(f"domain {domain!r} has no interactions; ingest a RecBole, UniSRec or LC-Rec source into it")
    cols = t.select(["user_id", "history", "target", "split"]).to_pydict()
    return [Interaction(u, tuple(h), tg, s) for u, h, tg, s in
            zip(cols["user_id"], cols["history"], cols["target"], cols["split"], strict=True)]


def interactions_fingerprint(root: DataRoot, domain: str) -> str:
    """What a domain's tables were trained on: changes when interactions are added, removed or edited."""
    t = DocumentStore(root).read_interactions(domain).select(["user_id", "history", "target", "split"])
    rows = sorted(zip(*(t[c].to_pylist() for c in t.column_names), strict=True), key=str)
    return digest(None, (json.dumps(row) for row in rows))


def rec_domains(root: DataRoot) -> list[str]:
    docs = DocumentStore(root)
    return [d for d in root.domains_with_documents() if docs.read_interactions(d).num_rows > 0]


# ----------------------------------------------------------------------------- fit_codebooks


def codebook_spec(settings: Settings, n_items: int) -> CodebookSpec:
    """The configured spec; a catalogue too small for 2**bits codewords gets fewer (k-means needs
    a few points per centroid), recorded in the manifest."""
    r = settings.rec
    bits = max(1, min(r.bits, int(math.log2(max(n_items // 4, 2)))))
    return CodebookSpec(positions=r.positions, bits=bits, opq=r.opq, sample=r.fit_sample)


def fit_codebooks(root: DataRoot, settings: Settings, domains: list[str] | None = None, *, refit: bool = False,
                  log: Log | None = None) -> dict:
    """Keep the current codebook unless a refit is asked for, there is none, or quantization error on the
    current items has drifted past the threshold; otherwise fit one on all domains' items and publish it."""
    domains = domains or rec_domains(root)
    if not domains:
        raise RecError("no domain with interactions: nothing to fit codebooks on")
    items = {d: load_items(root, settings, d) for d in domains}
    current = load_codebook(root)
    drifts = {d: round(drift(current[1], it.vectors), 4) for d, it in items.items()} if current and \
        current[1].dim == next(iter(items.values())).vectors.shape[1] else {}
    threshold = settings.rec.drift_threshold
    reason = ("refit requested" if refit else "no codebook yet" if current is None else
              "embedding dimension changed" if not drifts else
              f"drift {max(drifts.values()):.3f} > {threshold}" if max(drifts.values()) > threshold else None)
    if reason is None:
        return {"version": current[0], "refit": False, "drift": drifts, "reason": "within drift threshold"}
    x = np.concatenate([it.vectors for it in items.values()])
    spec = codebook_spec(settings, len(x))
    t0 = time.perf_counter()
    book = fit_codebook(x, spec)
    seconds = time.perf_counter() - t0
    diag = {d: {**diagnostics(book.encode(it.vectors), spec.codewords), "quant_error": book.error(it.vectors)}
            for d, it in items.items()}
    if log:
        log(f"codebook: fitted {spec.factory(book.dim)} on {len(x)} items in {seconds:.1f} s ({reason}); "
            f"fit error {book.fit_error:.4f}")
    fp = digest({"domains": sorted(domains), "n": len(x), "spec": spec.__dict__})
    version = new_version_name(fp)
    store = codebook_store(root)
    with store.lock(SHARED):
        store.clean_staging(SHARED)
        with store.staging(SHARED) as staged:
            meta = write_codebook(staged, book)
            store.publish(SHARED, staged, version, {**meta, "fingerprint": fp, "reason": reason, "seconds": seconds,
                                                    "fitted_on": {d: len(it.ids) for d, it in items.items()},
                                                    "diagnostics": diag})
    with Warehouse(root.eval_db()) as wh:
        wh.record_codebook(version, diag)
    return {"version": version, "refit": True, "reason": reason, "drift": drifts, "seconds": round(seconds, 2),
            "items": len(x), "codewords": spec.codewords, "positions": spec.positions,
            "diagnostics": {d: {k: v for k, v in m.items() if k != "entropy_per_position"} for d, m in diag.items()}}


def require_codebook(root: DataRoot) -> tuple[str, Codebook]:
    cur = load_codebook(root)
    if cur is None:
        raise RecError("no codebook published; run fit_codebooks first")
    return cur


# ----------------------------------------------------------------------------- data + model helpers


def domain_data(root: DataRoot, settings: Settings, domain: str) -> tuple[Items, RecData]:
    # fingerprinted before reading: interactions added meanwhile make the next nightly train again
    fingerprint = interactions_fingerprint(root, domain)
    items = load_items(root, settings, domain)
    data = build_splits(load_interactions(root, domain), items.ids, max_history=settings.rec.max_history)
    data.source_fingerprint = fingerprint
    if len(data.train) == 0 or len(data.valid) == 0:
        raise RecError(f"domain {domain!r}: {len(data.train)} training and {len(data.valid)} validation "
                       "pairs; leave-one-out needs users with at least 3 interactions")
    return items, data


def seq_config(settings: Settings):
    from sidestep.rec.tables import SeqConfig

    r = settings.rec
    return SeqConfig(hidden=r.hidden, layers=r.layers, heads=r.heads, inner=r.inner, dropout=r.dropout,
                     max_history=r.max_history, temperature=r.temperature)


def train_config(settings: Settings, mode: str | None = None, **overrides):
    """The training schedule of `mode`; table-only fine-tuning has its own (rec.table_epochs, table_lr)."""
    from sidestep.rec.training import TrainConfig

    r = settings.rec
    table = mode == "table-only"
    base = {"epochs": r.table_epochs if table else r.epochs, "batch_size": r.batch_size,
            "lr": r.table_lr if table else r.lr, "patience": r.patience, "max_seconds": r.max_train_seconds}
    return TrainConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# ----------------------------------------------------------------------------- finetune_tables


def start_model(root: DataRoot, settings: Settings, domain: str, mode: str, pretrained_from: str | None,
                codebook_version: str, codewords: int, positions: int, log: Log | None = None):
    """A fresh model (scratch), or the pre-trained domain's encoder with a table for this domain:
    copied from the pre-trained table when both share the codebook (codes mean the same there),
    fresh otherwise."""
    from sidestep.rec.tables import SeqRec

    if mode not in MODES:
        raise RecError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "scratch" or pretrained_from is None:
        if mode != "scratch":
            raise RecError(f"mode {mode!r} needs --pretrained-from DOMAIN (a domain with published tables)")
        return SeqRec(seq_config(settings), positions, codewords, [domain]), None
    pre = load_table_version(root, pretrained_from)
    if pre is None:
        raise RecError(f"domain {pretrained_from!r} has no published tables to start from; "
                       f"run `sidestep eval-rec ... --domain {pretrained_from}` first")
    state = pre.model_state
    if (state["positions"], state["codewords"]) != (positions, codewords):
        raise RecError(f"{pretrained_from!r} was trained on {state['positions']}x{state['codewords']} codes, "
                       f"the current codebook has {positions}x{codewords}")
    model = model_from_state(state, pretrained_from)
    same_book = state["codebook_version"] == codebook_version
    model.add_domain(domain, init_from=pretrained_from if same_book else None)
    if log and not same_book:
        log(f"{pretrained_from!r} used codebook {state['codebook_version']}, current is {codebook_version}: "
            "the new table starts fresh, only the encoder transfers")
    return model, pre


def fusion_inputs(items: Items, data: RecData):
    """What fusion adds to the code logits: (N+1, dim) unit text rows and the (N,) log-count prior of
    the training split's interactions (what the model was trained on; the popularity baseline's counts)."""
    return unit_text(items.vectors), item_prior(popularity(data))


def fit_text_fusion(model, settings: Settings, domain: str, codes: np.ndarray, items: Items, data: RecData,
                    log: Log | None = None) -> dict:
    """Choose the domain's fusion weights (text, popularity) on the valid split (after training) and set
    them on the model; returns {"weight", "decay", "popularity", "valid_ndcg@10" (fused, at those
    weights), "valid_ndcg@10_by_weight" ("text,popularity" -> NDCG@10)}. (A manifest's metrics.valid is
    the early-stopping figure: the codes alone.)"""
    import torch

    from sidestep.rec.training import choose_text_weight

    r = settings.rec
    text, prior = fusion_inputs(items, data)
    fusion, by_weight = choose_text_weight(model, domain, torch.from_numpy(codes), text, data.valid,
                                           tuple(r.text_weights), decay=r.text_decay, prior=prior,
                                           prior_weights=tuple(r.popularity_weights))
    model.fusion[domain] = fusion
    best = (fusion.weight, fusion.popularity)
    if log:
        log(f"{domain} fusion: text weight {fusion.weight:g}, popularity weight {fusion.popularity:g} "
            f"(valid ndcg@10 {by_weight[best]:.4f}; codes alone {by_weight[(0.0, 0.0)]:.4f})")
    return {**fusion.to_dict(), "valid_ndcg@10": by_weight[best],
            "valid_ndcg@10_by_weight": {f"{w:g},{b:g}": v for (w, b), v in by_weight.items()}}


def publish_tables(root: DataRoot, domain: str, items: Items, codes: np.ndarray, model, codebook_version: str,
                   manifest: dict, prior: np.ndarray, keep_versions: int = 5) -> str:
    """Write and publish a version: codes, the model's state, the fused item index (`prior`: (N,)
    log counts, `item_prior`)."""
    store = table_store(root)
    fp = digest({k: manifest.get(k) for k in ("mode", "pretrained_from", "config")}, items.hashes)
    version = new_version_name(fp)
    with store.lock(domain):
        store.clean_staging(domain)
        with store.staging(domain) as staged:
            write_table_files(staged, codes_table(items.ids, items.hashes, codes),
                              model_state(model, domain, codebook_version),
                              fused_item_vectors(model, domain, codes, items.vectors, prior))
            store.publish(domain, staged, version, {**manifest, "fingerprint": fp, "codebook": codebook_version,
                                                    "counts": {"items": len(items.ids)}})
    store.gc(domain, keep_versions)
    return version


def rebuild_item_index(root: DataRoot, settings: Settings, domain: str) -> dict:
    """New or changed items get codes from the current codebook (no refit) and vectors from the current
    table; the model is untouched. A table trained on another codebook cannot be reused: retrain."""
    cur = load_table_version(root, domain)
    if cur is None:
        return {"domain": domain, "published": False, "reason": "no tables yet; run finetune_tables"}
    book_version, book = require_codebook(root)
    if cur.model_state["codebook_version"] != book_version:
        return {"domain": domain, "published": False, "version": cur.version,
                "reason": f"tables use codebook {cur.model_state['codebook_version']}, current is {book_version}: "
                          "retrain with finetune_tables"}
    items = load_items(root, settings, domain)
    if items.hashes == cur.hashes and items.ids == cur.item_ids:
        return {"domain": domain, "published": False, "version": cur.version, "reason": "unchanged items"}
    codes = book.encode(items.vectors).astype(np.int64)
    model = model_from_state(cur.model_state, domain)
    manifest = {k: v for k, v in cur.manifest.items() if k in ("mode", "pretrained_from", "config", "metrics",
                                                                  "interactions", "warm_from", "text_fusion")}
    version = publish_tables(root, domain, items, codes, model, book_version,
                             {**manifest, "rebuilt_from": cur.version}, prior=carried_prior(cur, items.ids),
                             keep_versions=settings.index.keep_versions)
    return {"domain": domain, "published": True, "version": version, "items": len(items.ids),
            "new_items": len(set(items.ids) - set(cur.item_ids))}


def carried_prior(cur: TableVersion, item_ids: list[str]) -> np.ndarray:
    """The log-count prior of `item_ids` as the current version's index holds it (the counts the model
    was fit with); new items, and every item of a version published before the prior existed, get 0."""
    if "popularity" not in cur.model_state.get("text_fusion", {}):
        return np.zeros(len(item_ids), dtype=np.float32)
    old = cur.items_index.reconstruct_n(0, cur.items_index.ntotal)[:, -1]
    at = cur.item_index  # item id -> 1-based item index
    return np.array([old[at[i] - 1] if i in at else 0.0 for i in item_ids], dtype=np.float32)



def finetune_tables(root: DataRoot, settings: Settings, domain: str, mode: str = "scratch",
                    pretrained_from: str | None = None, epochs: int | None = None, log: Log | None = None,
                    warm: TableVersion | None = None) -> dict:
    """Train and publish a domain's tables (no controls: that is eval-rec's job).

    With `warm` (the domain's serving tables), training starts from them: the whole model when they
    share the current codebook, only the sequence encoder when the codebook was refit (codes mean
    something else there, so the table starts fresh)."""
    import torch

    from sidestep.rec.training import evaluate, fit_domain

    book_version, book = require_codebook(root)
    items, data = domain_data(root, settings, domain)
    codes = book.encode(items.vectors).astype(np.int64)
    if warm is not None:
        model, mode = warm_model(settings, domain, warm, book_version, book.spec.codewords, book.spec.positions)
    else:
        model, _ = start_model(root, settings, domain, mode, pretrained_from, book_version, book.spec.codewords,
                               book.spec.positions, log)
    fit_mode = "full" if mode.startswith("warm") else mode
    res = fit_domain(model, domain, torch.from_numpy(codes), data, fit_mode,
                     train_config(settings, fit_mode, epochs=epochs), log=log)
    fusion = fit_text_fusion(model, settings, domain, codes, items, data, log)
    text, prior = fusion_inputs(items, data)
    test, _ = evaluate(model, domain, torch.from_numpy(codes), data.test, text=text, prior=prior)
    version = publish_tables(root, domain, items, codes, model, book_version, {
        "mode": mode, "pretrained_from": pretrained_from, "config": model.cfg.to_dict(),
        "warm_from": warm.version if warm is not None else None,
        "interactions": data.source_fingerprint, "text_fusion": fusion,
        "metrics": {"valid": res.best_valid, "test": test},
        "training": {"seconds": round(res.seconds, 2), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch}},
        prior=prior.numpy(), keep_versions=settings.index.keep_versions)
    return {"domain": domain, "version": version, "mode": mode, "valid": res.best_valid, "test": test,
            "seconds": round(res.seconds, 2), "epochs_run": res.epochs_run, "items": len(items.ids)}


def warm_model(settings: Settings, domain: str, cur: TableVersion, book_version: str, codewords: int,
               positions: int):
    """(model, mode): the serving model itself ("warm"), or its encoder with a fresh table ("warm-encoder")."""
    from sidestep.rec.tables import SeqRec

    state = cur.model_state
    if state["codebook_version"] == book_version:
        return model_from_state(state, domain), "warm"
    model = SeqRec(seq_config(settings), positions, codewords, [domain])
    if (state["positions"], state["codewords"]) == (positions, codewords) and state["config"] == model.cfg.to_dict():
        model.encoder.load_state_dict(state["encoder"])
        return model, "warm-encoder"
    return model, "scratch"  # another code shape or model size: nothing can carry over


def refresh_tables(root: DataRoot, settings: Settings, domain: str, log: Log | None = None) -> dict:
    """The nightly step for one domain:
    - no tables yet: train from scratch;
    - codebook refit since: warm-start from the serving encoder, fresh table, the full epoch budget;
    - interactions changed: warm-start from the serving model for `rec.warm_epochs`;
    - otherwise only re-encode new or changed items with the current codebook and table (no training)."""
    pin = active_pin(table_store(root), domain)  # a rollback holds the tables until unpinned or new documents
    if pin is not None:
        return {"domain": domain, "published": False, "version": table_store(root).current(domain),
                "reason": pinned_reason(pin, domain), "pinned": True, "trained": False}
    try:
        cur = load_table_version(root, domain)  # verified: warm starts never begin from damaged weights
    except CorruptArtifact as e:
        if log:
            log(f"tables of {domain!r} failed verification ({e}); training from scratch")
        cur = None
    book_version, _ = require_codebook(root)
    if cur is None:
        out = finetune_tables(root, settings, domain, "scratch", log=log)
        return {**out, "trained": True, "published": True}
    if cur.model_state["codebook_version"] != book_version:
        out = finetune_tables(root, settings, domain, log=log, warm=cur)
        return {**out, "trained": True, "published": True}
    if cur.manifest.get("interactions") != interactions_fingerprint(root, domain):  # none recorded: changed
        out = finetune_tables(root, settings, domain, epochs=settings.rec.warm_epochs, log=log, warm=cur)
        return {**out, "trained": True, "published": True}
    return {**rebuild_item_index(root, settings, domain), "trained": False}


def pretrain_tables(root: DataRoot, settings: Settings, domains: list[str], epochs: int | None = None,
                    log: Log | None = None) -> dict:
    """Mixed-domain pre-training (in-batch negatives across domains + semi-synthetic negatives); every
    domain's table is published with the one shared encoder, ready for table-only fine-tuning elsewhere."""
    import torch

    from sidestep.rec.tables import SeqRec
    from sidestep.rec.training import evaluate, pretrain

    if len(set(domains)) != len(domains) or not domains:
        raise RecError("pretrain needs one or more distinct domains")
    book_version, book = require_codebook(root)
    loaded = {d: domain_data(root, settings, d) for d in domains}
    codes = {d: book.encode(items.vectors).astype(np.int64) for d, (items, _) in loaded.items()}
    model = SeqRec(seq_config(settings), book.spec.positions, book.spec.codewords, list(domains))
    res = pretrain(model, {d: (torch.from_numpy(codes[d]), data) for d, (_, data) in loaded.items()},
                   train_config(settings, epochs=epochs), log=log)
    out = {"codebook_version": book_version, "seconds": round(res.seconds, 2), "epochs_run": res.epochs_run,
           "best_epoch": res.best_epoch, "domains": {}}
    for d, (items, data) in loaded.items():
        fusion = fit_text_fusion(model, settings, d, codes[d], items, data, log)
        text, prior = fusion_inputs(items, data)
        test, _ = evaluate(model, d, torch.from_numpy(codes[d]), data.test, text=text, prior=prior)
        version = publish_tables(root, d, items, codes[d], model, book_version, {
            "mode": "pretrain", "pretrained_with": list(domains), "config": model.cfg.to_dict(),
            "interactions": data.source_fingerprint, "text_fusion": fusion,
            "metrics": {"test": test}, "training": {"seconds": round(res.seconds, 2), "epochs_run": res.epochs_run}},
            prior=prior.numpy(), keep_versions=settings.index.keep_versions)
        out["domains"][d] = {"version": version, "test": test}
    return out
