"""The loop's bookkeeping between stages: what a cycle must finish first, and its history row.

The parent flow (flows/cycle.py) calls these through Prefect tasks (tasks/cycle.py), so every arrow of
the loop shows in the Prefect UI and is retried like any other step.
"""

from __future__ import annotations

from dataclasses import dataclass

from labelloop.adapters import tracking, versioning
from labelloop.apps.reports import cycle_markdown, gate_run_links, label_spend
from labelloop.batches import BatchStore
from labelloop.columns import ITEM_ID
from labelloop.config import Params
from labelloop.core.io import read_parquet
from labelloop.domain.cycle import CycleRecord
from labelloop.history import append_history, history_path, load_history
from labelloop.stages import gate as gate_stage
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
    return CycleRecord(
        cycle=max([r.cycle for r in load_history(workspace)], default=-1) + 1, labels=labels, data_tag=data_tag,
        champion_version=champion, champion_accuracy=metrics.get("accuracy"), champion_macro_f1=metrics.get("macro_f1"),
        decision=decision, batch_id=batch_id, new_labels=new_labels, cost=cost, cost_per_point=cost_per_point,
    )


def record_cycle(workspace: Workspace, params: Params, record: CycleRecord, trained_version: str | None) -> CycleRecord:
    """Fill in the stop rules' report and append the row to the history."""
    record = gate_stage.report_stop_rules(workspace, record, params.gate, params.train.model_name, trained_version)
    append_history(workspace, record)
    return record


def close_cycle(workspace: Workspace, params: Params, data_tag: str, labels: int, new_labels: int, decision: str,
                batch_id: str | None, capture_lost: str | None, trained_version: str | None) -> CycleRecord:
    """The cycle's history row: champion metrics, spend so far, what capture lost, the stop rules."""
    record = cycle_record(workspace, params, data_tag, labels, new_labels, decision, batch_id)
    record.capture_lost = capture_lost
    return record_cycle(workspace, params, record, trained_version)


def record_seed(workspace: Workspace, params: Params, data_tag: str, model_version: str, decision: str) -> CycleRecord | None:
    """The history row of the first model, trained on the seed set (None when it is already recorded)."""
    if data_tag in {r.data_tag for r in load_history(workspace)}:
        return None
    labels = int(tracking.model_metrics(workspace, params.train.model_name, model_version).new_labels)
    record = cycle_record(workspace, params, data_tag, labels, 0, decision, None)
    append_history(workspace, record)
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
    return cycle_markdown(record, batch, imports, version, decision, links)
