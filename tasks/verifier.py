"""train_verifier task: mine, train and publish a domain's verifier (sidestep.pipeline.verifier)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.config import Settings
from sidestep.pipeline.selfsup import summary_line, train_verifier_self_supervised
from sidestep.pipeline.verifier import train_verifier_domain
from sidestep.storage.paths import DataRoot

from .common import TRAIN_RETRY


@task(name="train-verifier", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["verifier"])
def train_verifier_task(root: str, settings: Settings, dataset_dir: str, domain: str, split: str = "train",
                        seed: int = 0) -> dict:
    log = get_run_logger()
    out = train_verifier_domain(DataRoot(Path(root)), settings, dataset_dir, domain, split=split, seed=seed,
                                log=log.info)
    log.info("verifier %s/%s: %d parameters, best validation nDCG@10 %.4f at epoch %s, %.0f s", domain,
             out["version"], out["parameters"], out["val_ndcg10"] or 0.0, out["best_epoch"], out["seconds"])
    return out


@task(name="train-verifier-self-supervised", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["verifier"])
def train_verifier_self_supervised_task(root: str, settings: Settings, domain: str, seed: int = 0) -> dict:
    """DOMAIN's verifier from its own stored text (no judgment read), published only past the gate."""
    log = get_run_logger()
    out = train_verifier_self_supervised(DataRoot(Path(root)), settings, domain, seed=seed, log=log.info)
    log.info(summary_line(out))
    return out


@task(name="train-general-verifier", **TRAIN_RETRY, cache_policy=NO_CACHE, tags=["verifier"])
def train_general_verifier_task(root: str, settings: Settings, labelled: list[str], leave_out: str | None = None,
                                per_domain: int | None = None, seed: int = 0) -> dict:
    """The general verifier from every labelled set (DIR=DOMAIN[:SPLIT]) and every domain's own text."""
    from sidestep.pipeline.general import parse_labelled, train_general_verifier

    log = get_run_logger()
    out = train_general_verifier(DataRoot(Path(root)), settings, labelled=[parse_labelled(x) for x in labelled],
                                 leave_out=leave_out, per_domain=per_domain, seed=seed, log=log.info)
    out.pop("self_supervised_positives", None)
    return out


@task(name="adapt-verifier", cache_policy=NO_CACHE, tags=["verifier"])
def adapt_verifier_task(root: str, settings: Settings, domain: str) -> dict | None:
    """Nightly: DOMAIN (no judgments) gets the general verifier fine-tuned on its own self-supervised lists, published
    only past the gate. None where there is nothing to adapt (no general verifier; a verifier trained on the
    domain's judgments; adaptation off); a failure is logged and leaves the domain as it was."""
    from sidestep.pipeline.adapt import adapt_domain, attempt_key, last_attempt, needs_adaptation, record_attempt

    r = DataRoot(Path(root))
    if not settings.verify.nightly_adapt or not needs_adaptation(r, domain):
        return None
    log = get_run_logger()
    key = attempt_key(r, settings, domain)
    if key is not None and key == last_attempt(r, domain):
        return None  # same index, general verifier and settings as the last attempt: the same outcome
    try:
        out = adapt_domain(r, settings, domain, log=log.info)
    except Exception as e:  # the domain keeps serving what it served
        log.warning("adaptation of %s failed: %s: %s", domain, type(e).__name__, e)
        return {"domain": domain, "error": f"{type(e).__name__}: {e}"}
    out.pop("gate", None)
    if key is not None:
        record_attempt(r, domain, key, out)
    return out
