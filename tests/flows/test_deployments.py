"""Every flow is a Prefect deployment with typed parameters; the nightly one carries the cron."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from sidestep.flows.deployments import deployments

REPO = Path(__file__).resolve().parents[2]


def test_every_flow_is_a_deployment_and_the_nightly_one_is_scheduled(settings):
    deps = {d.flow_name: d for d in deployments()}
    assert set(deps) == {"nightly-reindex", "ingest", "evaluate", "fit-codebooks", "finetune-tables",
                         "rebuild-index", "eval-rec", "pretrain-tables", "eval-longdoc", "train-verifier",
                         "summarize"}
    assert {"domain", "mode", "pretrained_from"} <= set(deps["finetune-tables"]._parameter_openapi_schema.properties)
    nightly = deps["nightly-reindex"]
    assert [s.schedule.cron for s in nightly.schedules] == [settings.nightly_cron]
    props = nightly._parameter_openapi_schema.properties
    assert {"domains", "force", "skip_ingest", "config_path"} <= set(props)
    assert {"path", "domain", "format", "snapshot"} <= set(deps["ingest"]._parameter_openapi_schema.properties)
    for d in deps.values():  # the UI form explains every field
        undocumented = [k for k, v in d._parameter_openapi_schema.properties.items() if not v.get("description")]
        assert not undocumented, (d.flow_name, undocumented)


def test_prefect_yaml_entrypoints_resolve_to_flows_and_declare_the_cron(settings):
    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        # flows/ is sidestep.flows
        mod = importlib.import_module("sidestep." + path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(mod, name), "fn"), d["entrypoint"]  # a prefect Flow
    nightly = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":nightly_reindex"))
    assert nightly["schedules"][0]["cron"] == settings.nightly_cron
