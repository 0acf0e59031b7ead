"""The parent flow's own steps: each a task calling one `labelloop.apps.cycle` function."""

from __future__ import annotations

from prefect import task

from labelloop.apps import cycle
from labelloop.config import Params
from labelloop.domain.cycle import CycleRecord
from labelloop.tasks import events
from labelloop.tasks.environment import open_workspace


@task(name="start-cycle", retries=2, retry_delay_seconds=[2, 10])
def start_cycle(workspace: str, model_name: str) -> cycle.CycleStart:
    """Registry recovered, production line checked, an interrupted gate finished; the champion found."""
    return cycle.start_cycle(open_workspace(workspace), model_name)


@task(name="find-pending-version", retries=2, retry_delay_seconds=[2, 10])
def pending_version(workspace: str, params: Params) -> cycle.PendingVersion | None:
    return cycle.pending_version(open_workspace(workspace), params)


@task(name="record-seed-model", retries=2, retry_delay_seconds=[2, 10])
def record_seed(workspace: str, params: Params, data_tag: str, model_version: str, decision: str) -> CycleRecord | None:
    return cycle.record_seed(open_workspace(workspace), params, data_tag, model_version, decision)


@task(name="record-pending-version", retries=2, retry_delay_seconds=[2, 10])
def record_pending(workspace: str, params: Params, pending: cycle.PendingVersion, decision: str,
                   trained_version: str | None) -> CycleRecord:
    ws = open_workspace(workspace)
    record = cycle.record_pending(ws, params, pending, decision, trained_version)
    events.stop_fired(ws, record, params.gate.stop.halt)  # `labelloop.stop.fired` when its stop rules fired
    return record


@task(name="record-cycle", retries=2, retry_delay_seconds=[2, 10])
def close_cycle(workspace: str, params: Params, data_tag: str, labels: int, new_labels: int, decision: str,
                batch_id: str | None, capture_lost: str | None, trained_version: str | None) -> CycleRecord:
    """The cycle's history row: champion metrics, spend, stop rules (`labelloop.stop.fired` when they fired)."""
    ws = open_workspace(workspace)
    record = cycle.close_cycle(ws, params, data_tag, labels, new_labels, decision, batch_id, capture_lost, trained_version)
    events.stop_fired(ws, record, params.gate.stop.halt)
    return record


@task(name="summarise-cycle")
def summarise(workspace: str, model_name: str, record: CycleRecord, batch_id: str | None, imports: list, version,
              decision, run_url: str | None) -> str:
    """The cycle's summary as markdown (published by the parent flow as its artifact)."""
    return cycle.cycle_summary(open_workspace(workspace), model_name, record, batch_id, imports, version, decision, run_url)
