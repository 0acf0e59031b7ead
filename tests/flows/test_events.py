"""Event-driven retraining (tasks/events.py, labelloop/apps/announcements.py, flows/deploy.py's trigger).

Unit tests call the tasks' functions (`.fn`) with the sending recorded: an import that lands labels sends
`labelloop.labels.imported` once, a rerun sends nothing, an event that did not reach the server is sent
again with the same id, a gate rejection and a fired stop rule send theirs. The integration test lets the
session's real Prefect server evaluate the `retrain` deployment's trigger: one import, one retrain run;
the import again, no second run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from labelloop.apps import announcements
from labelloop.batches import BatchStore
from labelloop.config import ExportParams, ImportParams
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.gate import GateDecision
from labelloop.tasks import events
from labelloop.tasks.importing import import_labels
from tests.stages.test_importing import _exported_batch


@pytest.fixture
def sent(monkeypatch):
    """Every event `events.send` is asked to send, as (event, resource, payload, id); each one delivered."""
    calls: list[tuple[str, dict, dict, uuid.UUID]] = []

    def record(event, resource, payload, key, related=None):
        calls.append((event, resource, payload, events.event_id(key)))
        return events.event_id(key)

    monkeypatch.setattr(events, "send", record)
    return calls


def _import(ws):
    return import_labels.fn(str(ws.root), ImportParams(), ExportParams())


def test_an_import_that_lands_labels_sends_one_event_and_a_rerun_none(workspace, sent):
    batch_id, _ = _exported_batch(workspace)
    [report] = _import(workspace)
    assert report.n_labelled > 0
    [(event, resource, payload, _)] = sent
    assert event == events.LABELS_IMPORTED
    slug = events.workspace_slug(workspace.root)
    assert resource["prefect.resource.id"] == f"labelloop.workspace.{slug}.batch.{batch_id}"
    assert resource[events.WORKSPACE_LABEL] == slug and resource[events.IMPORTED_BY_LABEL] == "import"  # no flow run: alone
    assert (payload["batch_ids"], payload["n_new_labels"], payload["imported_by"]) == ([batch_id], report.n_labelled, "import")

    assert _import(workspace) == []  # the rerun lands nothing
    assert len(sent) == 1  # and sends nothing
    assert announcements.unannounced_batches(workspace) == []


def test_an_event_that_did_not_reach_the_server_is_sent_again_with_the_same_id(workspace, monkeypatch):
    batch_id, _ = _exported_batch(workspace, size=6)
    attempts: list[uuid.UUID] = []

    def lost_then_delivered(event, resource, payload, key, related=None):
        attempts.append(events.event_id(key))
        return None if len(attempts) == 1 else attempts[-1]  # the first send never got to the server

    monkeypatch.setattr(events, "send", lost_then_delivered)
    _import(workspace)
    assert len(attempts) == 1 and [b.batch_id for b in announcements.unannounced_batches(workspace)] == [batch_id]
    _import(workspace)  # lands nothing new, but announces what the first run could not
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # one event id: a server that saw it ignores the repeat
    _import(workspace)
    assert len(attempts) == 2


def test_new_answers_for_a_batch_are_announced_and_a_batch_already_versioned_is_adopted_silently(workspace, sent):
    batch_id, _ = _exported_batch(workspace, size=6)
    _import(workspace)
    store = BatchStore(workspace)
    # A later payload for the batch (a vendor's correction, more answers for a partial batch): a new announcement.
    marker = workspace.batch_dir(batch_id) / "imported.json"
    marker.write_text(marker.read_text().replace('"payload_sha256": "', '"payload_sha256": "0'))
    [again] = announcements.unannounced_batches(workspace)
    assert (again.batch_id, again.n_new, again.n_labelled) == (batch_id, 0, store.get(batch_id).n_labelled)  # corrections
    # Imported before events existed (no announcement) and already in a data version: nothing to retrain on.
    announcements.announced_path(workspace, batch_id).unlink()
    store.mark(batch_id, versioned_in="data-v2")
    assert announcements.unannounced_batches(workspace) == []
    assert announcements.announced_path(workspace, batch_id).exists()
    assert len(sent) == 1


def _decision(promote: bool) -> GateDecision:
    return GateDecision(promote=promote, reasons=["accuracy 0.81 vs 0.84: not better by 0.01"], primary_metric="accuracy",
                        challenger_value=0.81, champion_value=0.84, challenger_version="3", champion_version="2")


def test_a_gate_rejection_and_a_fired_stop_rule_send_their_events_with_the_reasons(workspace, sent):
    assert events.gate_rejected(workspace, "m", _decision(promote=True)) is None
    events.gate_rejected(workspace, "m", _decision(promote=False))
    assert events.stop_fired(workspace, CycleRecord(cycle=4, labels=300, stop={"stop": False, "reasons": []}), False) is None
    fired = CycleRecord(cycle=5, labels=340, data_tag="data-v6",
                        stop={"stop": True, "reasons": ["label budget 100.00 spent"], "rules": {"budget": {"fired": True}}})
    events.stop_fired(workspace, fired, True)
    [(gate_event, gate_resource, gate_payload, _), (stop_event, _, stop_payload, _)] = sent
    assert gate_event == events.GATE_REJECTED and gate_payload["reasons"] == _decision(False).reasons
    assert gate_resource["prefect.resource.id"].endswith(".model.m.3") and gate_payload["champion_version"] == "2"
    assert stop_event == events.STOP_FIRED
    assert (stop_payload["reasons"], stop_payload["cycle"], stop_payload["halt"]) == (["label budget 100.00 spent"], 5, True)


def test_outside_a_flow_run_with_no_prefect_api_nothing_is_sent(monkeypatch):
    import prefect.events
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(prefect.events, "emit_event", lambda *args, **kwargs: pytest.fail("would start a temporary server"))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert events.send(events.STOP_FIRED, {"prefect.resource.id": "labelloop.x"}, {}, "key") is None


def test_only_a_stand_alone_import_run_is_the_retrain_triggers_business():
    from labelloop.flows.deploy import SPECS, event_triggers

    workspace_root = Path("/srv/ws")
    [trigger] = event_triggers(SPECS["retrain"], workspace_root)
    assert trigger.expect == {events.LABELS_IMPORTED} and trigger.threshold == 1
    assert trigger.match.model_dump() == {events.WORKSPACE_LABEL: events.workspace_slug(workspace_root),
                                          events.IMPORTED_BY_LABEL: "import"}
    assert SPECS["retrain"].cron is None  # the hourly poll is gone
    assert all(event_triggers(spec, workspace_root) == [] for key, spec in SPECS.items() if key != "retrain")


# ------------------------------------------------------------------------------------------ integration
def _runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def _wait_for_runs(deployment_id, at_least: int, seconds: float) -> list:
    deadline = time.monotonic() + seconds
    runs = _runs_of(deployment_id)
    while len(runs) < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
        runs = _runs_of(deployment_id)
    return runs


@pytest.mark.slow  # the session's Prefect server evaluates the trigger (its triggers and actions services)
def test_the_server_runs_retrain_once_per_import_that_lands_labels_and_not_on_a_rerun(prefect_api, workspace, monkeypatch):
    from labelloop.flows.deploy import register
    from labelloop.flows.stages import import_flow

    real_send, delivered = events.send, []

    def spy(*args, **kwargs):
        delivered.append(real_send(*args, **kwargs))
        return delivered[-1]

    monkeypatch.setattr(events, "send", spy)
    created = register(workspace, "events", "labelloop-unit", only=["retrain"])
    [retrain_id] = created.values()
    _exported_batch(workspace, size=6)

    import_flow(str(workspace.root))
    assert len(delivered) == 1 and delivered[0] is not None  # handed to the server
    runs = _wait_for_runs(retrain_id, at_least=1, seconds=120)
    assert len(runs) == 1 and runs[0].parameters == {"workspace": str(workspace.root)}

    import_flow(str(workspace.root))  # the rerun lands nothing: no event, so nothing for the trigger
    assert len(delivered) == 1
    assert len(_wait_for_runs(retrain_id, at_least=2, seconds=10)) == 1


@pytest.mark.slow  # needs flow runs on the session's Prefect server
def test_an_import_inside_another_run_is_marked_so_the_trigger_leaves_it_to_that_run(prefect_api):
    from prefect import flow

    @flow(name="import")
    def alone() -> str:
        return events.imported_by()

    @flow(name="active_learning_cycle")
    def parent() -> str:
        return alone()

    assert alone() == "import"
    assert parent() == "cycle"
