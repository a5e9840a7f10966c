"""A real Prefect server on loopback: the deployments are registered with their schedule and typed
parameters, and a nightly_reindex run triggered through the API publishes a version."""

from __future__ import annotations

import socket

import pytest

from flows.ui import LocalPrefect
from storage.artifacts import IndexStore
from storage.recstore import table_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployments_are_listed_and_a_triggered_nightly_run_publishes(data_root, base_dir, settings):
    with LocalPrefect(data_root.root / "prefect-server", port=_free_port(),
                      env={"SIDESTEP_HOME": str(data_root.root),
                           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}) as p:
        from flows.deployments import deployments

        listed = p.deployments()
        assert len(listed) == len(deployments()) == 11  # every flow is a deployment
        deps = {d["name"]: d for d in listed if d["name"] == "nightly"}
        assert deps, "the nightly deployment is not registered"
        assert all(d["parameter_openapi_schema"]["properties"] for d in listed)
        nightly = deps["nightly"]
        crons = [s["schedule"].get("cron") for s in nightly["schedules"]]
        assert crons == [settings.nightly_cron]
        props = nightly["parameter_openapi_schema"]["properties"]
        assert {"domains", "force", "skip_ingest"} <= set(props)
        run_id = p.run_deployment("nightly-reindex", "nightly", {"domains": ["handbook", "shop"]})
        run = p.wait_flow_run(run_id, timeout=600)
        assert run["state"]["type"] == "COMPLETED", run["state"]
    assert IndexStore(data_root).current("handbook") is not None
    assert IndexStore(data_root).current("recipes") is None  # only the domains asked for
    assert table_store(data_root).current("shop") is not None
