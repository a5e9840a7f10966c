"""Every flow as a Prefect deployment with typed parameters; the nightly one on a cron schedule.

`python -m flows.deployments` (or `prefect deploy` with deploy/prefect.yaml) registers them and
serves them from this process, so they can be run from the Prefect UI.
"""

from __future__ import annotations

from prefect import serve

from sidestep.config import load_settings

from .evaluate import evaluate_flow
from .ingest import ingest_flow
from .reindex import nightly_reindex


def deployments(cron: str | None = None):
    cron = cron or load_settings().nightly_cron
    return [
        nightly_reindex.to_deployment(name="nightly", cron=cron, tags=["nightly"],
                                      description="Ingest, embed, index and publish every configured domain."),
        ingest_flow.to_deployment(name="on-demand", tags=["ingest"],
                                  description="Ingest one source into one domain."),
        evaluate_flow.to_deployment(name="on-demand", tags=["eval"],
                                    description="Evaluate a BEIR folder through the serving search path."),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
