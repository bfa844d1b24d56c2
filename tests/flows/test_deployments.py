"""prefect.yaml: every entrypoint resolves to its flow and every deployment's parameters validate against it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_entrypoint_resolves_and_parameters_validate(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = DEPLOYMENTS[name]
    flow = load_flow_from_entrypoint(spec["entrypoint"], use_placeholder_flow=False)
    assert flow.name == spec["entrypoint"].split(":")[1].removesuffix("_flow").replace("_", "-")
    assert spec["work_pool"]["name"] == "gpu"
    params = spec.get("parameters")
    if params:
        validated = flow.validate_parameters(params)
        assert set(validated) == set(params)


def test_expand_rafdb_is_scheduled_weekly_with_one_run_at_a_time():
    spec = DEPLOYMENTS["expand-rafdb"]
    assert spec["concurrency_limit"] == 1
    cron = spec["schedules"][0]["cron"].split()
    assert len(cron) == 5 and cron[2] == "*" and cron[3] == "*" and cron[4] != "*"  # one weekday: weekly
    assert spec["parameters"]["settings"]["plan"]["kind"] == "balance"


def test_bad_parameters_are_refused():
    flow = load_flow_from_entrypoint(str(ROOT / "flows/expand.py") + ":expand", use_placeholder_flow=False)
    bad = {"settings": {**DEPLOYMENTS["expand-rafdb"]["parameters"]["settings"], "singan_start": "N+1"}}
    with pytest.raises(Exception, match="singan_start"):
        flow.validate_parameters(bad)
