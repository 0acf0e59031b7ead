"""Import: fetch the vendor's answers, archive them unchanged, validate, aggregate, write final labels.

Order of durable writes, each safe to repeat: raw payload archive (content-addressed name) →
quarantine file for this fetch → final labels for the batch (replaced whole) → batch status.
A rerun after a crash anywhere recomputes the same final labels from the same answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from labelloop.faults import crash_point
from labelloop.batches import BatchStore
from labelloop.config import ImportParams
from labelloop.io import write_bytes, write_parquet
from labelloop.workspace import Workspace

ITEM_ID = "item_id"


@dataclass(frozen=True)
class ImportReport:
    batch_id: str
    n_items: int
    n_answers: int
    n_labelled: int
    n_quarantined: int
    status: str
    agreement: float | None


def archive_payload(workspace: Workspace, batch_id: str, payload: bytes, name: str) -> str:
    digest = hashlib.sha256(payload).hexdigest()[:16]
    path = workspace.raw_labels_dir / batch_id / f"{digest}-{name}"
    if not path.exists():
        write_bytes(path, payload)
    return str(path)


def import_batch(workspace: Workspace, batch_id: str, vendor, params: ImportParams) -> ImportReport:
    """Fetch → archive raw → validate (GX) → gold tracking / exclusion → aggregation (majority or
    Dawid–Skene) → model-contradiction flags → final labels. See `labelloop.quality.process_import`."""
    from labelloop.label_validation import write_quarantine
    from labelloop.quality import QualityParams, batch_cost, process_import

    store = BatchStore(workspace)
    schema = workspace.schema()
    meta = store.get(batch_id)
    items = store.items(batch_id)
    fetched = vendor.fetch_labels(batch_id)
    archive_payload(workspace, batch_id, fetched.raw_payload, fetched.payload_name)
    crash_point("import.after_raw")
    has_probas = all(c in items.columns for c in schema.proba_columns)
    outcome = process_import(
        fetched.annotations, items, schema.class_names, batch_id=batch_id, params=QualityParams.from_params(params),
        state_dir=workspace.root / "quality", probas=items[[ITEM_ID, *schema.proba_columns]] if has_probas else None,
    )
    if len(outcome.quarantined):
        digest = hashlib.sha256(fetched.raw_payload).hexdigest()[:16]
        write_quarantine(workspace.quarantine_dir / f"labels-{batch_id}-{digest}.jsonl", outcome.quarantined, batch_id=batch_id)
    final = outcome.labels
    write_parquet(workspace.final_labels_dir / f"{batch_id}.parquet", final)
    crash_point("import.after_final")
    status = "imported" if not outcome.pending else ("partial" if len(final) else meta.status)
    # Every valid answer is paid (one per item x annotator): overlap, gold and excluded annotators'
    # answers included (`answers` holds them all; exclusion only splits them later).
    bought = len(outcome.answers)
    price = workspace.params().export.price_per_label
    store.mark(batch_id, status=status, n_labelled=len(final), n_quarantined=len(outcome.quarantined),
               labels_bought=bought, cost=batch_cost(bought, price)["cost"])
    agreement = float(final["agreement"].mean()) if len(final) else None
    return ImportReport(batch_id, len(items), len(fetched.annotations), len(final), len(outcome.quarantined), status, agreement)


def import_labels(workspace: Workspace, params: ImportParams, vendor) -> list[ImportReport]:
    """Import every exported batch whose labels are not all final yet."""
    store = BatchStore(workspace)
    return [import_batch(workspace, m.batch_id, vendor, params) for m in store.list() if m.status in ("exported", "partial")]
