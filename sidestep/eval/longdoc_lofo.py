"""Document maps that carry over: map conditioning learned on the corpus being indexed, measured
leave-one-file-out.

For each file (the held-out corpus), every map parameter (how much the query keeps of the map,
alpha and pooling; how chunks carry their section, gamma and tau) is selected on self-supervised
questions built from that file's own text and maps (sidestep.docmaps.selfsup: sentence crops,
heading questions, summary questions; no label is read), then every real question of the file is
scored with it. Chunks are sentence-aligned windows with overlap, and a question whose answer
spans two chunks counts (found only when all of its chunks rank within k): no question is left
out for crossing a boundary.

Controls from the same run, on the same questions: bag-of-chunks (plain dense), the shipped
constants (config defaults), the setting selected on the other files' labelled questions, and
both sources together. Every gain is reported with a paired bootstrap 95% interval over questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from sidestep.docmaps.selfsup import self_sup_questions
from sidestep.eval.longdoc_prep import LongDocSet, Prepared, evidence_chunks, fill_context
from sidestep.eval.longdoc_scoring import (
    PLAIN,
    MapSetting,
    _objective,
    grids,
    paired_delta,
    recalls,
    tune_within,
    within_ranks,
)
from sidestep.text.encoder import Encoder

CONSTANTS = MapSetting(alpha=1.0, gamma=0.4, pool="all", tau=0.7)  # the [maps] defaults of the config
MAP_MODES = ("map_query", "section_aware", "map_conditioned")
SOURCES = ("self_supervised", "other_files_labels", "self_supervised+other_files_labels")
PRIMARY = "self_supervised"  # what `map_conditioned` at the top of a file's report is
LOFO_POOLS = ("all",)  # MiA-RAG's e(map ⊕ query), mean over every token


def selfsup_prepared(prep: Prepared, encoder: Encoder, *, per_doc: int = 16, seed: int = 0) -> Prepared:
    """The file's documents with self-supervised questions in place of its real ones (chunks, maps
    and their vectors are shared, not recomputed)."""
    qs = self_sup_questions(prep.ds.texts, prep.maps, per_doc=per_doc, seed=seed)
    ds = LongDocSet(f"{prep.ds.name}:self-supervised", prep.ds.texts, [q.text for q in qs], [""] * len(qs),
                    [q.doc for q in qs])
    evidence = [evidence_chunks([q.span], prep.encoded[q.doc].chunks)[0] for q in qs]
    kinds = Counter(q.kind for q in qs)
    sp = replace(prep, ds=ds, evidence=evidence, used=np.arange(len(qs), dtype=np.int64), left_out={},
                 q_vecs=encoder.encode_queries(ds.questions) if qs else prep.q_vecs[:0], _ctx={}, _ranks={},
                 evidence_kinds=dict(kinds))
    for pool in LOFO_POOLS:
        fill_context(sp, encoder, pool, {(i, d) for i, d in enumerate(ds.q_doc)})
    return sp


def select(preps: Sequence[Prepared], devs: Sequence[np.ndarray]) -> dict[str, MapSetting]:
    """Each map mode's setting, chosen on the given questions (grid search, ties to plain)."""
    g = grids()
    g["map_query"] = [ms for ms in g["map_query"] if ms.pool in LOFO_POOLS]
    query = tune_within(preps, devs, g["map_query"])
    section = tune_within(preps, devs, g["section_aware"])
    both = tune_within(preps, devs, [replace(q, gamma=section.gamma, tau=section.tau) for q in g["map_query"]])
    return {"map_query": query, "section_aware": section, "map_conditioned": both}


def _mode_figures(ranks: np.ndarray, base: np.ndarray, seed: int) -> dict[str, Any]:
    return {**recalls(ranks), "delta_recall@3": paired_delta(ranks, base, seed=seed)}


def leave_one_file_out(preps: Sequence[Prepared], encoder: Encoder, *, per_doc: int = 16, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per held-out file: settings selected without its labels, scored on all its questions."""
    ssl = [selfsup_prepared(p, encoder, per_doc=per_doc, seed=seed) for p in preps]
    files: dict[str, Any] = {}
    for i, p in enumerate(preps):
        others = [q for j, q in enumerate(preps) if j != i]
        chosen: dict[str, dict[str, MapSetting]] = {"self_supervised": select([ssl[i]], [ssl[i].used])}
        if others:
            chosen["other_files_labels"] = select(others, [o.used for o in others])
            chosen["self_supervised+other_files_labels"] = select([ssl[i], *others],
                                                                  [ssl[i].used, *(o.used for o in others)])
        q = p.used
        base = within_ranks(p, q, PLAIN)
        modes: dict[str, Any] = {"bag_of_chunks": recalls(base),
                                 "shipped_constants": _mode_figures(within_ranks(p, q, CONSTANTS), base, seed)}
        for src, settings in chosen.items():
            for mode, ms in settings.items():
                modes[f"{mode}[{src}]"] = _mode_figures(within_ranks(p, q, ms), base, seed)
        primary = {m: modes[f"{m}[{PRIMARY}]"] for m in MAP_MODES}
        ssl_plain = within_ranks(ssl[i], ssl[i].used, PLAIN)
        files[p.ds.name] = {
            "subset": p.ds.name, "documents": len(p.ds.texts), "questions": len(p.ds.questions),
            "questions_counted": int(len(q)), "questions_without_evidence": p.left_out,
            "evidence": p.evidence_kinds, "chunks": int(sum(len(e.chunks) for e in p.encoded)),
            "map_errors": p.map_errors,
            "bag_of_chunks": modes["bag_of_chunks"], **primary,
            "modes": modes,
            "settings": {src: {m: asdict(ms) for m, ms in s.items()} for src, s in chosen.items()}
            | {"shipped_constants": asdict(CONSTANTS)},
            "self_supervised": {
                "questions": int(len(ssl[i].used)), "kinds": ssl[i].evidence_kinds,
                "objective_plain": _objective(ssl_plain),
                "objective_selected": _objective(within_ranks(ssl[i], ssl[i].used,
                                                              chosen["self_supervised"]["map_conditioned"])),
                "recall@3_plain": recalls(ssl_plain)["recall@3"],
                "examples": [{"query": ssl[i].ds.questions[j], "doc": int(ssl[i].ds.q_doc[j])}
                             for j in range(min(6, len(ssl[i].ds.questions)))],
            },
        }
        if log:
            d = primary["map_conditioned"]["delta_recall@3"]
            log(f"{p.ds.name}: bag R@3 {modes['bag_of_chunks']['recall@3']:.3f}, map_conditioned (self-supervised "
                f"{asdict(chosen['self_supervised']['map_conditioned'])}) R@3 "
                f"{primary['map_conditioned']['recall@3']:.3f}, delta {d['delta'] * 100:+.1f} "
                f"[{d['ci95_low'] * 100:+.1f}, {d['ci95_high'] * 100:+.1f}] on {len(q)} questions")
    return {"files": files, "protocol": PROTOCOL, "seed": seed, "selfsup_per_doc": per_doc}


PROTOCOL = ("leave-one-file-out: for each file, map parameters selected on self-supervised questions from its "
            "own text and maps (no label read; objective mean Recall@1..10), then every question of the file "
            "with its answer in the document is counted, including answers across two chunks (a hit only when "
            "all their chunks rank within k); sentence-aligned chunks with overlap; controls from the same run: "
            "bag-of-chunks, the shipped constants, settings selected on the other files' labels")
