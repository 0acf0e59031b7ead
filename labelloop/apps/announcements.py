"""Which imported labels no event has announced yet, and the record that one has (no Prefect here).

An import that lands labels is announced once (`labelloop.tasks.events` sends the event; a deployment
trigger retrains on it). What has landed is read from durable state the import already writes — each
batch's `imported.json` names the vendor payload its final labels came from — and compared with
`batches/<batch_id>/announced.json`, written only after the event was sent. So:

- a rerun of import that lands nothing new finds every landed payload announced: no event;
- a run killed between landing labels and announcing them is announced by the next import (the event keeps
  its id, derived from the payloads, so a server that did see it ignores the repeat);
- a corrected answer (a recheck) or more answers for a partial batch is a new payload: announced again.

A batch that already sits in a data version with no announcement (imported before events existed, or by a
run that retrained on it itself) is adopted silently: recorded as announced, no event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labelloop.batches import BatchStore, utc_timestamp
from labelloop.core.io import read_json, write_json
from labelloop.stages.importing import imported_marker
from labelloop.workspace import Workspace

ANNOUNCED_FILE = "announced.json"


@dataclass(frozen=True)
class LandedBatch:
    """A batch whose final labels changed since the last announcement."""

    batch_id: str
    payload_sha256: str  # the vendor payload its final labels were computed from
    n_labelled: int  # final labels now
    n_new: int  # final labels more than at the last announcement (all of them the first time)
    status: str  # imported | partial
    versioned_in: str | None  # the data version that already holds an earlier state of the batch

    def to_dict(self) -> dict:
        return {"batch_id": self.batch_id, "n_labelled": self.n_labelled, "n_new": self.n_new, "status": self.status,
                "payload_sha256": self.payload_sha256}


def announced_path(workspace: Workspace, batch_id: str) -> Path:
    return workspace.batch_dir(batch_id) / ANNOUNCED_FILE


def unannounced_batches(workspace: Workspace) -> list[LandedBatch]:
    """Batches whose landed labels no event announced yet (oldest batch id first); adopts the ones a data
    version already holds without an announcement (module docstring)."""
    landed = []
    for meta in BatchStore(workspace).list():
        imported = read_json(imported_marker(workspace, meta.batch_id), default=None) or {}
        sha = imported.get("payload_sha256")
        if not sha or meta.n_labelled <= 0:
            continue
        announced = read_json(announced_path(workspace, meta.batch_id), default=None)
        if announced is not None and announced.get("payload_sha256") == sha:
            continue
        batch = LandedBatch(meta.batch_id, sha, meta.n_labelled,
                            max(0, meta.n_labelled - int((announced or {}).get("n_labelled", 0))),
                            str(imported.get("status", meta.status)), meta.versioned_in)
        if announced is None and meta.versioned_in is not None:
            mark_announced(workspace, [batch], event_id=None)  # already trained on: nothing to announce
            continue
        landed.append(batch)
    return landed


def announcement_key(workspace_key: str, batches: list[LandedBatch]) -> str:
    """The same text for the same landed payloads: the event's id is derived from it."""
    return workspace_key + "|" + "|".join(f"{b.batch_id}:{b.payload_sha256}" for b in sorted(batches, key=lambda b: b.batch_id))


def mark_announced(workspace: Workspace, batches: list[LandedBatch], event_id: str | None) -> None:
    """Record that `batches` were announced (by the event `event_id`; None: adopted without one)."""
    for batch in batches:
        write_json(announced_path(workspace, batch.batch_id), {
            "payload_sha256": batch.payload_sha256, "n_labelled": batch.n_labelled, "event_id": event_id,
            "at": utc_timestamp()})
