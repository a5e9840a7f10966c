"""eval-rec: train a domain's tables (scratch, table-only or full) and evaluate them with their controls
in one run, every variant's per-user ranks into DuckDB.

Protocol: leave-one-out, full ranking over all items of the domain with nothing
masked (comparable to VQ-Rec's published figures); the history-masked variant is
reported beside it. Valid split for early stopping and for the fusion weights,
test split for the figures. Each trained variant is reported fused with the text
cosine, the log-count popularity prior and the repeat bias (the logit /recommend
serves) and with its codes alone ("<variant>_codes_only"). Training time excludes
choosing the fusion weights (one ranking of the valid split per pair, seconds).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np

from sidestep.config import Settings
from sidestep.profiling import PeakRSS
from sidestep.rec.data import RecData, popularity
from sidestep.rec.quantize import shuffled_codes
from sidestep.storage.paths import DataRoot
from sidestep.storage.warehouse import Warehouse

from .rec import (
    domain_data,
    fusion_inputs,
    publish_tables,
    require_codebook,
    start_model,
    train_config,
)

Log = Callable[[str], None]


def eval_rec(root: DataRoot, settings: Settings, dataset: str, domain: str, *, mode: str | None = None,
             pretrained_from: str | None = None, controls: bool = True, epochs: int | None = None,
             max_seconds: float | None = None, seed: int = 0, publish: bool = True,
             log: Log | None = None) -> dict:
    import torch

    if settings.rec.threads:
        torch.set_num_threads(settings.rec.threads)
    mode = mode or ("table-only" if pretrained_from else "scratch")
    book_version, book = require_codebook(root)
    items, data = domain_data(root, settings, domain)
    codes = book.encode(items.vectors).astype(np.int64)
    group = f"rec-{domain}-{uuid.uuid4().hex[:8]}"
    cfg = train_config(settings, mode, epochs=epochs, max_seconds=max_seconds, seed=seed)
    common = {"dataset": dataset, "domain": domain, "group_id": group}
    out: dict = {"domain": domain, "dataset": dataset, "mode": mode, "pretrained_from": pretrained_from,
                 "codebook_version": book_version, "run_group": group,
                 "protocol": "leave-one-out, full ranking over all items, nothing masked (test split)",
                 "counts": {"items": data.n_items, "train_pairs": len(data.train), "valid_users": len(data.valid),
                            "test_users": len(data.test), "unknown_item_rows": int(sum(data.unknown.values()))},
                 "baselines": {}, "baselines_masked": {}, "training": {}}
    with Warehouse(root.eval_db()) as wh:
        for name, ranks in _fixed_baselines(items.vectors, data, settings.rec.text_decay).items():
            for protocol, r in ranks.items():
                m = wh.record_rec_run(run_id=f"{group}-{name}-{protocol}", variant=name, protocol=protocol,
                                      split="test", ranks=r, config={"seed": seed}, **common)
                out["baselines" if protocol == "full" else "baselines_masked"][name] = m
        variants = [("sidestep", codes)] + ([("shuffled_codes", shuffled_codes(codes, seed))] if controls else [])
        for name, c in variants:
            res = _train_variant(root, settings, domain, mode, pretrained_from, book_version, book.spec, c, data,
                                 items, cfg, log)
            model, train = res
            version = None
            if name == "sidestep" and publish:
                version = publish_tables(root, domain, items, c, model, book_version, {
                    "mode": mode, "pretrained_from": pretrained_from, "config": model.cfg.to_dict(),
                    "interactions": data.source_fingerprint, "text_fusion": train["text_fusion"],
                    "metrics": {"valid": train["best_valid"], "test": train["test"]["full"]},
                    "training": {k: train[k] for k in ("seconds", "epochs_run", "best_epoch", "peak_rss_mb",
                                                        "trainable_parameters")}},
                    prior=fusion_inputs(items, data)[1].numpy(), keep_versions=settings.index.keep_versions)
            for scored, ranks in (("", train["ranks"]), ("_codes_only", train["ranks_codes"])):
                variant = name + scored
                for protocol in ("full", "masked"):
                    m = wh.record_rec_run(
                        run_id=f"{group}-{variant}-{protocol}", variant=variant, protocol=protocol, split="test",
                        ranks=ranks[protocol], table_version=version, codebook_version=book_version,
                        train_seconds=train["seconds"], peak_rss_mb=train["peak_rss_mb"],
                        config={"mode": mode, "pretrained_from": pretrained_from, "seed": seed,
                                "text_fusion": {**train["text_fusion"], "weight": 0.0, "popularity": 0.0} if scored
                                else train["text_fusion"], **cfg.__dict__},
                        curve=train["curve"] if protocol == "full" and not scored else (), **common)
                    key = ("metrics" if protocol == "full" else "metrics_masked") + scored
                    if name == "sidestep":
                        out[key] = m
                    else:
                        out["baselines" if protocol == "full" else "baselines_masked"][variant] = m
            out["training"][name] = {k: v for k, v in train.items()
                                     if k not in ("ranks", "ranks_codes", "curve", "test")}
            if version:
                out["table_version"] = version
    return out


def _fixed_baselines(text: np.ndarray, data: RecData, decay: float) -> dict[str, dict[str, np.ndarray]]:
    """Popularity, and the text-only zero-shot scorer (with the decay text fusion uses, so that this row
    is exactly the fused variants' text component)."""
    from sidestep.rec.tables import unit_text
    from sidestep.rec.training import popularity_ranks, text_ranks

    pop = popularity(data)
    emb = unit_text(text).numpy()  # the rows fusion reads, padding row 0 included
    return {
        "popularity": {p: popularity_ranks(pop, data.test, masked=p == "masked") for p in ("full", "masked")},
        "text_zero_shot": {p: text_ranks(emb, data.test, decay=decay, masked=p == "masked")
                           for p in ("full", "masked")},
    }


def _train_variant(root: DataRoot, settings: Settings, domain: str, mode: str, pretrained_from: str | None,
                   book_version: str, spec, codes: np.ndarray, data: RecData, items, cfg, log: Log | None):
    """Train one variant, choose its text-fusion weight on the valid split, and rank the test split
    fused (the variant's result) and with its codes alone (the ablation)."""
    import torch

    from sidestep.rec.tables import TextFusion, count_parameters, trainable_parameters
    from sidestep.rec.training import evaluate, fit_domain

    from .rec import fit_text_fusion

    model, _ = start_model(root, settings, domain, mode, pretrained_from, book_version, spec.codewords,
                           spec.positions, log)
    c = torch.from_numpy(codes)
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        res = fit_domain(model, domain, c, data, mode, cfg, log=log)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    fusion = fit_text_fusion(model, settings, domain, codes, items, data, log)
    text, prior = fusion_inputs(items, data)
    ranks: dict[str, dict[str, np.ndarray]] = {"fused": {}, "codes": {}}
    test: dict[str, dict[str, float]] = {}
    for protocol in ("full", "masked"):
        test[protocol], ranks["fused"][protocol] = evaluate(model, domain, c, data.test, text=text,
                                                            prior=prior, masked=protocol == "masked")
        test[f"{protocol}_codes_only"], ranks["codes"][protocol] = evaluate(
            model, domain, c, data.test, masked=protocol == "masked", fusion=TextFusion())
    if log:
        log(f"{domain} {mode}: test recall@10 {test['full']['recall@10']:.4f} ndcg@10 {test['full']['ndcg@10']:.4f} "
            f"(codes alone {test['full_codes_only']['recall@10']:.4f} / {test['full_codes_only']['ndcg@10']:.4f}; "
            f"{seconds:.0f} s, best epoch {res.best_epoch}, peak RSS {mem.peak_mb:.0f} MB)")
    return model, {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "epochs_run": res.epochs_run,
                   "best_epoch": res.best_epoch, "best_valid": res.best_valid, "peak_rss_mb": mem.peak_mb,
                   "curve": res.curve, "text_fusion": fusion,
                   "trainable_parameters": count_parameters(trainable_parameters(model, domain, mode)),
                   "test": test, "ranks": ranks["fused"], "ranks_codes": ranks["codes"]}
