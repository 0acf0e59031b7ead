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


def validate_answers(answers: pd.DataFrame, batch_items: set[str], label_set: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split vendor answers into (accepted, quarantined with `reason`) using the import GX suite."""
    from labelloop.validation import Rule, validate_rows

    frame = answers.reset_index(drop=True).copy()
    for column in ("item_id", "annotator_id", "label"):
        frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
        frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    rules = [
        Rule("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "label"}),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "annotator_id"}),
        Rule("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": sorted(batch_items)}),
        Rule("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": sorted(label_set)}),
    ]
    failures = validate_rows(frame, rules, name="import")
    duplicated = frame.duplicated(subset=["item_id", "annotator_id"], keep="first")
    extra = pd.DataFrame({"row": duplicated[duplicated].index.astype("int64"), "reason": "duplicate annotation by the same annotator"})
    failures = pd.concat([failures, extra], ignore_index=True)
    reasons = failures.groupby("row")["reason"].agg(lambda r: "; ".join(sorted(set(r))))
    bad = frame.index.isin(reasons.index)
    quarantined = frame.loc[bad].copy()
    quarantined["reason"] = reasons.reindex(frame.index[bad]).to_numpy()
    return frame.loc[~bad].reset_index(drop=True), quarantined.reset_index(drop=True)


def majority_vote(answers: pd.DataFrame, min_agreement: float) -> pd.DataFrame:
    """One label per item: the most voted (ties broken by label name), with its vote share."""
    if answers.empty:
        return pd.DataFrame(columns=[ITEM_ID, "label", "n_votes", "agreement", "method"])
    counts = answers.groupby([ITEM_ID, "label"]).size().rename("votes").reset_index()
    totals = counts.groupby(ITEM_ID)["votes"].transform("sum")
    counts["agreement"] = counts["votes"] / totals
    counts["n_votes"] = totals
    best = counts.sort_values([ITEM_ID, "votes", "label"], ascending=[True, False, True]).drop_duplicates(ITEM_ID)
    best = best[best["agreement"] >= min_agreement]
    best = best.assign(method="majority")
    return best[[ITEM_ID, "label", "n_votes", "agreement", "method"]].reset_index(drop=True)


def import_batch(workspace: Workspace, batch_id: str, vendor, params: ImportParams) -> ImportReport:
    store = BatchStore(workspace)
    schema = workspace.schema()
    meta = store.get(batch_id)
    items = store.items(batch_id)
    fetched = vendor.fetch_labels(batch_id)
    archive_payload(workspace, batch_id, fetched.raw_payload, fetched.payload_name)
    crash_point("import.after_raw")
    accepted, quarantined = validate_answers(fetched.annotations, set(items[ITEM_ID].astype(str)), schema.class_names)
    if not quarantined.empty:
        digest = hashlib.sha256(fetched.raw_payload).hexdigest()[:16]
        write_parquet(workspace.quarantine_dir / f"labels-{batch_id}-{digest}.parquet", quarantined.astype(str))
    final = majority_vote(accepted, params.min_agreement)
    write_parquet(workspace.final_labels_dir / f"{batch_id}.parquet", final)
    crash_point("import.after_final")
    complete = len(final) >= len(items)
    status = "imported" if complete else ("partial" if len(final) else meta.status)
    price = workspace.params().export.price_per_label
    store.mark(batch_id, status=status, n_labelled=len(final), n_quarantined=len(quarantined), cost=price * len(accepted))
    agreement = float(final["agreement"].mean()) if len(final) else None
    return ImportReport(batch_id, len(items), len(fetched.annotations), len(final), len(quarantined), status, agreement)


def import_labels(workspace: Workspace, params: ImportParams, vendor) -> list[ImportReport]:
    """Import every exported batch whose labels are not all final yet."""
    store = BatchStore(workspace)
    return [import_batch(workspace, m.batch_id, vendor, params) for m in store.list() if m.status in ("exported", "partial")]
