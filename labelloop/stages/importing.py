"""Import: fetch the vendor's answers, archive them unchanged, validate, aggregate, write final labels.

Order of durable writes, each safe to repeat: raw payload archive (content-addressed name) →
quarantine file for this fetch → final labels for the batch (replaced whole) → batch status.
A rerun after a crash anywhere recomputes the same final labels from the same answers.

A fully imported batch stays open for corrections for `import.recheck_days`: each import fetches it
again, and only a payload that differs from the one its final labels came from (sha256 kept in
`batches/<batch_id>/imported.json`) is processed, so a vendor's corrected answer replaces the final
label (the last answer counts) and the dataset stage versions it as a relabel. A re-fetch that
answers fewer items than are final (an expired project, a truncated file) changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from labelloop.core.faults import crash_point
from labelloop.batches import BatchStore
from labelloop.config import ImportParams
from labelloop.core.io import read_json, write_bytes, write_json, write_parquet
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
    refused: str | None = None  # why the vendor's payload for this batch was refused unread (VendorRefused)


def archive_payload(workspace: Workspace, batch_id: str, payload: bytes, name: str) -> str:
    digest = hashlib.sha256(payload).hexdigest()[:16]
    path = workspace.raw_labels_dir / batch_id / f"{digest}-{name}"
    if not path.exists():
        write_bytes(path, payload)
    return str(path)


def imported_marker(workspace: Workspace, batch_id: str):
    """Which payload the batch's final labels were computed from."""
    return workspace.batch_dir(batch_id) / "imported.json"


def import_batch(workspace: Workspace, batch_id: str, vendor, params: ImportParams, recheck: bool = False) -> ImportReport | None:
    """Fetch → archive raw → validate (GX) → gold tracking / exclusion → aggregation (majority or
    Dawid–Skene) → model-contradiction flags → final labels. See `labelloop.domain.quality.process_import`.

    `recheck`: the batch is already imported; process the payload only if it changed and still
    answers every item that has a final label (else None: nothing written but the raw archive)."""
    from labelloop.adapters.label_validation import write_quarantine
    from labelloop.domain.quality import QualityParams, batch_cost, process_import

    store = BatchStore(workspace)
    schema = workspace.schema()
    meta = store.get(batch_id)
    items = store.items(batch_id)
    fetched = vendor.fetch_labels(batch_id)
    archive_payload(workspace, batch_id, fetched.raw_payload, fetched.payload_name)
    crash_point("import.after_raw")
    payload_sha = hashlib.sha256(fetched.raw_payload).hexdigest()
    if recheck:
        last = read_json(imported_marker(workspace, batch_id), default={}) or {}
        answered = set(fetched.annotations[ITEM_ID].astype(str)) if len(fetched.annotations) else set()
        final_ids = set(store.final_labels(batch_id)[ITEM_ID].astype(str))
        if last.get("payload_sha256") == payload_sha or not final_ids <= answered:
            return None
    has_probas = all(c in items.columns for c in schema.proba_columns)
    outcome = process_import(
        fetched.annotations, items, schema.class_names, batch_id=batch_id, params=QualityParams.from_params(params),
        state_dir=workspace.root / "quality", probas=items[[ITEM_ID, *schema.proba_columns]] if has_probas else None,
    )
    if len(outcome.quarantined):
        digest = hashlib.sha256(fetched.raw_payload).hexdigest()[:16]
        write_quarantine(workspace.quarantine_dir / f"labels-{batch_id}-{digest}.jsonl", outcome.quarantined, batch_id=batch_id)
    final = outcome.labels.assign(annotators=outcome.labels[ITEM_ID].astype(str).map(
        _annotators_per_item(outcome.answers, outcome.report.excluded_annotators)).fillna(""))
    write_parquet(workspace.final_labels_dir / f"{batch_id}.parquet", final)
    crash_point("import.after_final")
    status = "imported" if not outcome.pending else ("partial" if len(final) else meta.status)
    # Every valid answer is paid (one per item x annotator): overlap, gold and excluded annotators'
    # answers included (`answers` holds them all; exclusion only splits them later).
    bought = len(outcome.answers)
    price = workspace.params().export.price_per_label
    store.mark(batch_id, status=status, n_labelled=len(final), n_quarantined=len(outcome.quarantined),
               labels_bought=bought, cost=batch_cost(bought, price)["cost"])
    write_json(imported_marker(workspace, batch_id), {"payload_sha256": payload_sha, "status": status,
                                                      "at": datetime.now(UTC).isoformat(timespec="seconds")})
    agreement = float(final["agreement"].mean()) if len(final) else None
    return ImportReport(batch_id, len(items), len(fetched.annotations), len(final), len(outcome.quarantined), status, agreement)


def import_labels(workspace: Workspace, params: ImportParams, vendor, now: datetime | None = None) -> list[ImportReport]:
    """Import every exported batch whose labels are not all final yet, and fetch again every imported
    batch still open for corrections (`import.recheck_days`); a recheck is reported only when it
    changed the batch's final labels."""
    from labelloop.adapters.vendors.base import VendorRefused

    store = BatchStore(workspace)
    now = now or datetime.now(UTC)
    reports = []
    for meta in store.list():
        recheck = meta.status == "imported" and open_for_corrections(meta, params.recheck_days, now)
        if meta.status not in ("exported", "partial") and not recheck:
            continue
        try:
            report = import_batch(workspace, meta.batch_id, vendor, params, recheck=recheck)
            if report is not None:
                reports.append(report)
        except VendorRefused as refusal:  # this batch's payload is unusable: quarantine why, import the others
            reports.append(refused_import(workspace, meta, str(refusal)))
    return reports


def refused_import(workspace: Workspace, meta, reason: str) -> ImportReport:
    """One quarantine line with the reason; the batch's status, final labels and spend stay as they were."""
    from labelloop.adapters.label_validation import write_quarantine

    digest = hashlib.sha256(reason.encode()).hexdigest()[:16]
    row = pd.DataFrame({"expectation": ["payload_refused"], "reason": [reason], "stage": ["payload"]})
    write_quarantine(workspace.quarantine_dir / f"labels-{meta.batch_id}-refused-{digest}.jsonl", row, batch_id=meta.batch_id)
    n_items = len(BatchStore(workspace).items(meta.batch_id))
    return ImportReport(meta.batch_id, n_items, 0, meta.n_labelled, 1, "refused", None, refused=reason)


def open_for_corrections(meta, recheck_days: float, now: datetime) -> bool:
    """True while the batch's first full import is less than `recheck_days` old."""
    if recheck_days <= 0:
        return False
    imported_at = next((h["at"] for h in meta.history if h.get("status") == "imported"), None) or meta.created_at
    try:
        since = datetime.fromisoformat(imported_at)
    except (TypeError, ValueError):  # a hand-made record without a time: keep checking it
        return True
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return now - since < timedelta(days=recheck_days)


def _annotators_per_item(answers: pd.DataFrame, excluded: list[str]) -> pd.Series:
    """item_id → the annotators whose answers counted, comma-separated (recorded with a relabel)."""
    if answers.empty:
        return pd.Series(dtype=object)
    kept = answers[~answers["annotator_id"].astype(str).isin(set(map(str, excluded)))]
    return kept.groupby(kept[ITEM_ID].astype(str))["annotator_id"].agg(lambda s: ",".join(sorted(set(map(str, s)))))
