"""Every flow as a Prefect deployment with typed parameters; the nightly one on a cron schedule.

`python -m sidestep.flows.deployments` (or `prefect deploy` with deploy/prefect.yaml) registers them and
serves them from this process, so they can be run from the Prefect UI.
"""

from __future__ import annotations

from prefect import serve

from sidestep.config import load_settings

from .evaluate import evaluate_flow, train_verifier_flow
from .ingest import ingest_flow
from .longdoc import longdoc_flow
from .rec import eval_rec_flow, finetune_tables_flow, fit_codebooks_flow, pretrain_flow, rebuild_index_flow
from .reindex import nightly_reindex
from .summarize import summarize_flow


def deployments(cron: str | None = None):
    cron = cron or load_settings().nightly_cron
    return [
        nightly_reindex.to_deployment(name="nightly", cron=cron, tags=["nightly"],
                                      description="Ingest, embed, index and publish every configured domain."),
        ingest_flow.to_deployment(name="on-demand", tags=["ingest"],
                                  description="Ingest one source into one domain."),
        summarize_flow.to_deployment(name="on-demand", tags=["maps"],
                                     description="Build document maps (sections, summaries, global summary) "
                                                 "of stored documents; cached by content hash."),
        evaluate_flow.to_deployment(name="on-demand", tags=["eval"],
                                    description="Evaluate a BEIR folder through the serving search path."),
        longdoc_flow.to_deployment(name="on-demand", tags=["eval", "maps"],
                                   description="Evidence-chunk recall in long documents: bag of chunks vs maps."),
        fit_codebooks_flow.to_deployment(name="on-demand", tags=["rec"],
                                         description="Fit OPQ + PQ codebooks (only on drift unless refit)."),
        finetune_tables_flow.to_deployment(name="on-demand", tags=["rec"],
                                           description="Train a domain's lookup table (table-only, full or "
                                                       "scratch) and publish it."),
        pretrain_flow.to_deployment(name="on-demand", tags=["rec", "train"],
                                    description="Pre-train the sequence encoder over several domains mixed."),
        rebuild_index_flow.to_deployment(name="on-demand", tags=["rec"],
                                         description="Re-encode a domain's items with the current codebook and "
                                                     "table; publish the item index."),
        train_verifier_flow.to_deployment(name="on-demand", tags=["verifier", "train"],
                                          description="Train and publish a domain's verifier on its train qrels "
                                                      "(hard negatives + structural near-misses)."),
        eval_rec_flow.to_deployment(name="on-demand", tags=["rec", "eval"],
                                    description="Sequential recommendation benchmark with its controls."),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
