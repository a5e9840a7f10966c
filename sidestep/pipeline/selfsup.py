"""train_verifier_self_supervised: a domain's verifier from its own stored text, no judgment read.

Each titled document gives one query, its title, whose one positive is the document's text without
the title (sidestep.verify.pseudo); structural near-misses of that text (sidestep.verify.nearmiss) must
rank below it. The titled documents are split three ways, so no held-out document's title trained
anything and no held-out document is a training list's candidate:

- fit: their titles are the training lists (recall over the fit documents only);
- validation: early stopping, the query adapter's epoch and `verify_top` are chosen on their titles;
- gate: their titles decide publication and nothing else. Each gate list is the title's whole recall list
  followed by the near-misses of its own document (gain 0), the self-supervised task as trained. The
  trained verifier (recall -> verify, as served) must beat both untrained rankers, pooled cosine (recall's
  order) and MaxSim over the same tokens, in mean nDCG@10 (sidestep.verify.gate); otherwise nothing is
  published. The same figures over the recall lists alone (no near-miss in them) are reported beside it.

Every ranker reads the same title-free documents: a title query would otherwise find itself verbatim
inside its positive, which no real query does. The training itself is the labelled path's: the query
adapter (`fit_query_adapter`), `fit`, `choose_verify_top`, `publish_verifier`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.retrieval.index import Hit
from sidestep.retrieval.search import TokenView, maxsim_rerank
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import publish_verifier
from sidestep.storage.warehouse import Warehouse
from sidestep.verify.candidates import VERIFY_TOP_CHOICES, cascade, prescore
from sidestep.verify.features import FlatTokens, flatten_tokens
from sidestep.verify.gate import GateResult, gate
from sidestep.verify.model import VerifierConfig, choose_verify_top, fit, n_parameters, score
from sidestep.verify.nearmiss import near_misses
from sidestep.verify.pseudo import HeldOutList, held_out_lists, pseudo_lists, recall_rows, title_docs

from .common import encoder_for
from .verifier import _adapter_summary, _encode_texts, fit_query_adapter

MIN_TITLED_DOCS = 20  # fewer, and the three parts are too small to train on or to decide anything


@dataclass
class MemoryTokens:
    """A token source over token vectors held in memory (the title-free re-encoding), keyed by doc id."""

    tokens: dict[str, np.ndarray]
    kind: str = "float16"

    def docs(self, doc_ids: list[str]) -> list[np.ndarray]:
        return [self.tokens[d] for d in doc_ids]

    def flat(self, doc_ids: list[str], max_tokens: int) -> FlatTokens:
        return flatten_tokens(self.docs(doc_ids), max_tokens)


def split_documents(n: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions 0..n-1 split at random into (fit, validation, gate); validation and gate get
    `held_out` of n each (at least 2 each), fit the rest."""
    k = max(2, int(round(n * held_out)))
    if n < 2 * k + 2:
        raise ValueError(f"{n} documents are too few to hold out {k} + {k}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[2 * k:]), np.sort(order[:k]), np.sort(order[k:2 * k])


def _gate_scores(model, lists: list[HeldOutList], view: TokenView, keys: list[list[str]], qtoks: list[np.ndarray],
                 max_doc_tokens: int) -> tuple[GateResult, GateResult]:
    """The three rankers over the gate queries' lists (keys[j]: the doc ids of list j's rows); the verifier
    as served (the top `verify_top` by the pre-score read, the rest below them). Returns the gate over the
    whole self-supervised lists (recall list + the near-misses of the query's document) and over the recall
    lists alone."""
    full = score(model, [h.cands for h in lists])
    top = model.cfg.verify_top

    def served(s: np.ndarray, glob) -> np.ndarray:
        return cascade(prescore(glob), s, top) if top and top < len(s) else s

    ms = [maxsim_rerank(view, q, ids, max_doc_tokens)[0] for q, ids in zip(qtoks, keys, strict=True)]
    whole = gate([served(s, h.cands.glob) for s, h in zip(full, lists, strict=True)], ms,
                 [h.recall for h in lists], [h.gains for h in lists])
    n = [len(h.top) for h in lists]
    plain = gate([served(s[:k], h.cands.glob[:k]) for s, h, k in zip(full, lists, n, strict=True)],
                 [m[:k] for m, k in zip(ms, n, strict=True)], [h.recall[:k] for h, k in zip(lists, n, strict=True)],
                 [h.gains[:k] for h, k in zip(lists, n, strict=True)])
    return whole, plain


def train_verifier_self_supervised(root: DataRoot, settings: Settings, domain: str, *, seed: int = 0,
                                   log=print) -> dict:
    """Train DOMAIN's verifier on self-supervised lists from its stored documents and publish it only if
    it passes the gate. Returns the figures either way (`published`, `reason`, `gate`)."""
    t0 = time.perf_counter()
    v = settings.verify
    corpus = load_current(IndexStore(root), domain, overfetch=settings.index.chunk_overfetch,
                          doc_score=settings.index.doc_score)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    docs = DocumentStore(root).read(domain, include_deleted=False)
    doc_ids, titles, texts = (docs[c].to_pylist() for c in ("doc_id", "title", "text"))
    pool = title_docs(titles, texts, v.self_supervised_docs, seed)
    out = {"domain": domain, "self_supervised": True, "index_version": corpus.version, "titled_documents": len(pool),
           "published": False, "version": None}
    if len(pool) < MIN_TITLED_DOCS:
        reason = (f"only {len(pool)} of {len(doc_ids)} documents of {domain!r} have a title of at least three words "
                  f"and a text; self-supervised training needs at least {MIN_TITLED_DOCS}: nothing is published")
        log(reason)
        return {**out, "reason": reason, "seconds": round(time.perf_counter() - t0, 1)}
    fit_pos, val_pos, gate_pos = split_documents(len(pool), v.self_supervised_held_out, seed)
    idf = load_token_view(root, settings, domain, corpus.version, kind=v.train_token_store).idf
    enc = encoder_for(settings)
    log(f"self-supervised lists: {len(pool)} titled documents of {domain!r} re-encoded without their titles; "
        f"{len(fit_pos)} train, {len(val_pos)} validation, {len(gate_pos)} gate")
    encoded = _encode_texts(enc, [("", texts[i]) for i in pool])
    keys = [doc_ids[i] for i in pool]
    qtexts = [titles[i] for i in pool]
    pooled, qtoks = enc.encode_queries_with_tokens(qtexts)
    qpieces = enc.query_ids(qtexts)
    view = TokenView(MemoryTokens({d: e[0] for d, e in zip(keys, encoded, strict=True)}),
                     {d: e[1] for d, e in zip(keys, encoded, strict=True)}, idf)
    fit_mask = np.zeros(len(pool), bool)
    fit_mask[fit_pos] = True
    # the query adapter's lists: recall's top `adapter_top` of each fit title (over the fit documents) and
    # validation title (over all), plus its own document
    scores = np.concatenate([s for _, s in recall_rows(pooled, encoded)])
    ad_q = np.concatenate([fit_pos, val_pos])
    hits = []
    for k in ad_q:
        row = np.where(fit_mask, scores[k], -np.inf) if fit_mask[k] else scores[k]
        top = np.argsort(-row, kind="stable")[:min(v.adapter_top, int(np.isfinite(row).sum()))]
        hits.append([Hit(keys[d], float(row[d]), -1) for d in top])
    adapter, adapter_curve = fit_query_adapter(
        [str(k) for k in ad_q], [qtoks[k] for k in ad_q], hits, {str(k): {keys[k]: 1} for k in ad_q},
        set(range(len(fit_pos), len(ad_q))), view, settings, enc.dim, seed=seed, log=log)
    # near-misses of every titled document for its own title, encoded in one pass: the fit documents' join their
    # training lists, the held-out ones' their validation and gate lists
    nm_items, nm_owner, kinds = [], [], Counter()
    for k in range(len(pool)):
        for nm in near_misses(qtexts[k], texts[pool[k]], n=v.near_misses, seed=seed):
            nm_items.append(("", nm.text))
            nm_owner.append(k)
            if fit_mask[k]:
                kinds[nm.kind] += 1
    log(f"near-misses: {len(nm_items)} ({dict(kinds)} of the training documents); encoding")
    near: list[list] = [[] for _ in pool]
    for k, e in zip(nm_owner, _encode_texts(enc, nm_items), strict=True):
        view.source.tokens[f"{keys[k]}#near-miss-{len(near[k])}"] = e[0]
        view.pieces[f"{keys[k]}#near-miss-{len(near[k])}"] = e[1]
        near[k].append(e)
    cap = VerifierConfig().max_query_tokens
    examples = pseudo_lists(pooled[fit_pos], [qtoks[k] for k in fit_pos], [qpieces[k] for k in fit_pos],
                            fit_pos.tolist(), encoded, idf, candidates=v.candidates, max_doc_tokens=v.max_doc_tokens,
                            train_top=v.train_top, max_query_tokens=cap, adapter=adapter, allowed=fit_mask,
                            near=[near[k] for k in fit_pos])

    def held(part: np.ndarray) -> list[HeldOutList]:
        return held_out_lists(pooled[part], [qtoks[k] for k in part], [qpieces[k] for k in part], part.tolist(),
                              encoded, idf, candidates=v.candidates, max_doc_tokens=v.max_doc_tokens,
                              max_query_tokens=cap, adapter=adapter, near=[near[k] for k in part])

    val = [(h.cands, h.gains) for h in held(val_pos)]
    gate_lists = held(gate_pos)
    pairs = sum(len(e.pairs) for e in examples)
    log(f"training lists: {len(examples)} self-supervised ({pairs} near-miss pairs), {len(val)} validation, "
        f"{len(gate_lists)} gate queries ({time.perf_counter() - t0:.0f} s to build)")
    out.update(train_lists=len(examples), near_misses=dict(kinds), near_miss_pairs=pairs, val_queries=len(val),
               gate_queries=len(gate_lists), held_out_documents=[keys[k] for k in np.concatenate([val_pos, gate_pos])])
    if not examples:
        reason = "no training list: recall found no fit title's own document among its candidates"
        log(reason)
        return {**out, "reason": reason, "seconds": round(time.perf_counter() - t0, 1)}
    model, curve = fit(examples, val, VerifierConfig(), enc.dim, epochs=v.epochs, near_miss_weight=v.near_miss_weight,
                       seed=seed, patience=v.patience, log=log)
    with torch.no_grad():
        model.adapter.copy_(adapter)
    best = max(curve, key=lambda c: c["val_ndcg10"]) if curve else {}
    top, top_ndcg = choose_verify_top(model, val, choices=[k for k in VERIFY_TOP_CHOICES
                                                           if not v.train_top or k <= v.train_top])
    model.cfg = replace(model.cfg, verify_top=top)
    row_keys = [[keys[d] for d in h.top] + [f"{keys[k]}#near-miss-{i}" for i in range(h.n_near)]
                for k, h in zip(gate_pos, gate_lists, strict=True)]
    g, plain = _gate_scores(model, gate_lists, view, row_keys, [qtoks[k] for k in gate_pos], v.max_doc_tokens)
    out.update(recall_lists_only=plain.as_dict(), best_epoch=best.get("epoch"), val_ndcg10=best.get("val_ndcg10"),
               epochs_run=len(curve), verify_top=top, parameters=n_parameters(model), gate=g.as_dict(), reason=g.reason,
               adapter=_adapter_summary(adapter, adapter_curve, v.adapter_top))
    if g.passed:
        cfg = model.cfg
        fp = digest({"index": corpus.version, "self_supervised": True, "documents": keys, "seed": seed,
                     "cfg": cfg.as_dict(), "train_top": v.train_top, "held_out": v.self_supervised_held_out,
                     "near_misses": v.near_misses, "adapter_epochs": v.adapter_epochs, "adapter_top": v.adapter_top})
        version = new_version_name(fp)
        manifest = {k: out[k] for k in ("index_version", "self_supervised", "titled_documents", "train_lists",
                                        "near_misses", "near_miss_pairs", "val_queries", "gate_queries",
                                        "held_out_documents", "best_epoch", "val_ndcg10", "epochs_run", "verify_top",
                                        "parameters", "gate", "recall_lists_only", "adapter")}
        manifest.update(dataset=None, split=None, config=cfg.as_dict(), seed=seed, train_queries=0,
                        pseudo_lists=len(examples), train_top=v.train_top, token_store=view.source.kind,
                        val_ndcg10_by_verify_top={str(k): nd for k, nd in top_ndcg.items()},
                        encoder=corpus.manifest.get("encoder"))
        publish_verifier(root, domain, version, model, manifest, settings.index.keep_versions)
        with Warehouse(root.eval_db()) as wh:
            wh.record_verifier_curve(domain, version, curve + [
                {"epoch": c["epoch"], **{f"adapter_{k}": c[k] for k in ("loss", "val_ndcg10") if c[k] is not None}}
                for c in adapter_curve])
        out.update(published=True, version=version)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log(summary_line(out))
    return out


def summary_line(res: dict) -> str:
    """One line in numbers: what trained on what, the gate's figures, and what became of it."""
    head = f"self-supervised verifier for {res['domain']!r}"
    if "gate" not in res:
        return f"{head}: not trained: {res.get('reason')}"
    n = res["gate"]["ndcg10"]
    fate = f"published {res['version']}" if res["published"] else f"not published ({res['gate']['winner']} won)"
    p = res["recall_lists_only"]["ndcg10"]
    return (f"{head}: trained on {res['train_lists']} lists from {res['titled_documents']} titled documents; "
            f"held-out nDCG@10 on {res['gate']['queries']} queries (recall list + near-misses) verifier "
            f"{n['verifier']:.4f} / MaxSim {n['maxsim']:.4f} / pooled {n['pooled_cosine']:.4f} (margin "
            f"{res['gate']['margin']:+.4f}; recall lists alone {p['verifier']:.4f} / {p['maxsim']:.4f} / "
            f"{p['pooled_cosine']:.4f}); {fate}; {res['seconds']:.0f} s")
