"""Long-document evidence retrieval benchmark (L-Eval layout) for document maps.

A question's evidence is the chunk that contains its answer string (case-insensitive,
whitespace-normalized, on word boundaries), or, where no chunk holds it whole, the chunks that
together do (found only when all of them rank within k). Only questions without any evidence are
left out, and counted by reason: the answer is not in the document, or is only yes/no. Chunks are
sentence-aligned windows with overlap by default. The default protocol is leave-one-file-out with
parameters learned on self-supervised questions (sidestep.eval.longdoc_lofo); the cross-fitting
protocol below, tuned on labelled questions of the same files, remains available.

Every document is chunked and encoded once; maps are built from those token vectors. Within
one document we compare bag-of-chunks (plain dense), the map-conditioned query, section-aware
chunks and both together. Across the corpus (all documents of the file indexed together) we
compare bag-of-chunks with routing by maps first.

Protocol: repeated two-fold cross-fitting. Each file's documents are split in two halves by
a seed; map parameters (alpha, pooling, gamma, tau, routing fusion, R) are tuned on one half's
questions (of all files evaluated together, so one setting serves every kind of document) and
applied to the other half's, then the halves swap, and the whole is repeated with new seeds.
Every question is held out once per repeat; no figure comes from a question its setting was
tuned on. With twenty documents per file, one split decides which documents are held out and
moves Recall@3 by several points either way; the repeats average that luck out.

The data and preparation are in sidestep.eval.longdoc_prep, the settings, scores and grid
searches in sidestep.eval.longdoc_scoring.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sidestep.docmaps.docmap import MapParams
from sidestep.docmaps.summarizers import Summarizer
from sidestep.eval.longdoc_lofo import LOFO_POOLS, leave_one_file_out
from sidestep.eval.longdoc_prep import (
    MAX_CHUNKS,
    POOLS,
    Prepared,
    encoded_cache_key,
    load_encoded,
    load_leval,
    prepare,
    save_encoded,
)
from sidestep.eval.longdoc_scoring import (
    PLAIN,
    MapSetting,
    RouteSetting,
    _doc_rank,
    bag_corpus,
    grids,
    paired_delta,
    recalls,
    route_scores,
    routed_corpus,
    tune_routing,
    tune_within,
    within_ranks,
)
from sidestep.text.encoder import Encoder


# ----------------------------------------------------------------------------- the benchmark
def doc_folds(n_docs: int, seed: int = 0) -> np.ndarray:
    """Half of the documents in fold 0, the rest in fold 1, by a fixed seed."""
    perm = np.random.default_rng(seed).permutation(n_docs)
    fold = np.zeros(n_docs, np.int64)
    fold[perm[n_docs // 2:]] = 1
    return fold


def split_questions(prep: Prepared, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fold 0, fold 1) question indices: a document's questions all fall on one side."""
    fold = doc_folds(len(prep.ds.texts), seed)
    qf = fold[np.asarray(prep.ds.q_doc, dtype=np.int64)[prep.used]] if len(prep.used) else np.zeros(0, np.int64)
    return prep.used[qf == 0], prep.used[qf == 1]


@dataclass
class Tuned:
    query: MapSetting  # map-conditioned query only
    section: MapSetting  # section-aware chunks only
    both: MapSetting
    route: RouteSetting

    def as_dict(self) -> dict[str, Any]:
        return {"map_query": self.query.__dict__, "section_aware": self.section.__dict__,
                "map_conditioned": self.both.__dict__,
                "map_routing": {**{k: v for k, v in self.route.__dict__.items() if k != "chunks"},
                                "chunks": self.route.chunks.__dict__}}


def tune(preps: Sequence[Prepared], encoder: Encoder, devs: Sequence[np.ndarray]) -> Tuned:
    """Every map parameter, chosen on dev questions only."""
    g = grids()  # prepare() encoded every question's context with its own document
    query, section = (tune_within(preps, devs, g[k]) for k in ("map_query", "section_aware"))
    both = tune_within(preps, devs, [replace(q, gamma=section.gamma, tau=section.tau) for q in g["map_query"]])
    return Tuned(query, section, both, tune_routing(preps, encoder, devs, both))


WITHIN = ("bag_of_chunks", "map_query", "section_aware", "map_conditioned")
CORPUS = ("bag_of_chunks", "map_routing")


@dataclass
class HeldOut:
    """Held-out ranks of one file: per mode, a (repeats, n_used) array aligned with prep.used."""

    within: dict[str, np.ndarray]
    corpus: dict[str, np.ndarray]
    doc_ranks: dict[str, np.ndarray]
    map_only_doc_ranks: np.ndarray
    top_r: np.ndarray  # (repeats, n_used) routing depth the question's fold was tuned to
    half: np.ndarray  # (repeats, n_used) which half of that repeat's split held the question out


def cross_fit(preps: Sequence[Prepared], encoder: Encoder, *, seed: int = 0, repeats: int = 5,
              log: Callable[[str], None] | None = None) -> tuple[list[HeldOut], list[dict[str, Any]]]:
    """Repeated two-fold cross-fitting: for each repeat, documents are split in halves; every
    setting is tuned on one half's questions (all files together) and applied to the other
    half's, then the halves swap. Each question is held out exactly once per repeat, so every
    question counts, and averaging over repeats removes most of the luck of one split."""
    shape = [(repeats, len(p.used)) for p in preps]
    out = [HeldOut({m: np.zeros(s, np.int64) for m in WITHIN}, {m: np.zeros(s, np.int64) for m in CORPUS},
                   {m: np.zeros(s, np.int64) for m in CORPUS}, np.zeros(s, np.int64), np.zeros(s, np.int64),
                   np.zeros(s, np.int64)) for s in shape]
    settings: list[dict[str, Any]] = []
    pos = [{int(i): j for j, i in enumerate(p.used)} for p in preps]
    for r in range(repeats):
        halves = [split_questions(p, seed + r) for p in preps]
        for fold in (0, 1):
            devs = [h[fold] for h in halves]
            tests = [h[1 - fold] for h in halves]
            tuned = tune(preps, encoder, devs)
            settings.append({"repeat": r, "split_seed": seed + r, "tuned_on_fold": fold, **tuned.as_dict()})
            if log:
                log(f"repeat {r + 1}/{repeats} fold {fold}: tuned on {sum(len(d) for d in devs)} questions: "
                    f"{tuned.as_dict()}")
            for p, test, ho, where in zip(preps, tests, out, pos, strict=True):
                if not len(test):
                    continue
                cols = np.asarray([where[int(i)] for i in test])
                for mode, ms in zip(WITHIN, (PLAIN, tuned.query, tuned.section, tuned.both), strict=True):
                    ho.within[mode][r, cols] = within_ranks(p, test, ms)
                ho.corpus["bag_of_chunks"][r, cols], ho.doc_ranks["bag_of_chunks"][r, cols] = bag_corpus(p, test)
                ho.corpus["map_routing"][r, cols], ho.doc_ranks["map_routing"][r, cols] = routed_corpus(
                    p, encoder, test, tuned.route)
                ho.map_only_doc_ranks[r, cols] = [_doc_rank(row, p.ds.q_doc[i]) for row, i in
                                                  zip(route_scores(p, test, 1.0), test, strict=True)]
                ho.top_r[r, cols] = tuned.route.top_r
                ho.half[r, cols] = 1 - fold
    return out, settings


def _half_deltas(ranks: np.ndarray, base: np.ndarray, half: np.ndarray, k: int = 3) -> list[float]:
    """Recall@k gain on each held-out half alone (repeat by repeat): what a single split would have
    reported, to show how far one split's luck reaches."""
    return [float(np.mean(ranks[r, half[r] == h] < k) - np.mean(base[r, half[r] == h] < k))
            for r in range(ranks.shape[0]) for h in (0, 1) if (half[r] == h).any()]


def _recalls_2d(ranks: np.ndarray) -> dict[str, float]:
    return recalls(ranks.ravel())


def report(prep: Prepared, ho: HeldOut) -> dict[str, Any]:
    """Every metric on the held-out questions of one file (averaged over the repeats)."""
    ds = prep.ds
    sections = [len(m.sections) for m in prep.maps if m is not None]
    base = ho.within["bag_of_chunks"]
    d_bag, d_map = ho.doc_ranks["bag_of_chunks"], ho.doc_ranks["map_routing"]
    routed = d_map < ho.top_r
    return {
        "subset": ds.name,
        "documents": len(ds.texts), "records": ds.n_records, "duplicate_documents": ds.n_duplicate_docs,
        "questions": len(ds.questions), "duplicate_questions": ds.n_duplicate_questions,
        "questions_with_evidence": int(len(prep.used)), "questions_left_out": prep.left_out,
        "held_out_questions": int(len(prep.used)), "repeats": int(base.shape[0]),
        "chunks": int(sum(len(e.chunks) for e in prep.encoded)),
        "sections_per_doc": float(np.mean(sections)) if sections else 0.0,
        "map_errors": prep.map_errors,
        "within_document": {k: _recalls_2d(v) for k, v in ho.within.items()},
        "within_document_delta_recall@3": {k: paired_delta(v, base) for k, v in ho.within.items()
                                           if k != "bag_of_chunks"},
        "within_document_recall@3_per_repeat": {k: [float(np.mean(row < 3)) for row in v]
                                                for k, v in ho.within.items()},
        "within_document_delta_recall@3_per_half": {k: _half_deltas(v, base, ho.half) for k, v in ho.within.items()
                                                    if k != "bag_of_chunks"},
        "corpus": {
            "bag_of_chunks": {**_recalls_2d(ho.corpus["bag_of_chunks"]),
                              "doc_accuracy@1": float(np.mean(d_bag < 1)),
                              "doc_accuracy@R": float(np.mean(d_bag < ho.top_r))},
            "map_routing": {**_recalls_2d(ho.corpus["map_routing"]), "doc_accuracy@1": float(np.mean(d_map < 1)),
                            "doc_accuracy@R": float(np.mean(routed)), "routing_accuracy": float(np.mean(routed))},
            "global_summary_only_routing": {"doc_accuracy@1": float(np.mean(ho.map_only_doc_ranks < 1)),
                                            "doc_accuracy@R": float(np.mean(ho.map_only_doc_ranks < ho.top_r))},
            "delta_recall@3": paired_delta(ho.corpus["map_routing"], ho.corpus["bag_of_chunks"]),
        },
        "timing": prep.timing,
    }


PROTOCOL = ("repeated two-fold cross-fitting: documents split in halves by seed, seed+1, ...; every parameter "
            "tuned on one half's questions (all files together, objective mean Recall@1..10) and applied to "
            "the other half's, then the halves swap; each question is held out once per repeat and every "
            "figure is the mean over repeats")


def _settings_summary(settings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The setting each mode chose most often over the folds (the full list is in `settings`)."""
    out = {}
    for mode in ("map_query", "section_aware", "map_conditioned", "map_routing"):
        seen = [json.dumps(s[mode], sort_keys=True) for s in settings]
        out[mode] = json.loads(max(set(seen), key=seen.count)) | {"chosen_in_folds": max(map(seen.count, seen))}
    return out


def evaluate(preps: Sequence[Prepared], encoder: Encoder, *, seed: int = 0, repeats: int = 5,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cross-fit over all files together, report each file on its held-out questions."""
    held, settings = cross_fit(preps, encoder, seed=seed, repeats=repeats, log=log)
    files = {p.ds.name: report(p, ho) for p, ho in zip(preps, held, strict=True)}
    return {"files": files, "tuned": _settings_summary(settings), "settings": settings, "protocol": PROTOCOL,
            "seed": seed, "repeats": repeats}


PROTOCOLS = ("leave-one-file-out", "cross-fit")


def run_longdoc(encoder: Encoder, paths: str | Path | Sequence[str | Path], *,
                summarizer: Summarizer | None = None, params: MapParams | None = None, max_chunks: int = MAX_CHUNKS,
                seed: int = 0, repeats: int = 5, timing_repeats: int = 1, log: Callable[[str], None] | None = None,
                protocol: str = "leave-one-file-out", chunking: str = "sentences", selfsup_per_doc: int = 16,
                cache_dir: Path | None = None, encoder_key: str = "") -> dict[str, Any]:
    """`sidestep eval-longdoc FILE.jsonl [FILE.jsonl ...]`: the contract's keys (for the first
    file) first, then the whole report. Leave-one-file-out (the default): map parameters learned on
    each file's self-supervised questions, every question counted (sidestep.eval.longdoc_lofo).
    Cross-fit: the older protocol, parameters tuned on labelled questions of the same files.
    With cache_dir, each file's chunk encodings are kept there by content (file bytes, chunking,
    encoder): a rerun does not encode the documents again (maps are rebuilt)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    preps = []
    for p in paths:
        key = encoded_cache_key(p, chunking, encoder_key, max_chunks)
        cached = Path(cache_dir) / f"{key}.npz" if cache_dir else None
        enc = load_encoded(cached) if cached is not None and cached.is_file() else None
        preps.append(prepare(encoder, load_leval(p), encoded=enc, summarizer=summarizer, params=params,
                             max_chunks=max_chunks, timing_repeats=timing_repeats, chunking=chunking,
                             pools=LOFO_POOLS if protocol == "leave-one-file-out" else POOLS))
        if cached is not None and enc is None:
            save_encoded(cached, preps[-1].encoded)
        if log:
            t = preps[-1].timing
            log(f"{Path(p).name}: {len(preps[-1].ds.texts)} documents encoded and mapped "
                f"(summarize {t['summarize_s']:.1f} s, {t.get('summarize_share_of_reindex', 0):.0%} of chunk+encode)")
    if protocol == "cross-fit":
        rep = evaluate(preps, encoder, seed=seed, repeats=repeats, log=log)
        first = rep["files"][preps[0].ds.name]["within_document"]
    else:
        rep = leave_one_file_out(preps, encoder, per_doc=selfsup_per_doc, seed=seed, log=log)
        first = rep["files"][preps[0].ds.name]
    return {"bag_of_chunks": first["bag_of_chunks"], "map_conditioned": first["map_conditioned"],
            "chunking": chunking, **rep}
