"""eval-negation: the paired negation check (sidestep.eval.negation) on any text, against random, dense,
MaxSim, BM25 and every verifier named (or every one published in the data root), stored in DuckDB."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sidestep.config import Settings
from sidestep.eval.negation import (
    bm25_ranker,
    build_pairs,
    maxsim_ranker,
    pooled_ranker,
    random_ranker,
    run_negation,
    verifier_ranker,
)
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.verifiers import load_verifier
from sidestep.storage.warehouse import Warehouse

from .common import encoder_for

MIN_PASSAGE_CHARS = 80


def read_passages(source: str | Path, max_chars: int = 1500) -> list[tuple[str, str]]:
    """(id, text) passages from a BEIR folder or corpus.jsonl (`_id`, `title`, `text`), a JSONL of
    `id`/`doc_id` + `text`, or an L-Eval file (`input`: a long document, cut into its paragraphs)."""
    path = Path(source)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no passages at {source} (a BEIR folder, corpus.jsonl or a JSONL file)")
    out: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):  # not splitlines: \u2028 is text
        if not line.strip():
            continue
        rec = json.loads(line)
        if "input" in rec:  # L-Eval: paragraphs of the long document
            paras = [p.strip() for p in rec["input"].split("\n") if len(p.strip()) >= MIN_PASSAGE_CHARS]
            out += [(f"{n}.{j}", p[:max_chars]) for j, p in enumerate(paras)]
            continue
        pid = str(rec.get("_id", rec.get("id", rec.get("doc_id", n))))
        text = str(rec.get("text") or "")
        if len(text) >= MIN_PASSAGE_CHARS:
            out.append((pid, text[:max_chars]))
    return out


def published_verifiers(root: DataRoot) -> list[str]:
    store = IndexStore(root, "verifiers")
    return [d for d in store.domains() if store.current(d)]


def eval_negation(root: DataRoot, settings: Settings, source: str, *, n_pairs: int = 300, seed: int = 0,
                  verifiers: list[str] | None = None, log=print) -> dict:
    """Build the pairs from `source`, score every ranker on them, store the figures; `verifiers` are
    DOMAIN or DOMAIN/VERSION of published verifiers (default: every domain's current one)."""
    t0 = time.perf_counter()
    passages = read_passages(source)
    pairs = build_pairs(passages, n_pairs=n_pairs, seed=seed)
    if not pairs:
        raise ValueError(f"no negation pair could be built from {source} ({len(passages)} passages)")
    log(f"{len(pairs)} pairs from {len(passages)} passages of {source}")
    enc = encoder_for(settings)
    mdt = settings.verify.max_doc_tokens
    rankers = {"random": random_ranker(seed), "dense": pooled_ranker(enc), "maxsim": maxsim_ranker(enc, mdt),
               "bm25": bm25_ranker()}
    used = []
    for spec in (published_verifiers(root) if verifiers is None else verifiers):
        domain, _, version = spec.partition("/")
        loaded = load_verifier(root, domain, version or None)
        if loaded is None:
            raise ValueError(f"no verifier is published for domain {domain!r}")
        rankers[f"verifier:{loaded.domain}/{loaded.version}"] = verifier_ranker(enc, loaded.model, mdt)
        used.append({"domain": loaded.domain, "version": loaded.version})
    res = run_negation(pairs, rankers, seed=seed)
    run_id = f"negation-{Path(source).stem}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    report = {k: v for k, v in res.items() if k != "credits"}
    with Warehouse(root.eval_db()) as wh:
        stored = wh.record_negation(run_id=run_id, source=str(Path(source).resolve()), report=report,
                                   config={"n_pairs": n_pairs, "seed": seed, "verifiers": used})
    for name, s in res["rankers"].items():
        log(f"{name}: pairwise accuracy {s['pairwise_accuracy']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]")
    return {**res, "source": str(source), "passages": len(passages), "verifiers": used, "run_id": run_id,
            "figures_stored": stored, "seconds": round(time.perf_counter() - t0, 1)}
