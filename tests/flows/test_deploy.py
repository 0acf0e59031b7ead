"""`labelloop deploy`'s registration against a real (temporary) Prefect API: module entrypoints a worker
imports from the installed package, one queue per workspace, no params frozen; the run form made for overrides."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # needs the session's Prefect API
def test_deployments_name_their_flows_by_module_and_share_the_workspaces_queue(prefect_api, workspace):
    from prefect.client.orchestration import get_client

    from labelloop.flows.deploy import SPECS, queue_name, register

    created = register(workspace, "unit", "labelloop-unit", only=["capture", "cycle"])
    assert sorted(created) == ["active_learning_cycle/unit", "capture/unit"]
    with get_client(sync_client=True) as client:
        deployments = [client.read_deployment(deployment_id) for deployment_id in created.values()]
        queue = client.read_work_queue_by_name(queue_name(workspace.root), work_pool_name="labelloop-unit")
    assert sorted(d.entrypoint for d in deployments) == sorted([SPECS["capture"].flow, SPECS["cycle"].flow])
    assert queue.concurrency_limit == 1
    for deployment in deployments:
        assert not deployment.pull_steps and not deployment.path  # nothing to fetch: the package has the code
        assert deployment.work_queue_name == queue.name
        assert "working_dir" not in deployment.job_variables and deployment.job_variables["env"]["OMP_WAIT_POLICY"]
        # Only the workspace: each run reads params.yaml when it starts (nothing frozen at deploy time).
        assert deployment.parameters == {"workspace": str(workspace.root)}
    cycle = next(d for d in deployments if d.entrypoint == SPECS["cycle"].flow)
    assert set(cycle.parameter_openapi_schema["properties"]) == {"workspace", *SPECS["cycle"].sections}


def test_deploy_without_a_prefect_api_is_one_error_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from labelloop.flows.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["deploy", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "PREFECT_API_URL is not set" in result.output
    assert not (tmp_path / "ws").exists()  # nothing created before the API is known


def test_the_run_form_has_no_defaults_to_send_back_and_hides_the_cycles_internals():
    from prefect.utilities.callables import parameter_schema

    from labelloop.flows.cycle import active_learning_cycle
    from labelloop.flows.deploy import SPECS, run_form_schema
    from labelloop.flows.stages import gate_flow

    cycle = run_form_schema(parameter_schema(active_learning_cycle).model_dump(), SPECS["cycle"].sections)
    assert set(cycle["properties"]) == {"workspace", "production", "capture", "select", "export", "import_", "train", "gate"}
    assert cycle["properties"]["select"]["default"] == {} and "params.yaml" in cycle["properties"]["select"]["description"]
    select = cycle["definitions"]["SelectParams"]["properties"]
    assert "hybrid" in select["strategy"]["enum"]  # a dropdown still
    assert not [name for body in cycle["definitions"].values() for name, field in body.get("properties", {}).items()
                if "default" in field]
    assert "Params" not in cycle["definitions"]  # only `resolved` used it
    gate = run_form_schema(parameter_schema(gate_flow).model_dump(), SPECS["gate"].sections)
    assert set(gate["properties"]) == {"workspace", "params"} and gate["required"] == []
    # A checkbox is always sent (false when untouched) and would override params.yaml: a dropdown sent only when chosen.
    halt = gate["definitions"]["StopParams"]["properties"]["halt"]
    assert halt["anyOf"] == [{"type": "string", "enum": ["true", "false"]}, {"type": "boolean"}]
    validated = gate_flow.validate_parameters({"workspace": "ws", "params": {"stop": {"halt": "true"}}})
    assert validated["params"].stop.halt is True
    assert validated["params"].model_dump(exclude_unset=True) == {"stop": {"halt": True}}
