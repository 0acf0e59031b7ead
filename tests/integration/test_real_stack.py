"""The production path end to end: Prefect server + MLflow server on Postgres, deployments, a process worker.

A full cycle is triggered through the Prefect API exactly as the UI's "Run" does (a flow run created
from the deployment, picked up by the worker); then the same run is triggered again and every stage
is rerun by hand, and nothing may be duplicated: no new data tag, MLflow run, model version or batch.
"""

from __future__ import annotations

import time
from uuid import UUID

import pandas as pd
import pytest

from tests.integration.conftest import DEPLOYMENT_NAME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RUN_TIMEOUT = 600  # seconds to wait for one flow run (worker start + cycle), generous for a busy 2-core box


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def trigger(name: str, parameters: dict | None = None, idempotency_key: str | None = None, wait: bool = True):
    """Create a flow run from a deployment (what the UI's Run button does) and wait for a final state."""
    from prefect.deployments import run_deployment

    run = run_deployment(f"{name}/{DEPLOYMENT_NAME}", parameters=parameters, idempotency_key=idempotency_key,
                         timeout=RUN_TIMEOUT if wait else 0, poll_interval=2, as_subflow=False)
    if wait:
        assert run.state is not None and run.state.is_final(), \
            f"{name} run {run.id} not finished within {RUN_TIMEOUT} s: {run.state}"
    return run


def wait_final(run_id: UUID):
    import time

    deadline = time.monotonic() + RUN_TIMEOUT
    with _client() as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run {run_id} not finished within {RUN_TIMEOUT} s: {run.state}"
            time.sleep(2)


def assert_completed(run, stack) -> None:
    assert run.state.is_completed(), f"flow run {run.name} ({run.id}) ended {run.state.type}: {run.state.message}\n{stack.logs()}"


def snapshot(stack) -> dict:
    """Everything a duplicate would show up in: data tags, MLflow runs/versions/aliases (SQL), batches, labels."""
    from labelloop.adapters import versioning
    from labelloop.batches import BatchStore
    from labelloop.workspace import Workspace

    ws = Workspace.at(stack.workspace)
    return {
        "tags": versioning.data_tags(ws.registry_dir),
        "runs": stack.mlflow_sql("SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' ORDER BY run_uuid"),
        "versions": stack.mlflow_sql("SELECT name, version, run_id FROM model_versions ORDER BY version"),
        "aliases": stack.mlflow_sql("SELECT alias, version FROM registered_model_aliases ORDER BY alias"),
        "batches": [(m.batch_id, m.status, m.n_items) for m in BatchStore(ws).list()],
        "labeled_rows": len(pd.read_parquet(ws.labeled_path)),
    }


def child_runs(parent_id: UUID) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with _client() as client:
        parent = FlowRunFilterParentFlowRunId(any_=[parent_id])
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parent))


def test_deployments_have_typed_forms_schedules_and_one_queue_per_workspace(stack_client):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    from labelloop.flows.deploy import queue_name
    from labelloop.workspace import Workspace

    with _client() as client:
        named = DeploymentFilterName(any_=[DEPLOYMENT_NAME])
        deployments = client.read_deployments(deployment_filter=DeploymentFilter(name=named))
        flows = {d.id: client.read_flow(d.flow_id).name for d in deployments}
        by_flow = {flows[d.id]: d for d in deployments}
        assert set(by_flow) == {"production", "capture", "select", "export", "import", "retrain", "dataset", "train", "gate",
                                "active_learning_cycle"}
        queue = queue_name(Workspace.at(stack_client.workspace).root)
        assert {d.work_queue_name for d in deployments} == {queue}
        assert client.read_work_queue_by_name(queue, work_pool_name=stack_client.env["WORK_POOL"]).concurrency_limit == 1

        cycle = by_flow["active_learning_cycle"]
        # Typed form: each section is an object with typed fields and no defaults; the deployment holds only the
        # workspace, whose params.yaml (batch_size 30 from `deploy --set`) each run reads when it starts.
        schema = cycle.parameter_openapi_schema
        select_ref = schema["properties"]["select"]["anyOf"][0]["$ref"].rsplit("/", 1)[-1]
        assert schema["definitions"][select_ref]["properties"]["batch_size"]["type"] == "integer"
        assert "default" not in schema["definitions"][select_ref]["properties"]["batch_size"]
        assert cycle.parameters == {"workspace": str(Workspace.at(stack_client.workspace).root)}
        assert cycle.concurrency_limit == 1 or cycle.global_concurrency_limit.limit == 1

        crons = {name: [(s.schedule.cron, s.active) for s in d.schedules] for name, d in by_flow.items()}
        assert crons["import"] == [("5 * * * *", True)]
        assert [c for c, _ in crons["capture"] + crons["select"] + crons["export"]] == ["0 1 * * *", "20 1 * * *", "40 1 * * *"]
        assert crons["active_learning_cycle"] == [("0 3 * * *", False)]  # --mode stages: the cycle's schedule is paused
        assert crons["dataset"] == crons["train"] == crons["gate"] == []

        # The scheduler (SQLAlchemy < 2.1) makes scheduled runs for the active schedules: on its own loop, which a
        # fast setup can reach the test before (so wait for it, up to two of its 60-second loops).
        deadline = time.monotonic() + 150
        while not client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[by_flow["import"].id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"])))):
            assert time.monotonic() < deadline, "no scheduled runs for import/it within 150 s"
            time.sleep(2)
        # The rest of this module triggers runs by hand: pause the schedules so an hourly run cannot interleave.
        for deployment in deployments:
            client.pause_deployment(deployment.id)


def test_cycle_through_the_api_then_the_same_run_again_duplicates_nothing(stack_client):
    from labelloop.adapters import tracking
    from labelloop.workspace import Workspace

    stack = stack_client
    before = snapshot(stack)
    assert before["tags"] == ["data-v1"] and before["runs"] == [] and before["batches"] == []

    run = trigger("active_learning_cycle", idempotency_key="it-cycle-1")
    assert_completed(run, stack)

    after = snapshot(stack)
    assert after["tags"] == ["data-v1", "data-v2"]
    assert after["labeled_rows"] == 50 + 30
    assert [b[1:] for b in after["batches"]] == [("imported", 30)]
    # MLflow in Postgres: the seed model and the retrained one, each run tagged with its data version.
    assert len(after["runs"]) == 2 and len(after["versions"]) == 2
    data_tags = stack.mlflow_sql("SELECT value FROM tags WHERE key = 'data_tag' ORDER BY value")
    assert [t[0] for t in data_tags] == ["data-v1", "data-v2"]
    aliases = dict(after["aliases"])
    ws = Workspace.at(stack.workspace, tracking_server=stack.mlflow_url)
    name = ws.params().train.model_name
    assert str(aliases["champion"]) == tracking.alias_version(ws, name, tracking.CHAMPION)  # SQL == MLflow server
    assert str(aliases["champion"]) in {"1", "2"}

    # Run reports: batch, import and gate artifacts on the cycle's run, each from its stage's task run (the stages
    # are tasks of the cycle's run, not flow runs of their own); the gate links to MLflow.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    assert child_runs(run.id) == []
    with _client() as client:
        stage_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert {r.state.type.value for r in stage_runs} == {"COMPLETED"}
    stage_of = {r.id: r.name.rsplit("-", 1)[0] for r in stage_runs}
    by_key = {a.key: a for a in artifacts if a.task_run_id is not None}
    assert {key: stage_of[by_key[key].task_run_id] for key in ("batch", "import")} == {"batch": "select", "import": "import"}
    assert {"batch", "import", "gate"} <= set(by_key)
    assert "30" in by_key["batch"].data and "strategy" in by_key["batch"].data
    assert "| imported |" in by_key["import"].data
    assert f"{stack.mlflow_url}/#/experiments/" in by_key["gate"].data and "### Reasons" in by_key["gate"].data

    # The same run triggered again (same idempotency key, as a double-click or a retried API call): the same flow run.
    again = trigger("active_learning_cycle", idempotency_key="it-cycle-1")
    assert again.id == run.id
    assert snapshot(stack) == after

    # Manual reruns of every stage after the fact: each completes and does exactly what was already done.
    for stage in ("capture", "export", "import", "dataset", "train", "gate", "retrain"):
        assert_completed(trigger(stage), stack)
    assert snapshot(stack) == after


def test_two_cycles_triggered_together_never_overlap(stack_client):
    from labelloop.adapters import versioning
    from labelloop.workspace import Workspace

    stack = stack_client
    first = trigger("active_learning_cycle", wait=False)
    second = trigger("active_learning_cycle", wait=False)
    runs = [wait_final(first.id), wait_final(second.id)]
    for run in runs:
        assert_completed(run, stack)
    a, b = sorted(runs, key=lambda r: r.start_time)
    assert a.end_time <= b.start_time, \
        f"cycles overlapped: {a.name} {a.start_time}–{a.end_time}, {b.name} {b.start_time}–{b.end_time}"
    with _client() as client:
        waited = [s.name for s in client.read_flow_run_states(b.id)]
    assert waited[0] == "Scheduled" and "Running" in waited  # it waited for the slot, visibly, then ran
    assert versioning.data_tags(Workspace.at(stack.workspace).registry_dir)[-2:] == ["data-v3", "data-v4"]
