"""A real Prefect server on loopback (the test session's, see conftest.py) and the deployments' runner:
the deployments are registered with their schedule and typed parameters, and a nightly_reindex run
triggered through the API publishes a version."""

from __future__ import annotations

import contextlib
import os
from urllib.parse import urlsplit

import psutil
import pytest

from sidestep.flows.ui import LocalPrefect
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.recstore import table_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_deployments_are_listed_and_a_triggered_nightly_run_publishes(data_root, base_dir, settings):
    api = urlsplit(os.environ["PREFECT_API_URL"])  # the session's server (conftest.py)
    p = LocalPrefect(data_root.root / "prefect-runner", host=api.hostname, port=api.port,
                     env={"SIDESTEP_HOME": str(data_root.root), "PREFECT_RUNNER_POLL_FREQUENCY": "2"})
    with p.start(server=False):
        from sidestep.flows.deployments import deployments

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
    # the runner it started has stopped with it, and no other runner of this data root was left behind
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "sidestep.flows.deployments" in " ".join(proc.info["cmdline"] or []) and \
                    proc.environ().get("SIDESTEP_HOME") == str(data_root.root):
                left.append(proc.pid)
    for pid in left:  # a leak fails the test, and does not outlive it
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not left, f"runner processes left running: {left}"
    assert IndexStore(data_root).current("handbook") is not None
    assert IndexStore(data_root).current("recipes") is None  # only the domains asked for
    assert table_store(data_root).current("shop") is not None
