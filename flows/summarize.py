"""The summarize flow: document maps of the stored documents, on demand (the nightly run does the same
between embed and index)."""

from __future__ import annotations

from prefect import flow

from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.embed import embed_task
from sidestep.tasks.summarize import summarize_task


@flow(name="summarize", log_prints=True)
def summarize_flow(domains: list[str] | None = None, config_path: str | None = None) -> dict:
    """Build each domain's document maps (sections → a summary per section → a global summary) from the
    stored token vectors, embedding what is missing first. Maps are cached by content hash, so a rerun
    summarizes only new or changed documents; a document whose summarizer fails is quarantined with its
    reason and stays searchable without a map. The next index publish picks the maps up.

    Args:
        domains: Domains to summarize; all configured domains when empty.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    known = settings.domains()
    unknown = sorted(set(domains or []) - set(known))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; configured: {known}")
    out = {}
    for d in domains or known:
        embed_task(root, settings, d)
        out[d] = summarize_task(root, settings, d).as_dict()
    return out
