"""The loop's bookkeeping between stages: what a cycle must finish first, and its history row.

The parent flow (flows/cycle.py) calls these through Prefect tasks (tasks/cycle.py), so every arrow of
the loop shows in the Prefect UI and is retried like any other step.
"""

from __future__ import annotations

from dataclasses import dataclass

from labelloop.adapters import tracking, versioning
from labelloop.apps.reports import cycle_markdown, gate_run_links, label_spend, plot_learning_curve, plot_segments
from labelloop.batches import BatchStore
from labelloop.columns import ITEM_ID
from labelloop.config import Params
from labelloop.core.io import read_parquet
from labelloop.domain.cycle import CycleRecord
from labelloop.history import append_history, history_path, load_history
from labelloop.stages import audit as audit_stage
from labelloop.stages import autolabel as autolabel_stage
from labelloop.stages import bandit as bandit_stage
from labelloop.stages import gate as gate_stage
from labelloop.stages import monitor
from labelloop.stages import train as train_stage
from labelloop.workspace import Workspace


@dataclass(frozen=True)
class CycleStart:
    """What the cycle found before its first stage."""

    champion_version: str | None  # None: no model yet, the cycle first trains one on the seed set
    resumed_gate: str | None = None  # a version an interrupted gate promoted now, as its decision said


@dataclass(frozen=True)
class PendingVersion:
    """A tagged data version without a history row (left by a killed cycle or made by a rollback)."""

    data_tag: str
    needs_training: bool  # no model for it was gated yet
    decision: str | None = None  # the recorded gate decision when one exists


def start_cycle(workspace: Workspace, model_name: str) -> CycleStart:
    """Recover the registry, refuse an experiment line, and finish an interrupted gate.

    Called under the workspace lock, which proves no other labelloop process writes here."""
    versioning.recover_registry(workspace.registry_dir)
    versioning.require_production_line(workspace.registry_dir)  # before any write: an experiment never reaches production
    champion = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    if champion is None:
        return CycleStart(champion_version=None)
    resumed = gate_stage.resume_gate(workspace, model_name)
    return CycleStart(champion_version=tracking.alias_version(workspace, model_name, tracking.CHAMPION), resumed_gate=resumed)


def pending_version(workspace: Workspace, params: Params) -> PendingVersion | None:
    """The data version a killed cycle (or a rollback) left behind, or None when every version has its row."""
    tag = versioning.version_of(workspace.registry_dir, workspace.labeled_path)
    if tag is None or tag in {r.data_tag for r in load_history(workspace)}:
        return None
    model = tracking.find_version(workspace, params.train.model_name, tag, train_stage.params_hash(params.train))
    if model is None or "gate.decision" not in model.tags:
        return PendingVersion(data_tag=tag, needs_training=True)
    return PendingVersion(data_tag=tag, needs_training=False, decision=model.tags["gate.decision"])


def cycle_record(workspace: Workspace, params: Params, data_tag: str, labels: int, new_labels: int, decision: str,
                 batch_id: str | None) -> CycleRecord:
    """The history row of a cycle that ended on `data_tag`, with the champion's metrics and the spend so far."""
    model_name = params.train.model_name
    champion = tracking.alias_version(workspace, model_name, tracking.CHAMPION)
    metrics = tracking.model_metrics(workspace, model_name, champion).metrics if champion else {}
    cost, cost_per_point = label_spend(workspace, metrics.get("accuracy"))
    trained_version, trained_metric = trained_model_metric(workspace, params, data_tag)
    return CycleRecord(
        cycle=max([r.cycle for r in load_history(workspace)], default=-1) + 1, labels=labels, data_tag=data_tag,
        champion_version=champion, champion_accuracy=metrics.get("accuracy"), champion_macro_f1=metrics.get("macro_f1"),
        decision=decision, batch_id=batch_id, new_labels=new_labels, cost=cost, cost_per_point=cost_per_point,
        trained_version=trained_version, trained_metric=trained_metric,
        bandit=bandit_stage.batch_text(workspace, batch_id),
    )


def trained_model_metric(workspace: Workspace, params: Params, data_tag: str | None) -> tuple[str | None, float | None]:
    """(version, gate.primary_metric) of the model trained on `data_tag` with the current train params — the
    cycle's challenger, promoted or not, which the plateau rule watches; (None, None) when there is none."""
    if data_tag is None:
        return None, None
    model = tracking.find_version(workspace, params.train.model_name, data_tag, train_stage.params_hash(params.train))
    if model is None:
        return None, None
    value = tracking.model_metrics(workspace, params.train.model_name, str(model.version)).metrics.get(params.gate.primary_metric)
    return str(model.version), None if value is None else float(value)


def record_cycle(workspace: Workspace, params: Params, record: CycleRecord, trained_version: str | None) -> CycleRecord:
    """Fill in drift, segments and the stop rules' report, append the row to the history, publish it to MLflow."""
    monitor_cycle(workspace, params, record)
    record = gate_stage.report_stop_rules(workspace, record, params.gate, params.train.model_name, trained_version)
    append_history(workspace, record)
    publish_cycle(workspace, params, record, trained_version)
    return record


def monitor_cycle(workspace: Workspace, params: Params, record: CycleRecord) -> dict:
    """The cycle's drift window and segments (reports/segments.jsonl), their short texts on the record's line."""
    from labelloop.domain.segments import segments_text

    line = monitor.measure_cycle(workspace, params, record)
    monitor.record_segments(workspace, line)
    record.drift = line["drift"]
    record.segments = segments_text(monitor.segment_stats(line)) or None
    return line


def cycle_metrics(line: dict) -> dict[str, float]:
    """MLflow metrics of a monitor line: the window's drift (drift.psi.<column>, drift.columns_drifted, ...,
    drift.psi.confidence) and per segment its labels and accuracies (`segment_metric`: segment.labels.<column>/<segment>,
    segment.holdout_accuracy..., segment.audit_accuracy...)."""
    out = {key: float(value) for key, value in line.get("drift_metrics", {}).items()}
    stats = monitor.segment_stats(line)
    for s in stats:
        out[segment_metric("labels", s.column, s.segment)] = float(s.labels)
        if s.holdout_accuracy is not None:
            out[segment_metric("holdout_accuracy", s.column, s.segment)] = s.holdout_accuracy
        if s.audit is not None:
            out[segment_metric("audit_accuracy", s.column, s.segment)] = s.audit.value
    if stats:
        out["segments.drifted"] = float(sum(s.drifted for s in stats))
        out["segments.underperforming"] = float(sum(s.underperforming for s in stats))
    return out


def segment_metric(kind: str, column: str, segment: str) -> str:
    """'segment.<kind>.<column>/<segment>' in the characters MLflow allows in a metric name (others become '_')."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in f"segment.{kind}.{column}/{segment}")[:250]


def publish_cycle(workspace: Workspace, params: Params, record: CycleRecord, trained_version: str | None) -> str | None:
    """Log the cycle's drift and segment metrics (step = cycle) and the plots (plots/learning_curve.png,
    plots/segments.png) to the MLflow run of the model trained this cycle, else the champion's; its run id."""
    version = trained_version or record.champion_version
    if version is None:
        return None
    run_id = tracking.client(workspace).get_model_version(params.train.model_name, str(version)).run_id
    line = next((r for r in monitor.load_segment_log(workspace) if r.get("cycle") == record.cycle), {})
    metrics = cycle_metrics(line)
    autolabelled = autolabel_stage.cycle_report(workspace, record.cycle)
    if autolabelled is not None:  # autolabel_precision_low = 1 when the bound fell below the target
        metrics.update(autolabelled.metrics())
    if metrics:
        audit_stage.log_metrics(workspace, run_id, metrics, record.cycle)
    client = tracking.client(workspace)
    for png in (plot_learning_curve(workspace), plot_segments(workspace)):
        if png is not None:
            client.log_artifact(run_id, str(png), artifact_path=train_stage.PLOTS_DIR)
    return run_id


def close_cycle(workspace: Workspace, params: Params, data_tag: str, labels: int, new_labels: int, decision: str,
                batch_id: str | None, capture_lost: str | None, trained_version: str | None) -> CycleRecord:
    """The cycle's history row: champion metrics, spend so far, what capture lost, the stop rules."""
    record = cycle_record(workspace, params, data_tag, labels, new_labels, decision, batch_id)
    record.capture_lost = capture_lost
    record.audit = cycle_audit(workspace, params, record.cycle, trained_version)
    autolabelled = autolabel_stage.cycle_report(workspace, record.cycle)
    record.autolabel = autolabelled.text() if autolabelled is not None else None
    return record_cycle(workspace, params, record, trained_version)


def cycle_audit(workspace: Workspace, params: Params, cycle: int, trained_version: str | None) -> str | None:
    """The champion's and this cycle's challenger's audit estimates (each on the audit items it did not train on),
    logged to MLflow and reports/audit.jsonl; the text for the cycle line (None without audit items)."""
    try:
        # Per segment of the first monitored column (`monitor.segments`, else `select.group_column`).
        segment = next(iter(params.monitor.segments), None) or params.select.group_column
        results = audit_stage.audit_cycle(workspace, params.train.model_name, cycle, segment, challenger=trained_version)
    except tracking.IncompatibleModel as error:  # a version stored by an older labelloop cannot predict here
        return f"audit: not estimated ({error})"
    return audit_stage.audit_text(results)


def record_seed(workspace: Workspace, params: Params, data_tag: str, model_version: str, decision: str) -> CycleRecord | None:
    """The history row of the first model, trained on the seed set (None when it is already recorded)."""
    if data_tag in {r.data_tag for r in load_history(workspace)}:
        return None
    labels = int(tracking.model_metrics(workspace, params.train.model_name, model_version).new_labels)
    record = cycle_record(workspace, params, data_tag, labels, 0, decision, None)
    monitor_cycle(workspace, params, record)
    append_history(workspace, record)
    publish_cycle(workspace, params, record, model_version)
    return record


def record_pending(workspace: Workspace, params: Params, pending: PendingVersion, decision: str,
                   trained_version: str | None) -> CycleRecord:
    """The history row of a version completed at the start of a cycle."""
    history = load_history(workspace)
    labels = len(read_parquet(workspace.labeled_path, columns=[ITEM_ID]))
    previous = history[-1].labels if history else 0
    batches = [m.batch_id for m in BatchStore(workspace).list() if m.versioned_in == pending.data_tag]
    record = cycle_record(workspace, params, pending.data_tag, labels, labels - previous, decision,
                          batches[-1] if batches else None)
    return record_cycle(workspace, params, record, trained_version)


def cycle_summary(workspace: Workspace, model_name: str, record: CycleRecord, batch_id: str | None, imports: list,
                  version, decision, run_url: str | None = None) -> str:
    """The markdown the parent cycle run carries: batch, import, data version, gate, stop rules, links."""
    store = BatchStore(workspace)
    batch = store.get(batch_id) if batch_id and store.exists(batch_id) else None
    links: dict[str, str] = {}
    if run_url:
        links["this cycle in Prefect"] = f"[flow run]({run_url})"
    if decision is not None:
        links |= gate_run_links(workspace, model_name, decision)
    if batch is not None:
        links["batch files"] = f"`{workspace.batch_dir(batch.batch_id)}`"
    if record.data_tag:
        links["data version"] = f"`git -C {workspace.registry_dir} show {record.data_tag}`"
    links["cycle history"] = f"`{history_path(workspace)}`"
    line = next((r for r in monitor.load_segment_log(workspace) if r.get("cycle") == record.cycle), None)
    return cycle_markdown(record, batch, imports, version, decision, links, line)
