from __future__ import annotations

from prefect import task

from labelloop.stages import gate as stopping
from labelloop.adapters import tracking
from labelloop.config import GateParams
from labelloop.apps.reports import CycleRecord
from labelloop.workspace import Workspace


@task(name="evaluate-stop-rules")
def evaluate_stop_rules(workspace: str, record: CycleRecord, gate: GateParams, model_name: str,
                        trained_version: str | None) -> CycleRecord:
    """The cycle's record with the champion's primary metric and the stop rules' report filled in."""
    ws = Workspace.at(workspace)
    if trained_version is not None:
        model = tracking.load_model(ws, model_name, trained_version)
        stopping.record_stop_set_predictions(ws, record.cycle, model, gate.stop.stop_set_size)
    if record.champion_version is not None:
        record.primary_metric = tracking.model_metrics(ws, model_name, record.champion_version).metrics.get(gate.primary_metric)
    record.stop = stopping.evaluate(ws, record, gate).to_dict()
    return record
