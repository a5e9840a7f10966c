"""train_general_verifier: one verifier for every domain that has none of its own, trained on every labelled set
given (its judged queries, hard negatives from recall, structural near-misses of each positive) and on
self-supervised lists from every domain's own text (sidestep.verify.crops: titles, heading questions, sentence
crops as queries for their own document, with the piece taken out; structural near-misses of that document; no
label read). Published under the data root as `verifiers/general-verifier/<version>/`, like any verifier.

A leave-one-corpus-out run names the corpus left out (`leave_out`): its judgments are never read, though its
unlabelled text still gives self-supervised lists, as in production. Search serves the general verifier on a
domain only where it beats the best untrained ranker on that domain's held-out self-supervised queries, beyond
the paired 95% interval of the difference (sidestep.pipeline.rankers; the documents whose pseudo-queries trained
it are never held-out queries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import GENERAL_DOMAIN
from sidestep.storage.verifiers import publish_verifier
from sidestep.verify.candidates import VERIFY_TOP_CHOICES, Candidates, prepare, query_piece_ids, query_tokens
from sidestep.verify.model import Example, VerifierConfig, choose_verify_top, fit, n_parameters, served_rows
from sidestep.verify.nearmiss import near_misses

from .common import encoder_for
from .rankers import PseudoSet, pseudo_set
from .verifier import _encode_texts, training_lists

NEAR_MISS_POSITIVES = 3  # per judged query: near-misses of its best-recalled positives (MS MARCO judges ~95 a query)


@dataclass(frozen=True)
class LabelledSet:
    """A BEIR folder's judged queries, indexed in the data root as `domain`."""

    dataset_dir: str
    domain: str
    split: str = "train"


def parse_labelled(spec: str) -> LabelledSet:
    """DIR=DOMAIN[:SPLIT] (split default: train, else test where the folder has only test judgments)."""
    if "=" not in spec:
        raise ValueError(f"--labelled takes DIR=DOMAIN[:SPLIT], got {spec!r}")
    path, rest = spec.rsplit("=", 1)
    domain, _, split = rest.partition(":")
    if not split:
        split = "train" if (Path(path) / "qrels" / "train.tsv").is_file() else "test"
    return LabelledSet(str(Path(path).resolve()), domain, split)


def self_supervised_lists(ps: PseudoSet, settings: Settings, enc, *, n_val: int, seed: int
                          ) -> tuple[list[Example], list[tuple[Candidates, np.ndarray]]]:
    """Training lists (the first len - n_val queries: recall list as served + near-misses of the query's own
    document, paired with it) and validation lists (the last n_val: the whole recall list, gain 1 at its own
    document) from one domain's self-supervised queries."""
    v = settings.verify
    cap = VerifierConfig().max_query_tokens
    n_fit = len(ps.queries) - n_val
    items, owner = [], []
    for j, p in enumerate(ps.queries[:n_fit]):
        for nm in near_misses(p.query, p.doc_text, n=v.near_misses, seed=seed):
            items.append(("", nm.text))
            owner.append(j)
    near: dict[int, list] = {}
    for j, e in zip(owner, _encode_texts(enc, items), strict=True):
        near.setdefault(j, []).append(e)
    train, val = [], []
    for j, pos in enumerate(ps.positives):
        ids = [d for d, _ in ps.dense[j][:v.candidates]]
        rec = [s for _, s in ps.dense[j][:v.candidates]]
        qt, qp = query_tokens(ps.qtoks[j], cap), query_piece_ids(ps.qpieces[j], cap)
        toks, pieces = ps.view.source.docs(ids), [ps.view.pieces[d] for d in ids]
        if j >= n_fit:
            c = prepare(qt, qp, toks, pieces, ps.view.idf, np.asarray(rec, np.float32), v.max_doc_tokens)
            val.append((c, np.asarray([d == pos for d in ids], np.float32)))
            continue
        if pos not in ids:
            continue
        at, pairs = ids.index(pos), []
        for nt, npc, npool in near.get(j, []):
            pairs.append((at, len(toks)))
            toks.append(nt)
            pieces.append(npc)
            rec.append(float((npool @ ps.qpooled[j]).max()))
        c = prepare(qt, qp, toks, pieces, ps.view.idf, np.asarray(rec, np.float32), v.max_doc_tokens,
                    n_list=len(ids))
        ex = Example(c, torch.tensor([d == pos for d in ids] + [False] * len(pairs)),
                     torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))
        ex = served_rows(ex, v.train_top, len(ids)) if v.train_top else ex
        if ex is not None:
            train.append(ex)
    return train, val


def train_general_verifier(root: DataRoot, settings: Settings, *, labelled: list[LabelledSet],
                           domains: list[str] | None = None, leave_out: str | None = None,
                           per_domain: int | None = None,
                           seed: int = 0, publish_as: str = GENERAL_DOMAIN, log=print) -> dict:
    """Train the general verifier (see the module docstring) and publish it as PUBLISH_AS. `domains`: those
    whose text gives self-supervised lists (default: every indexed domain); `leave_out`: a domain whose
    judgments are not read; `per_domain`: self-supervised queries per domain (a tenth of them validate; default
    the settings' `verify.general_per_domain`)."""
    t0 = time.perf_counter()
    per_domain = settings.verify.general_per_domain if per_domain is None else per_domain
    # one general adapter would have to fit every domain's queries: the identity serves them all alike
    settings = settings.model_copy(update={"verify": settings.verify.model_copy(update={"adapter_epochs": 0,
                                                                                        "pseudo_docs": 0})})
    v = settings.verify
    enc = encoder_for(settings)
    examples: list[Example] = []
    val: list[tuple[Candidates, np.ndarray]] = []
    sources: dict = {"labelled": [], "self_supervised": {}}
    for ls in labelled:
        if ls.domain == leave_out:
            log(f"general verifier: {ls.domain}'s judgments left out")
            continue
        lists = training_lists(root, settings, ls.dataset_dir, ls.domain, split=ls.split, seed=seed, log=log,
                               allow_test=True, near_miss_cap=NEAR_MISS_POSITIVES)
        examples += lists.examples
        val += lists.val
        sources["labelled"].append({"dataset": ls.dataset_dir, "domain": ls.domain, "split": ls.split,
                                    "lists": len(lists.examples), "val_queries": len(lists.val),
                                    "near_misses": lists.near_misses})
    positives: dict[str, list[str]] = {}
    for domain in domains if domains is not None else root.domains_with_indexes():
        corpus = load_current(IndexStore(root), domain, overfetch=settings.index.chunk_overfetch,
                              doc_score=settings.index.doc_score)
        if corpus is None:
            continue
        t1 = time.perf_counter()
        view = load_token_view(root, settings, domain, corpus.version, kind=v.train_token_store)
        docs = DocumentStore(root).read(domain, include_deleted=False)
        ps = pseudo_set(settings, corpus, view, docs, enc, n=per_domain, seed=seed + 101, depth=v.candidates)
        n_val = max(1, len(ps.queries) // 10) if len(ps.queries) >= 10 else 0
        tr, va = self_supervised_lists(ps, settings, enc, n_val=n_val, seed=seed)
        examples += tr
        val += va
        positives[domain] = ps.positives[:len(ps.positives) - n_val]
        kinds = {k: sum(p.kind == k for p in ps.queries) for k in ("title", "heading", "crop")}
        sources["self_supervised"][domain] = {"queries": len(ps.queries), "lists": len(tr), "val_queries": len(va),
                                              "kinds": kinds, "seconds": round(time.perf_counter() - t1, 1)}
        log(f"general verifier: {domain}: {len(tr)} self-supervised lists, {len(va)} validation ({kinds}), "
            f"{time.perf_counter() - t1:.0f} s")
    if not examples:
        raise ValueError("no training list: give a labelled set or index a domain with text")
    t_data = time.perf_counter() - t0
    model, curve = fit(examples, val, VerifierConfig(), enc.dim, epochs=v.epochs, near_miss_weight=v.near_miss_weight,
                       seed=seed, patience=v.patience, log=log, val_top=v.train_top)
    best = max(curve, key=lambda c: c["val_ndcg10"]) if curve else {}
    top, top_ndcg = choose_verify_top(model, val, choices=[k for k in VERIFY_TOP_CHOICES
                                                           if not v.train_top or k <= v.train_top])
    model.cfg = replace(model.cfg, verify_top=top)
    fp = digest({"sources": sources, "leave_out": leave_out, "seed": seed, "cfg": model.cfg.as_dict(),
                 "per_domain": per_domain, "train_top": v.train_top, "near_misses": v.near_misses})
    version = new_version_name(fp)
    manifest = {"general": True, "leave_out": leave_out, "sources": sources, "train_lists": len(examples),
                "val_queries": len(val), "config": model.cfg.as_dict(), "parameters": n_parameters(model),
                "seed": seed, "best_epoch": best.get("epoch"), "val_ndcg10": best.get("val_ndcg10"),
                "epochs_run": len(curve), "verify_top": top, "train_top": v.train_top,
                "val_ndcg10_by_verify_top": {str(k): nd for k, nd in top_ndcg.items()},
                "self_supervised_positives": positives, "data_seconds": round(t_data, 1),
                "token_store": v.train_token_store}
    publish_verifier(root, publish_as, version, model, manifest, settings.index.keep_versions)
    seconds = round(time.perf_counter() - t0, 1)
    log(f"general verifier {version}: {len(examples)} lists ({len(sources['labelled'])} labelled sets, "
        f"{len(sources['self_supervised'])} domains' self-supervised), validation nDCG@10 {best.get('val_ndcg10')}, "
        f"{seconds:.0f} s")
    return {"domain": publish_as, "version": version, "seconds": seconds, **manifest}
