"""The records the stages share in a workspace: batches, the candidate pool, the review queue.

A batch's id is derived from what it was selected from (pool content + selection params), so a
rerun of select after a crash finds the batch it already wrote instead of making a second one.
Status moves selected → exported → partial → imported; `versioned_in` records the data tag.
Select (`labelloop.stages.select`) writes a batch, export (`labelloop.stages.export`) its plan,
import (`labelloop.stages.importing`) its final labels, dataset versions them.

The pool holds captured rows not yet in a batch: capture adds to it, select and export take items
out of it. The review queue holds items whose labels need another look: import adds to it (answers that failed
review, and labels the error scan doubts) and resolves them, export sends the pending ones again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from labelloop.columns import ITEM_ID, LABEL
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.domain.quality import require_columns
from labelloop.workspace import Workspace


@dataclass
class BatchMeta:
    batch_id: str
    key: str
    status: str
    strategy: str
    selector: str
    seed: int
    params: dict
    n_items: int
    created_at: str
    champion_version: str | None = None
    vendor: str | None = None
    vendor_ref: str | None = None
    n_labelled: int = 0
    n_quarantined: int = 0
    cost: float = 0.0
    versioned_in: str | None = None
    seconds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # e.g. ece_before / ece_after when calibrated
    selector_used: str | None = None  # a preset strategy (hybrid) brings its own selector
    quality: dict = field(default_factory=dict)  # export plan counts: new, gold, review, easy, overlap items
    labels_ordered: int = 0  # answers asked of the vendor (sum of annotators_wanted)
    labels_bought: int = 0  # answers received and paid (cost = labels_bought x export.price_per_label)
    history: list = field(default_factory=list)
    # select.strategy auto: the arm that drew the batch, its probability, every arm's; reward once measured
    bandit: dict = field(default_factory=dict)


class BatchStore:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def _meta_path(self, batch_id: str):
        return self.workspace.batch_dir(batch_id) / "meta.json"

    def exists(self, batch_id: str) -> bool:
        return self._meta_path(batch_id).exists()

    def get(self, batch_id: str) -> BatchMeta:
        data = read_json(self._meta_path(batch_id))
        if data is None:
            raise KeyError(f"no batch {batch_id!r} in {self.workspace.batches_dir}")
        return BatchMeta(**data)

    def list(self) -> list[BatchMeta]:
        if not self.workspace.batches_dir.exists():
            return []
        metas = [self.get(p.name) for p in sorted(self.workspace.batches_dir.iterdir()) if (p / "meta.json").exists()]
        return sorted(metas, key=lambda m: m.batch_id)

    def put(self, meta: BatchMeta) -> None:
        write_json(self._meta_path(meta.batch_id), asdict(meta))

    def mark(self, batch_id: str, **changes: object) -> BatchMeta:
        meta = self.get(batch_id)
        for key, value in changes.items():
            setattr(meta, key, value)
        meta.history.append({"at": utc_timestamp(), **{k: v for k, v in changes.items() if k in ("status", "versioned_in")}})
        self.put(meta)
        return meta

    def plan_path(self, batch_id: str):
        return self.workspace.batch_dir(batch_id) / "plan.parquet"

    def items(self, batch_id: str) -> pd.DataFrame:
        """Every item the batch sends: the export plan once written, else the selected items."""
        plan = self.plan_path(batch_id)
        return read_parquet(plan if plan.exists() else self.workspace.batch_dir(batch_id) / "batch.parquet")

    def selected_items(self, batch_id: str) -> pd.DataFrame:
        """The new items select picked (the batch's item budget), without QC extras."""
        return read_parquet(self.workspace.batch_dir(batch_id) / "batch.parquet")

    def final_labels(self, batch_id: str) -> pd.DataFrame:
        path = self.workspace.final_labels_dir / f"{batch_id}.parquet"
        if not path.exists():
            return pd.DataFrame(columns=[ITEM_ID, LABEL])
        return read_parquet(path)

    def queued_ids(self) -> set[str]:
        """Items in batches whose labels are not yet final."""
        ids: set[str] = set()
        for meta in self.list():
            ids.update(self.items(meta.batch_id)[ITEM_ID].astype(str))
        return ids


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- the pool
def load_pool(workspace: Workspace) -> pd.DataFrame:
    if not workspace.pool_path.exists():
        return pd.DataFrame(columns=[ITEM_ID])
    return read_parquet(workspace.pool_path)


def drop_from_pool(workspace: Workspace, pool: pd.DataFrame, item_ids: pd.Series) -> None:
    """Rewrite the pool without `item_ids` (items now in a batch); nothing is written if none was there."""
    remaining = pool[~pool[ITEM_ID].isin(set(item_ids.astype(str)))]
    if len(remaining) != len(pool):
        write_parquet(workspace.pool_path, remaining.reset_index(drop=True))


# ----------------------------------------------------------------------------------- the review queue
REVIEW_QUEUE_COLUMNS = [ITEM_ID, "source_batch", "reason", "status", "sent_batch"]
# Optional per entry: what the error scan saw (the label it doubts, the class it suggests, in words).
REVIEW_DETAIL_COLUMNS = ["given_label", "suggested_label", "detail"]


class ReviewQueue:
    """Items whose labels need another look; the next export sends the pending ones again.

    Persisted as JSON (atomic; a workspace's is `Workspace.review_queue_path`). Keyed by (item_id, source_batch):
    adding the same batch twice is a no-op, so a re-run import does not duplicate entries. `mark_sent` records
    the export that took an item; `resolve` closes items once a later import gave them an accepted label.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data = read_json(self.path, default=None) or {"items": []}
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ValueError(f"{self.path} is not a review queue file (expected an 'items' list)")
        self._items: list[dict[str, Any]] = data["items"]

    def frame(self) -> pd.DataFrame:
        """Every entry: REVIEW_QUEUE_COLUMNS, then REVIEW_DETAIL_COLUMNS (None where an entry has none)."""
        frame = pd.DataFrame(self._items, columns=[*REVIEW_QUEUE_COLUMNS, *REVIEW_DETAIL_COLUMNS])
        for column in REVIEW_DETAIL_COLUMNS:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        return frame

    def _save(self) -> None:
        write_json(self.path, {"items": self._items})

    def add(self, source_batch: str, entries: pd.DataFrame) -> int:
        """Add `item_id` + `reason` rows found by one import (and any REVIEW_DETAIL_COLUMNS they carry) whose
        labels came from `source_batch`; returns how many were new."""
        require_columns(entries, [ITEM_ID, "reason"], "review entries")
        known = {(e[ITEM_ID], e["source_batch"]) for e in self._items}
        details = [c for c in REVIEW_DETAIL_COLUMNS if c in entries.columns]
        added = 0
        for _, row in entries.iterrows():
            key = (str(row[ITEM_ID]), source_batch)
            if key in known:
                continue
            known.add(key)
            entry = {ITEM_ID: key[0], "source_batch": source_batch, "reason": str(row["reason"]),
                     "status": "pending", "sent_batch": None}
            entry.update({c: str(row[c]) for c in details if not pd.isna(row[c])})
            self._items.append(entry)
            added += 1
        if added:
            self._save()
        return added

    def ever_queued(self, reason: str) -> set[str]:
        """Items that have had an entry with `reason`, whatever its status (the error scan asks about a label once)."""
        return {e[ITEM_ID] for e in self._items if e["reason"] == reason}

    def pending(self, max_sends: int | None = None) -> list[str]:
        """Item ids waiting to be sent again (each once, in the order they were queued).

        With `max_sends`, items already re-sent that many times are left out: a label that keeps
        failing review (e.g. the model keeps contradicting a unanimous crowd) needs a human reviewer,
        not another paid round of the same crowd.
        """
        sends: dict[str, set[str]] = {}
        for entry in self._items:
            if entry["sent_batch"] is not None:
                sends.setdefault(entry[ITEM_ID], set()).add(entry["sent_batch"])
        seen: dict[str, None] = {}
        for entry in self._items:
            if entry["status"] == "pending" and (max_sends is None or len(sends.get(entry[ITEM_ID], ())) < max_sends):
                seen.setdefault(entry[ITEM_ID], None)
        return list(seen)

    def mark_sent(self, item_ids: Iterable[str], batch_id: str) -> None:
        ids = {str(i) for i in item_ids}
        changed = False
        for entry in self._items:
            if entry["status"] == "pending" and entry[ITEM_ID] in ids:
                entry["status"], entry["sent_batch"] = "sent", batch_id
                changed = True
        if changed:
            self._save()

    def resolve(self, item_ids: Iterable[str]) -> None:
        ids = {str(i) for i in item_ids}
        changed = False
        for entry in self._items:
            if entry["status"] == "sent" and entry[ITEM_ID] in ids:
                entry["status"] = "resolved"
                changed = True
        if changed:
            self._save()
