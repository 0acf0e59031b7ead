"""How a stage flow resolves its params: the workspace's params.yaml as it is now, plus only the fields a run
was given (a Prefect UI custom run fills in a few fields of a section; the rest must stay the file's)."""

from __future__ import annotations

from labelloop.config import DEFAULT_MODEL_NAME, SelectParams, TrainParams
from labelloop.flows.stages import resolve, set_fields


def test_only_the_fields_given_override_the_file(workspace):
    assert workspace.params().train.n_estimators == 40  # the template's file; the class default is 200
    _, params = resolve(str(workspace.root), train=TrainParams(max_depth=3),
                        select=SelectParams.model_validate({"hybrid": {"exploit_fraction": 0.5, "quota_fraction": 0.3,
                                                                       "explore_fraction": 0.2}}))
    assert (params.train.max_depth, params.train.n_estimators) == (3, 40)
    assert params.train.model_name == workspace.params().train.model_name
    assert params.select.batch_size == 40 and params.select.hybrid.exploit_fraction == 0.5
    _, unchanged = resolve(str(workspace.root), train=TrainParams(), select=None)
    assert unchanged == workspace.params()


def test_the_default_model_name_means_the_workspaces_model():
    assert set_fields("train", TrainParams(model_name=DEFAULT_MODEL_NAME, n_estimators=5)) == {"n_estimators": 5}
    assert set_fields("train", TrainParams(model_name="mine")) == {"model_name": "mine"}
    assert set_fields("select", {"batch_size": 3}) == {"batch_size": 3} and set_fields("select", None) is None


def test_a_stage_task_runs_the_stage_flow_as_a_task_of_the_callers_run(prefect_api, monkeypatch):
    """stage_task: the stage flow's own function runs as a task of the calling flow's run, named after the stage,
    with its inner tasks nested under it and its artifacts on the caller's run; no flow run and no heartbeat
    thread of its own (Prefect joins that thread at each flow run's end: ~0.5 s per stage)."""
    from prefect import flow, flow_engine, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.runtime import flow_run, task_run
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from labelloop.flows.stages import stage_task

    started: list[str] = []  # the flow runs whose heartbeat started
    original = flow_engine._send_heartbeats

    def spy(engine, *args, **kwargs):
        started.append(engine.flow.name)
        return original(engine, *args, **kwargs)

    monkeypatch.setattr(flow_engine, "_send_heartbeats", spy)

    @task(name="probe-inner")
    def inner(value: int) -> int:
        return value + 1

    @flow(name="probe-stage")
    def stage(value: int = 1) -> tuple[int, str, str]:
        create_markdown_artifact(key="probe-stage", markdown="stage report")
        return inner(value), flow_run.id, task_run.id

    probe_stage = stage_task(stage)

    @flow(name="probe-cycle")
    def parent() -> tuple[tuple[int, str, str], str]:
        return probe_stage(41), flow_run.id

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):  # the session's tests run with none
        (value, seen_flow_run, stage_run_id), parent_id = parent()
    assert value == 42 and seen_flow_run == parent_id
    assert started == ["probe-cycle"]
    with get_client(sync_client=True) as client:
        stage_run = client.read_task_run(stage_run_id)
        assert stage_run.name.startswith("probe-stage") and stage_run.state.is_completed()
        assert str(stage_run.flow_run_id) == parent_id
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_id])))
        nested = [run for run in runs if run.name.startswith("probe-inner")]
        assert len(runs) == 2 and [p.id for p in nested[0].task_inputs["__parents__"]] == [stage_run.id]
        assert not client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        mine = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["probe-stage"])))
        assert [(str(a.flow_run_id), a.task_run_id) for a in mine] == [(parent_id, stage_run.id)]
    # The stage is still a flow of its own: called alone it is a flow run with its heartbeat.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert stage(1)[0] == 2
    assert started == ["probe-cycle", "probe-stage"]


def test_the_gate_flow_groups_the_audit_rows_by_the_monitored_segments(prefect_api, workspace):
    # The per-segment audit guard reads its segment columns where the segment monitor does (`monitor.segments`).
    import numpy as np
    import pandas as pd

    from labelloop.config import GateParams
    from labelloop.core.io import write_parquet
    from labelloop.flows.stages import gate_flow
    from tests.stages.test_gate import FAST, _champion_challenger_and_audit_set

    _, audit = _champion_challenger_and_audit_set(workspace)
    for path, frame in ((workspace.audit_path, audit), (workspace.labeled_path, pd.read_parquet(workspace.labeled_path))):
        write_parquet(path, frame.assign(region=np.resize(np.array(["eu", "us"], dtype=object), len(frame))))
    # As a cycle passes its params; the model the stage helper trained.
    resolved = workspace.params().with_overrides(monitor={"segments": ["region"]}, train={"model_name": FAST.model_name})
    decision = gate_flow(str(workspace.root), GateParams(max_segment_accuracy_drop=0.5, audit_min_rows_per_group=5),
                         resolved=resolved)
    [summary] = [r for r in decision.reasons if r.startswith("audit segment guard on region: ")]
    assert "of 2 segments with at least audit_min_rows_per_group 5 audit rows" in summary
    off = gate_flow(str(workspace.root), GateParams(audit_min_rows_per_group=5), resolved=resolved)  # allowance 1: off
    assert not [r for r in off.reasons if r.startswith("audit segment guard")]
