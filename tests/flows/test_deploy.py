"""`labelloop deploy`'s registration against a real (temporary) Prefect API: module entrypoints a worker
imports from the installed package, one queue per workspace, parameters from the workspace's params.yaml."""

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
        assert deployment.parameters["workspace"] == str(workspace.root)
    capture = next(d for d in deployments if d.entrypoint == SPECS["capture"].flow)
    assert capture.parameters["params"] == workspace.params().capture.model_dump(mode="json")


def test_deploy_without_a_prefect_api_is_one_error_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from labelloop.flows.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["deploy", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "PREFECT_API_URL is not set" in result.output
    assert not (tmp_path / "ws").exists()  # nothing created before the API is known
