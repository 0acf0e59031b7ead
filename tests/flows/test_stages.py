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


def test_stage_subflows_start_no_heartbeat_thread_and_stay_runs_of_their_own(prefect_api, monkeypatch):
    """stages_as_subflows: the parent run keeps its heartbeat; a stage flow called inside starts none (Prefect
    joins that thread at each run's end) and is still a flow run of its own, with its name, under the parent."""
    from prefect import flow, flow_engine
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from labelloop.flows.stages import stages_as_subflows

    started: list[tuple[str, int | None]] = []  # (flow name, heartbeat interval) as each run's heartbeat starts
    original = flow_engine._send_heartbeats

    def spy(engine, *args, **kwargs):
        started.append((engine.flow.name, engine.heartbeat_seconds))
        return original(engine, *args, **kwargs)

    monkeypatch.setattr(flow_engine, "_send_heartbeats", spy)

    @flow(name="probe-stage")
    def stage() -> str:
        return flow_run.id

    @flow(name="probe-cycle")
    def parent() -> tuple[str, str, str]:
        with stages_as_subflows():
            inside = stage()
        return flow_run.id, inside, stage()  # the last one outside: Prefect's default, a heartbeat

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):  # the session's tests run with none
        parent_id, inside_id, outside_id = parent()
    assert started == [("probe-cycle", 30), ("probe-stage", None), ("probe-stage", 30)]
    with get_client(sync_client=True) as client:
        inside = client.read_flow_run(inside_id)
        assert client.read_flow(inside.flow_id).name == "probe-stage"
        assert inside.parent_task_run_id is not None and inside.state.is_completed()
        assert str(client.read_task_run(inside.parent_task_run_id).flow_run_id) == parent_id
    assert outside_id != inside_id


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
