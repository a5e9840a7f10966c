"""adapt_domain: a domain without judgments gets its own verifier by fine-tuning the general verifier on its own
self-supervised lists (sidestep.pipeline.general.self_supervised_lists; no label read), published only where it
beats the general verifier, untrained MaxSim and the best untrained ranker on the domain's held-out
self-supervised queries (documents whose pseudo-queries trained neither model), and beats the best of them by
more than chance: the paired 95% interval of that difference lies above zero. The general verifier itself
competes as the fine-tuning's epoch 0, as the identity competes for the query adapter.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sidestep.config import Settings
from sidestep.fingerprint import digest
from sidestep.storage.artifacts import IndexStore, new_version_name
from sidestep.storage.documents import DocumentStore
from sidestep.storage.indexes import load_current, load_token_view
from sidestep.storage.paths import DataRoot
from sidestep.storage.rankers import GENERAL_DOMAIN
from sidestep.storage.verifiers import LoadedVerifier, load_verifier, publish_verifier, verifier_store
from sidestep.verify.candidates import VERIFY_TOP_CHOICES
from sidestep.verify.crops import paired_ci
from sidestep.verify.gate import choose_ranker
from sidestep.verify.model import VerifierConfig, choose_verify_top, fit, n_parameters

from .common import encoder_for
from .general import self_supervised_lists
from .rankers import held_out_scores, pseudo_set, trained_on

GENERAL, ADAPTED = f"verifier:{GENERAL_DOMAIN}", "verifier:adapted"


def needs_adaptation(root: DataRoot, domain: str) -> bool:
    """A general verifier is published, and DOMAIN has no verifier trained on judgments, nor one adapted from this
    general verifier already."""
    store = verifier_store(root)
    general = store.current(GENERAL_DOMAIN)
    if general is None or domain == GENERAL_DOMAIN:
        return False
    own = store.current_manifest(domain)
    if own is None:
        return True
    if not own.get("adapted_from"):
        # trained on the domain's judgments, or its own self-supervised verifier (which passed its own gate and is
        # not a rival of this gate): the nightly leaves it alone
        return False
    return (own.get("adapted_from") or {}).get("version") != general


def attempt_key(root: DataRoot, settings: Settings, domain: str) -> str | None:
    """What an adaptation attempt depends on: the domain's index version, the general verifier's, the domain's own
    verifier's and the verify settings. The nightly skips a domain whose last attempt had the same key (the same
    inputs and seed give the same outcome), so a gate loss is not retrained every night."""
    index = IndexStore(root).current(domain)
    if index is None:
        return None
    store = verifier_store(root)
    return digest({"index": index, "general": store.current(GENERAL_DOMAIN), "own": store.current(domain),
                   "verify": settings.verify.model_dump(mode="json"), "queries": "kind-drawn-at-random"})


def last_attempt(root: DataRoot, domain: str) -> str | None:
    import json

    path = root.runs() / "adapt" / f"{domain}.json"
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def record_attempt(root: DataRoot, domain: str, key: str, outcome: dict) -> None:
    import json

    from sidestep.storage.atomic import write_text

    folder = root.runs() / "adapt"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{domain}.json", json.dumps({"key": key, "outcome": outcome}, default=str))


def adapt_domain(root: DataRoot, settings: Settings, domain: str, *, per_domain: int = 300, epochs: int | None = None,
                 seed: int = 0, log=print) -> dict:
    """Fine-tune the general verifier on DOMAIN's self-supervised lists; publish it as DOMAIN's verifier only past
    the gate (see the module docstring). Returns the figures either way (`published`, `winner`, `margin`)."""
    t0 = time.perf_counter()
    v = settings.verify
    general = load_verifier(root, GENERAL_DOMAIN)
    out: dict = {"domain": domain, "published": False, "version": None}
    if general is None:
        return {**out, "reason": "no general verifier is published: nothing to adapt"}
    corpus = load_current(IndexStore(root), domain, overfetch=settings.index.chunk_overfetch,
                          doc_score=settings.index.doc_score)
    if corpus is None:
        raise RuntimeError(f"domain {domain!r} has no published index; run `sidestep reindex --domain {domain}`")
    enc = encoder_for(settings)
    docs = DocumentStore(root).read(domain, include_deleted=False)
    train_view = load_token_view(root, settings, domain, corpus.version, kind=v.train_token_store)
    seen = trained_on({GENERAL: general}, domain)
    ps = pseudo_set(settings, corpus, train_view, docs, enc, n=per_domain, seed=seed + 303, exclude_ids=seen,
                    depth=v.candidates)
    n_val = max(1, len(ps.queries) // 10) if len(ps.queries) >= 10 else 0
    train, val = self_supervised_lists(ps, settings, enc, n_val=n_val, seed=seed)
    out.update(general_version=general.version, train_lists=len(train), val_queries=len(val))
    if not train or not val:
        return {**out, "reason": f"too few self-supervised lists ({len(train)} training, {len(val)} validation)",
                "seconds": round(time.perf_counter() - t0, 1)}
    model, curve = fit(train, val, VerifierConfig.from_dict(general.model.cfg.as_dict()), enc.dim,
                       epochs=epochs or max(3, v.epochs // 2), near_miss_weight=v.near_miss_weight, seed=seed,
                       patience=v.patience, lr=3e-4, log=log, init=general.model, val_top=v.train_top)
    best = max(curve, key=lambda c: c["val_ndcg10"]) if curve else {}
    top, _ = choose_verify_top(model, val, choices=[k for k in VERIFY_TOP_CHOICES
                                                    if not v.train_top or k <= v.train_top])
    model.cfg = replace(model.cfg, verify_top=top)
    # the gate: held-out queries from documents neither model trained on, every ranker on the served view
    view = load_token_view(root, settings, domain, corpus.version)
    per, info = held_out_scores(settings, corpus, view, docs, enc, n=v.ranker_queries or 200, seed=seed + 404,
                                verifiers={GENERAL: general, ADAPTED: LoadedVerifier(domain, "candidate", model, {})},
                                exclude_ids=seen | set(ps.positives), log=log)
    per.pop("bm25")
    res = choose_ranker(per, ci=paired_ci)
    rivals = {k: res.ndcg10[k] for k in res.ndcg10 if k != ADAPTED}
    runner_up = max(rivals, key=rivals.get)
    margin = res.ndcg10[ADAPTED] - rivals[runner_up]
    lo, hi = paired_ci(per[ADAPTED], per[runner_up])
    out.update(gate={"ndcg10": res.ndcg10, "queries": res.queries, "kinds": info["kinds"]}, winner=res.ranker,
               runner_up=runner_up, margin=margin, margin_ci95=[lo, hi], best_epoch=best.get("epoch"),
               val_ndcg10=best.get("val_ndcg10"), epochs_run=len(curve), verify_top=top)
    # the adapted verifier won on the mean (choose_ranker: beyond chance against the best untrained ranker), and
    # beats the best other rival, the general verifier included, beyond chance too
    if res.ranker == ADAPTED and margin > 0 and lo > 0:
        fp = digest({"index": corpus.version, "general": general.version, "seed": seed, "per_domain": per_domain,
                     "cfg": model.cfg.as_dict()})
        version = new_version_name(fp)
        manifest = {"adapted_from": {"domain": GENERAL_DOMAIN, "version": general.version}, "self_supervised": True,
                    "index_version": corpus.version, "train_lists": len(train), "val_queries": len(val),
                    "gate": out["gate"], "winner": res.ranker, "margin": margin, "margin_ci95": [lo, hi],
                    "config": model.cfg.as_dict(), "parameters": n_parameters(model), "seed": seed,
                    "best_epoch": best.get("epoch"), "val_ndcg10": best.get("val_ndcg10"), "verify_top": top,
                    "self_supervised_positives": {domain: ps.positives}, "encoder": corpus.manifest.get("encoder")}
        publish_verifier(root, domain, version, model, manifest, settings.index.keep_versions)
        out.update(published=True, version=version)
    out["reason"] = (f"held-out self-supervised nDCG@10 on {res.queries} queries: "
                     + ", ".join(f"{k} {x:.4f}" for k, x in sorted(res.ndcg10.items(), key=lambda kv: -kv[1]))
                     + (f"; the adapted verifier wins by {margin:+.4f} over {runner_up} (95% CI {lo:+.4f} to "
                        f"{hi:+.4f}): published" if out["published"] else
                        f"; {res.ranker} wins (adapted {margin:+.4f} against {runner_up}, 95% CI {lo:+.4f} to "
                        f"{hi:+.4f}): nothing published"))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"adaptation of {domain!r}: {out['reason']} ({out['seconds']:.0f} s)")
    return out
