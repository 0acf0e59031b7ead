"""labelloop's Prefect events: what an operator or a deployment trigger can react to.

    labelloop.labels.imported   an import landed labels no event announced yet (one event per import run,
                                covering every batch it landed); the `retrain` deployment's trigger runs
                                dataset → train → gate on it (flows/deploy.py)
    labelloop.gate.rejected     the gate kept the champion: the challenger, the metric values, every reason
    labelloop.stop.fired        a cycle's stop rules fired: which, and why

Every event's resource carries `labelloop.workspace` (the workspace's slug, as in the deployments' tags and
work queue) and `labelloop.workspace.path`, so an automation can match one workspace. Inside a flow run,
Prefect adds the run, its flow and deployment as related resources.

Each event's id is derived from what it announces (uuid5), so the same fact sent twice — a task retried, a
run killed after sending and before recording it — is one event to the server's triggers, which skip an
id they have seen (recently: the server keeps them in memory). Labels are announced once per landed vendor payload on top of that
(`labelloop.apps.announcements`: a marker written after the event was sent).

Prefect and the import stage are imported inside the functions: importing this module (`flows/deploy.py`
does, for the slug) costs nothing.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labelloop.domain.cycle import CycleRecord
    from labelloop.domain.gate import GateDecision
    from labelloop.workspace import Workspace

LABELS_IMPORTED = "labelloop.labels.imported"
GATE_REJECTED = "labelloop.gate.rejected"
STOP_FIRED = "labelloop.stop.fired"

WORKSPACE_LABEL = "labelloop.workspace"
# On labelloop.labels.imported: `import` when a stand-alone import run landed the labels (a schedule, a
# person, `labelloop import`), `cycle` when a cycle did (it retrains on them itself, so no trigger should).
IMPORTED_BY_LABEL = "labelloop.imported-by"
SEND_TIMEOUT_SECONDS = 30.0
_NAMESPACE = uuid.UUID("8f1c2b7e-4d0a-5e6b-9c3d-2a1f0e9d8c7b")  # labelloop's: event ids from what they announce


def workspace_slug(root: Path) -> str:
    """A short, stable name for a workspace: its directory name + a hash of its absolute path."""
    base = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-") or "workspace"
    return f"{base[:24]}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def resource(ws: Workspace, kind: str, name: str, display: str) -> dict[str, str]:
    """An event's resource: `labelloop.workspace.<slug>.<kind>.<name>`, labelled with the workspace."""
    slug = workspace_slug(ws.root)
    return {"prefect.resource.id": f"labelloop.workspace.{slug}.{kind}.{name}", "prefect.resource.name": display,
            WORKSPACE_LABEL: slug, f"{WORKSPACE_LABEL}.path": str(ws.root)}


def event_id(key: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, key)


def send(event: str, resource: dict[str, str], payload: dict[str, Any], key: str,
         related: list[dict[str, str]] | None = None) -> uuid.UUID | None:
    """Emit the event with the id `key` names and wait (up to SEND_TIMEOUT_SECONDS) until Prefect's events
    worker has sent it to the API (with the run's related resources); its id, or None when it was not sent
    in time or there is no Prefect API to tell. A send the API refuses is logged by Prefect, not raised.

    Outside a flow run with no API configured (a task's `.fn()` in a script or a crash test) nothing is sent:
    Prefect would start a temporary server just for the event; the next import run announces it."""
    from prefect.context import FlowRunContext
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if FlowRunContext.get() is None and not PREFECT_API_URL.value():
        return None
    emitted = emit_event(event, resource=resource, related=related, payload=payload, id=event_id(key))
    if emitted is None:
        return None
    waiting = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True, name="labelloop-event-sent")
    waiting.start()
    waiting.join(SEND_TIMEOUT_SECONDS)
    return None if waiting.is_alive() else emitted.id


def imported_by() -> str:
    """`import` for a stand-alone import flow run (or no flow run at all), `cycle` when the import is a step
    of a larger run (a subflow, or a task of another flow)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return "import"
    standalone = context.flow_run.parent_task_run_id is None and context.flow is not None and context.flow.name == "import"
    return "import" if standalone else "cycle"


def announce_labels(ws: Workspace, by: str | None = None) -> uuid.UUID | None:
    """Send labelloop.labels.imported for the labels no event announced yet, then record them announced;
    nothing (None) when there are none — a rerun of an import that landed nothing new."""
    from labelloop.apps import announcements

    batches = announcements.unannounced_batches(ws)
    if not batches:
        return None
    ids = [b.batch_id for b in batches]
    by = by or imported_by()
    slug = workspace_slug(ws.root)
    labels = resource(ws, "batch", "+".join(ids), f"labels of {', '.join(ids)}") | {IMPORTED_BY_LABEL: by}
    related = [{"prefect.resource.id": f"labelloop.workspace.{slug}.batch.{b}", "prefect.resource.role": "batch",
                "prefect.resource.name": b} for b in ids]
    payload = {"workspace": str(ws.root), "batch_ids": ids, "n_new_labels": sum(b.n_new for b in batches),
               "n_labelled": sum(b.n_labelled for b in batches), "imported_by": by,
               "batches": [b.to_dict() for b in batches]}
    sent = send(LABELS_IMPORTED, labels, payload, announcements.announcement_key(slug, batches), related)
    if sent is not None:
        announcements.mark_announced(ws, batches, str(sent))
    return sent


def gate_rejected(ws: Workspace, model_name: str, decision: GateDecision) -> uuid.UUID | None:
    """labelloop.gate.rejected for a decision that kept the champion (nothing for a promotion)."""
    if decision.promote:
        return None
    version = decision.challenger_version
    payload = {"workspace": str(ws.root), "model": model_name, "challenger_version": version,
               "champion_version": decision.champion_version, "primary_metric": decision.primary_metric,
               "challenger_value": decision.challenger_value, "champion_value": decision.champion_value,
               "reasons": list(decision.reasons)}
    key = f"{workspace_slug(ws.root)}|gate|{model_name}|{version}|{decision.champion_version}|{'|'.join(decision.reasons)}"
    return send(GATE_REJECTED, resource(ws, "model", f"{model_name}.{version}", f"{model_name} v{version}"), payload, key)


def stop_fired(ws: Workspace, record: CycleRecord, halt: bool) -> uuid.UUID | None:
    """labelloop.stop.fired for a cycle whose stop rules fired (nothing otherwise)."""
    if not record.stop or not record.stop.get("stop"):
        return None
    payload = {"workspace": str(ws.root), "cycle": record.cycle, "data_tag": record.data_tag,
               "reasons": list(record.stop.get("reasons", [])), "rules": record.stop.get("rules", {}),
               "halt": halt, "labels": record.labels, "cost": record.cost}
    key = f"{workspace_slug(ws.root)}|stop|{record.cycle}|{record.data_tag}"
    return send(STOP_FIRED, resource(ws, "cycle", str(record.cycle), f"cycle {record.cycle}"), payload, key)
