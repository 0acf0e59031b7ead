"""Two full cycles through a real Prefect API, real MLflow (SQLite), a real git + DVC repo and real GX."""

import hashlib

import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.batches import BatchStore
from labelloop.config import SelectParams
from labelloop.core.lock import WorkspaceBusyError
from labelloop.history import load_history
from tests.conftest import lock_held_elsewhere

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_cycles(prefect_api, workspace_template, tmp_path_factory):
    from labelloop.config import dump_params
    from labelloop.core.io import write_text
    from labelloop.flows.cycle import active_learning_cycle
    from tests.conftest import clone_workspace

    workspace = clone_workspace(workspace_template, tmp_path_factory.mktemp("cycles") / "ws")
    # Segments are monitored (x_9 has 50 distinct values: the 30 most frequent, the rest pooled).
    write_text(workspace.params_path, dump_params(workspace.params().with_overrides(monitor={"segments": ["x_9"]})))
    versioning.git(workspace.registry_dir, "commit", "-q", "-am", "monitor segments of x_9")  # params are versioned
    first_labeled_sha = hashlib.sha256(workspace.labeled_path.read_bytes()).hexdigest()
    records = [active_learning_cycle(str(workspace.root)) for _ in range(2)]
    return workspace, records, first_labeled_sha


def test_two_cycles_make_two_data_versions_runs_and_a_consistent_champion(two_cycles, tmp_path):
    ws, records, seed_sha = two_cycles
    tags = versioning.data_tags(ws.registry_dir)
    assert tags == ["data-v1", "data-v2", "data-v3"]
    assert [r.data_tag for r in records] == ["data-v2", "data-v3"]
    labeled = pd.read_parquet(ws.labeled_path)
    assert len(labeled) == 50 + 2 * 40 and labeled.item_id.is_unique

    # dvc checkout of the first tag restores the first labelled set byte for byte.
    versioning.checkout(ws.registry_dir, "data-v1", ws.labeled_path)
    assert hashlib.sha256(ws.labeled_path.read_bytes()).hexdigest() == seed_sha
    versioning.checkout(ws.registry_dir, "data-v3", ws.labeled_path)
    assert len(pd.read_parquet(ws.labeled_path)) == len(labeled)

    # Every MLflow run carries its data tag; one run per data version.
    client = tracking.client(ws)
    runs = client.search_runs([tracking.experiment_id(ws)])
    assert sorted(r.data.tags["data_tag"] for r in runs) == tags

    # The champion alias points where the gate decisions say.
    name = ws.params().train.model_name
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    promoted = [str(v.version) for v in versions if v.tags.get("gate.decision") == "promote"]
    assert promoted, "the first model must have been promoted"
    assert tracking.alias_version(ws, name, tracking.CHAMPION) == promoted[-1]
    for v in versions:
        assert v.tags.get("gate.decision") in ("promote", "reject")
    history = load_history(ws)
    assert [h.cycle for h in history] == [0, 1, 2]
    assert history[-1].champion_version == promoted[-1]


def test_batches_record_strategy_seed_and_move_to_versioned(two_cycles):
    ws, _, _ = two_cycles
    metas = BatchStore(ws).list()
    assert len(metas) == 2
    for meta, tag in zip(metas, ["data-v2", "data-v3"], strict=True):
        assert (meta.status, meta.strategy, meta.seed, meta.versioned_in) == ("imported", "hybrid", 0, tag)
        items = BatchStore(ws).items(meta.batch_id)
        assert items.utility.notna().all() and len(items) == 40


def test_per_run_override_applies_to_that_run_only(prefect_api, workspace):
    from labelloop.flows.cycle import active_learning_cycle

    active_learning_cycle(str(workspace.root), select=SelectParams(strategy="entropy", batch_size=15, seed=7, audit_fraction=0))
    meta = BatchStore(workspace).list()[-1]
    assert (meta.strategy, meta.n_items, meta.seed) == ("entropy", 15, 7)
    assert workspace.params().select.strategy == "hybrid"  # the file is untouched


def test_a_second_cycle_on_a_locked_workspace_fails_fast_and_writes_nothing(prefect_api, workspace):
    from labelloop.flows.cycle import active_learning_cycle

    # The holder is another thread (as good as another process for flock): the lock is re-entrant
    # only within the thread that holds it, so the cycle calling its stage flows does not trip on it.
    with lock_held_elsewhere(workspace), pytest.raises(WorkspaceBusyError, match="another cycle"):
        active_learning_cycle(str(workspace.root))
    assert BatchStore(workspace).list() == []
    assert versioning.data_tags(workspace.registry_dir) == ["data-v1"]


def test_every_stage_flow_runs_alone(prefect_api, workspace):
    from labelloop.flows import stages

    root = str(workspace.root)
    stages.train_flow(root)
    assert stages.gate_flow(root).promote
    assert stages.production_flow(root)["rows"] == 400
    assert stages.capture_flow(root).rows_added > 0
    batch_id = stages.select_flow(root)
    assert stages.export_flow(root) == [batch_id]
    assert stages.import_flow(root)[0].status == "imported"
    assert stages.dataset_flow(root).tag == "data-v2"
    assert stages.train_flow(root).data_tag == "data-v2"
    assert stages.gate_flow(root).challenger_version == "2"


def test_lineage_of_the_champion_traces_data_batches_params_and_gate(two_cycles):
    from labelloop.apps.lineage import lineage

    ws, _, _ = two_cycles
    name = ws.params().train.model_name
    info = lineage(ws, name)  # the champion
    assert info["aliases"][0] == "champion"
    assert info["data"]["tag"] in versioning.data_tags(ws.registry_dir)
    assert info["train_params"]["n_estimators"] == "40"
    assert info["gate"]["decision"] == "promote" and info["gate"]["reasons"]
    batch_ids = {b["batch_id"] for b in info["batches"]}
    assert batch_ids <= {m.batch_id for m in BatchStore(ws).list()}
    for batch in info["batches"]:
        assert (batch["strategy"], batch["seed"], batch["vendor"]) == ("hybrid", 0, "simulated")
        assert batch["annotator_agreement"] == 1.0
    with pytest.raises(ValueError, match="no version or alias .no-such-alias.: model .* has versions"):
        lineage(ws, name, "no-such-alias")


def test_every_cycle_reports_its_stop_rules_and_a_halted_cycle_buys_nothing(two_cycles):
    from labelloop.config import GateParams, StopParams
    from labelloop.flows.cycle import active_learning_cycle
    from labelloop.stages import gate as stopping

    ws, _, _ = two_cycles
    for record in load_history(ws)[1:]:
        assert set(record.stop["rules"]) == {"label_budget", "target_metric", "plateau", "stable_predictions"}
        assert record.primary_metric == record.champion_accuracy  # gate.primary_metric is accuracy
        assert stopping.predictions_path(ws, record.cycle).exists()  # each cycle trained a model
    stop_set = stopping.stop_set(ws, ws.params().gate.stop.stop_set_size)
    assert len(stop_set) == min(1000, 400) and stop_set.prediction_id.is_unique  # drawn from cycle 1's 400 logged rows

    batches_before = len(BatchStore(ws).list())
    halted = active_learning_cycle(str(ws.root), gate=GateParams(stop=StopParams(label_budget=100, halt=True)))
    assert halted.batch_id is None and len(BatchStore(ws).list()) == batches_before
    assert halted.stop["stop"] and "label budget reached" in halted.stop["reasons"][0]
    assert halted.decision == "no-new-data"


def test_each_cycle_records_its_trained_models_metric_which_the_plateau_rule_reads(two_cycles):
    ws, records, _ = two_cycles
    name = ws.params().train.model_name
    plateau_points = []
    for record in records:
        challenger = tracking.find_version(ws, name, record.data_tag, tracking.client(ws).get_model_version(
            name, record.trained_version).tags["params_hash"])
        assert str(challenger.version) == record.trained_version  # the model trained on this cycle's data
        metrics = tracking.model_metrics(ws, name, record.trained_version).metrics
        assert record.trained_metric == pytest.approx(metrics["accuracy"])  # promoted or not: the challenger's
        plateau_points.append((record.labels, record.trained_metric))
    (a_labels, a_metric), (b_labels, b_metric) = plateau_points
    assert records[1].stop["rules"]["plateau"]["recent_gains_per_100"][-1] == pytest.approx(
        (b_metric - a_metric) / (b_labels - a_labels) * 100)


def test_each_cycle_reports_drift_and_segments_on_its_line_in_mlflow_and_in_status(two_cycles):
    from labelloop.apps.cycle import segment_metric
    from labelloop.stages import monitor

    ws, records, _ = two_cycles
    name = ws.params().train.model_name
    log = {line["cycle"]: line for line in monitor.load_segment_log(ws)}
    assert set(log) >= {0, 1, 2}
    client = tracking.client(ws)
    for record in records:
        line = log[record.cycle]
        # 400 rows a cycle, fewer than capture.drift.min_rows: the window is reported as not measured.
        assert record.drift == line["drift"] and record.drift.startswith("drift not measured (window has 400 rows")
        assert f"| {record.drift}" in record.line() and f"| {record.segments}" in record.line()
        stats = monitor.segment_stats(line)
        assert {s.column for s in stats} == {"x_9"}
        assert sum(s.labels for s in stats) == record.labels  # every labelled row in one segment
        assert all(s.holdout_accuracy is not None for s in stats if s.holdout_rows)  # the champion scored the holdout
        run_id = client.get_model_version(name, record.trained_version).run_id
        artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
        assert {"plots/learning_curve.png", "plots/segments.png"} <= artifacts
        history = client.get_metric_history(run_id, segment_metric("labels", "x_9", stats[0].segment))
        # step = cycle (a later cycle that trains nothing logs on the champion's run: that step is its own)
        assert {m.step: m.value for m in history}[record.cycle] == float(stats[0].labels)
    assert monitor.status_lines(ws)[0].startswith("segments x_9: ")


def test_the_parent_cycle_run_carries_a_summary_artifact(two_cycles):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    ws, records, _ = two_cycles
    batch_ids = [m.batch_id for m in BatchStore(ws).list()]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cycle"])))
        mine = [a for a in artifacts if any(b in str(a.data) for b in batch_ids)]
        runs = {a.flow_run_id: client.read_flow_run(a.flow_run_id) for a in mine}
    assert len(mine) == 2  # one per cycle, on the parent run itself (not on a task or a subflow)
    assert {client_run.parent_task_run_id for client_run in runs.values()} == {None}
    assert {a.task_run_id for a in mine} == {None}
    for artifact, record in zip(sorted(mine, key=lambda a: a.created), records, strict=True):
        text = str(artifact.data)
        assert artifact.description == record.line()
        assert f"## Cycle {record.cycle}: gate {record.decision}" in text and record.batch_id in text
        for section in ("### Batch", "### Import", "### Data version", "### Gate", "### Stop rules", "### Drift and segments",
                        "### Links"):
            assert section in text
        assert "| label_budget |" in text and "challenger run" in text


def test_each_stage_of_a_cycle_is_a_task_run_of_the_cycle_run_named_after_it(two_cycles):
    """The stages run as tasks of the cycle's flow run (flows.stages.stage_task: no flow run and no heartbeat
    thread each), and are still what the Prefect UI shows: one completed task run per stage, named after it,
    under its cycle's run; the stage reports (batch, import, gate) sit on that run and on their stage's task run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    from labelloop.apps.reports import load_stage_params

    ws, records, _ = two_cycles
    recorded: dict[str, dict[str, str]] = {}  # cycle run id → {stage task run id: stage}
    for line in load_stage_params(ws):
        if line["task_run_id"] is None:  # a stage flow run alone (a test after the module's cycles)
            assert line["flow_run_id"] == line["root_flow_run_id"]
            continue
        assert line["flow_run_id"] == line["root_flow_run_id"]  # the cycle's own run: no run per stage
        recorded.setdefault(line["flow_run_id"], {})[line["task_run_id"]] = line["stage"]
    every_stage = {"production", "capture", "select", "export", "import", "dataset", "train", "gate"}
    with get_client(sync_client=True) as client:
        for cycle_run_id, stages in recorded.items():  # the module's two cycles, and any a test ran after them
            assert client.read_flow(client.read_flow_run(cycle_run_id).flow_id).name == "active_learning_cycle"
            assert not client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[cycle_run_id])))
            task_runs = {str(run.id): run for run in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[cycle_run_id])))}
            for task_run_id, stage in stages.items():
                run = task_runs[task_run_id]
                assert run.name.rsplit("-", 1)[0] == stage and run.state.is_completed()
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[cycle_run_id])))
            made_by = {"capture": "capture", "batch": "select", "import": "import", "gate": "gate"}
            on_stage = [(a.key, stages.get(str(a.task_run_id))) for a in artifacts if a.key in made_by]
            assert {key for key, _ in on_stage} >= {"capture", "import"}  # a halted cycle selects no batch
            assert all(made_by[key] == stage for key, stage in on_stage), on_stage
    assert sum(set(stages.values()) >= every_stage for stages in recorded.values()) >= len(records)
