"""Recommendation flows: fit_codebooks, finetune_tables, rebuild_index and eval-rec.

Each is a Prefect flow over the same tasks the nightly run uses, so a run from
the Prefect UI, the command line and the nightly schedule do the same thing.
"""

from __future__ import annotations

from prefect import flow

from sidestep.config import SourceConfig
from sidestep.pipeline.rec import rec_domains
from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.embed import embed_task
from sidestep.tasks.evalrec import eval_rec_task
from sidestep.tasks.ingest import ingest_task
from sidestep.tasks.rec import (
    finetune_task,
    fit_codebooks_task,
    pretrain_task,
    rebuild_item_index_task,
)


@flow(name="fit-codebooks", log_prints=True)
def fit_codebooks_flow(domains: list[str] | None = None, refit: bool = False, config_path: str | None = None) -> dict:
    """Fit OPQ + PQ codebooks on the items of every domain with interactions, unless the current codebook
    still fits (quantization error within the drift threshold) and no refit is asked for.

    Args:
        domains: Domains to process; all configured domains when empty.
        refit: Refit even when the current codebook still fits.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    return fit_codebooks_task(str(root_from(settings).root), settings, domains, refit)


@flow(name="finetune-tables", log_prints=True)
def finetune_tables_flow(domain: str, mode: str = "scratch", pretrained_from: str | None = None,
                         epochs: int | None = None, config_path: str | None = None) -> dict:
    """Train a domain's lookup table (table-only: nothing else moves), or the whole model (full, scratch),
    then publish the table version with its item index.

    Args:
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        mode: scratch, table-only (only the domain's table trains) or full.
        pretrained_from: Domain whose published model to start from (table-only and full).
        epochs: Most training epochs; default from the [rec] config.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    return finetune_task(str(root_from(settings).root), settings, domain, mode, pretrained_from, epochs)


@flow(name="pretrain-tables", log_prints=True)
def pretrain_flow(domains: list[str], epochs: int | None = None, config_path: str | None = None) -> dict:
    """Pre-train one sequence encoder over several domains mixed (in-batch negatives from every domain,
    semi-synthetic negatives) and publish each domain's table with it.

    Args:
        domains: Domains with interactions to pre-train on together.
        epochs: Most training epochs; default from the [rec] config.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    for d in domains:
        embed_task(root, settings, d)
    fit_codebooks_task(root, settings, None, False)
    return pretrain_task(root, settings, domains, epochs)


@flow(name="rebuild-index", log_prints=True)
def rebuild_index_flow(domain: str, config_path: str | None = None) -> dict:
    """Re-encode a recommendation domain's items with the current codebook and table (new items
    become recommendable without training) and publish the item index.

    Args:
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    return rebuild_item_index_task(str(root_from(settings).root), settings, domain)


@flow(name="eval-rec", log_prints=True)
def eval_rec_flow(dataset_dir: str, domain: str, mode: str | None = None, pretrained_from: str | None = None,
                  controls: bool = True, refit: bool = False, epochs: int | None = None,
                  max_seconds: float | None = None, seed: int = 0, config_path: str | None = None) -> dict:
    """Ingest a RecBole, UniSRec or LC-Rec folder, embed its items, make sure a codebook fits them, train the
    domain's tables and evaluate them beside popularity, text-only and shuffled-codes controls.

    Args:
        dataset_dir: Path of the dataset folder (BEIR: corpus.jsonl, queries.jsonl, qrels/).
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        mode: Training mode of the headline row; scratch unless pretrained_from is given.
        pretrained_from: Domain to transfer from (table-only and full fine-tuning).
        controls: Also run the popularity, text-only and shuffled-codes controls.
        refit: Refit the codebook first.
        epochs: Most training epochs; default from the [rec] config.
        max_seconds: Wall-clock budget per training run.
        seed: Random seed, for reproducible runs.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    ingest = ingest_task(root, SourceConfig(domain=domain, path=dataset_dir, snapshot=True),
                         settings.ingest.max_text_bytes)
    emb = embed_task(root, settings, domain)
    for other in rec_domains(root_from(settings)):  # the codebook is fit on every domain's items
        if other != domain:
            embed_task(root, settings, other)
    book = fit_codebooks_task(root, settings, None, refit)
    res = eval_rec_task(root, settings, dataset_dir, domain, mode, pretrained_from, controls, epochs,
                        max_seconds, seed)
    return {**res, "ingest": ingest.as_dict(), "embed": emb.as_dict(), "codebook": book}
