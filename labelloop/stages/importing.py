"""Import: fetch the vendor's answers, archive them unchanged, validate, aggregate, write final labels
(`import` in params.yaml).

Order of durable writes, each safe to repeat: raw payload archive (content-addressed name) →
quarantine file for this fetch → gold tracker and review queue (keyed by batch id) → final labels for
the batch (replaced whole) → batch status. A rerun after a crash anywhere recomputes the same final
labels from the same answers.

A fully imported batch stays open for corrections for `import.recheck_days`: each import fetches it
again, and only a payload that differs from the one its final labels came from (sha256 kept in
`batches/<batch_id>/imported.json`) is processed, so a vendor's corrected answer replaces the final
label (the last answer counts) and the dataset stage versions it as a relabel. A re-fetch that
answers fewer items than are final (an expired project, a truncated file) changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from labelloop.adapters.validation import (
    validate_annotations,
    validate_final_labels,
    write_quarantine,
)
from labelloop.adapters.vendors.base import VendorRefused
from labelloop.batches import BatchStore, ReviewQueue, utc_timestamp
from labelloop.columns import ANNOTATOR_ID, ITEM_ID, LABEL
from labelloop.config import ImportParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, write_bytes, write_json, write_parquet
from labelloop.domain.quality import (
    QualityReport,
    batch_cost,
    gold_accuracy,
    gold_record,
    low_accuracy_annotators,
    require_columns,
    run_quality_control,
)
from labelloop.workspace import Workspace


class GoldTracker:
    """Each annotator's answers on gold items across batches, persisted as JSON (atomic writes).

    Recording a batch twice replaces that batch's counts, so a re-run import does not double count.
    An annotator is excluded once they have answered at least `min_answers` gold items and their
    accuracy over all batches is below `threshold` (`labelloop.domain.quality.gold_accuracy`).
    """

    FILE_NAME = "gold_tracker.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data = read_json(self.path, default=None) or {"batches": {}}
        if not isinstance(data, dict) or not isinstance(data.get("batches"), dict):
            raise ValueError(f"{self.path} is not a gold tracker file (expected a 'batches' mapping)")
        self._batches: dict[str, dict[str, list[int]]] = data["batches"]

    def record(self, batch_id: str, answers: pd.DataFrame) -> None:
        """Store one batch's `gold_answers(...)` (replacing any earlier record of the batch)."""
        entry = gold_record(answers)
        if self._batches.get(batch_id) == entry:
            return
        self._batches[batch_id] = entry
        write_json(self.path, {"batches": self._batches})

    def other_batches(self, batch_id: str) -> list[dict[str, list[int]]]:
        """The records of every batch but `batch_id` (what a re-run of that batch's import adds to)."""
        return [entry for key, entry in self._batches.items() if key != batch_id]

    def summary(self) -> pd.DataFrame:
        return gold_accuracy(self._batches.values())

    def excluded(self, threshold: float, min_answers: int = 5) -> list[str]:
        return low_accuracy_annotators(self.summary(), threshold, min_answers)


@dataclass
class ImportOutcome:
    answers: pd.DataFrame  # validated answers (one per item x annotator)
    quarantined: pd.DataFrame  # rejected answers and final labels, with `expectation`, `reason`, `stage`
    final: pd.DataFrame  # every aggregated item (AGGREGATION_COLUMNS + is_gold, model_flagged)
    labels: pd.DataFrame  # the labels to add to the dataset: item_id, label, n_votes, agreement, method
    review: pd.DataFrame  # item_id, reason: sent again by the next export
    pending: list[str]  # batch items with no answer yet (left for a later import)
    report: QualityReport


def process_import(
    annotations: pd.DataFrame,
    batch_items: pd.DataFrame,
    label_set: Sequence[str],
    *,
    batch_id: str,
    params: ImportParams,
    state_dir: str | Path | None = None,
    probas: pd.DataFrame | None = None,
) -> ImportOutcome:
    """Validate -> gold tracking / exclusion -> aggregation -> model-contradiction flags -> final checks.

    `batch_items` has `item_id` and optionally `is_gold` + `gold_label` (see `plan_quality_items`).
    With `state_dir` (a workspace's `quality_dir`), the gold tracker (`gold_tracker.json`) and the review
    queue (`review_queue.json`) are updated there, both keyed by batch id: running the same import twice
    changes nothing more. The caller archives the raw payload first and writes `outcome.labels` /
    `outcome.quarantined`.
    """
    require_columns(batch_items, [ITEM_ID], "batch items")
    item_ids = batch_items[ITEM_ID].astype(str).tolist()
    gold = pd.Series(dtype=str)
    if "is_gold" in batch_items.columns and "gold_label" in batch_items.columns:
        marked = batch_items[batch_items["is_gold"].fillna(False).astype(bool)]
        gold = pd.Series(marked["gold_label"].astype(str).to_numpy(), index=marked[ITEM_ID].astype(str).to_numpy())
    answers, bad_answers = validate_annotations(annotations, item_ids, label_set)
    tracker = GoldTracker(Path(state_dir) / GoldTracker.FILE_NAME) if state_dir is not None else None
    report = run_quality_control(answers, classes=label_set, params=params, gold=gold, probas=probas,
                                 earlier_gold=tracker.other_batches(batch_id) if tracker is not None else ())
    if tracker is not None:
        tracker.record(batch_id, report.gold_answers)
    labels, bad_final = validate_final_labels(report.accepted, item_ids, label_set)
    quarantined = pd.concat(
        [bad_answers.assign(stage="answer"), bad_final.assign(stage="final_label")], ignore_index=True
    ) if len(bad_answers) or len(bad_final) else bad_answers.assign(stage=pd.Series(dtype=object))
    answered = set(answers[ITEM_ID]) | set(report.dropped_annotations[ITEM_ID].astype(str))
    pending = [i for i in item_ids if i not in answered]
    if state_dir is not None:
        queue = ReviewQueue(Path(state_dir) / "review_queue.json")
        queue.add(batch_id, report.review)
        queue.resolve(labels[ITEM_ID])
    keep = [ITEM_ID, LABEL, "n_votes", "agreement", "method"]
    return ImportOutcome(answers, quarantined, report.final, labels[keep].reset_index(drop=True),
                         report.review, pending, report)


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
    Dawid–Skene) → model-contradiction flags → final labels (`process_import`).

    `recheck`: the batch is already imported; process the payload only if it changed and still
    answers every item that has a final label (else None: nothing written but the raw archive)."""
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
        fetched.annotations, items, schema.class_names, batch_id=batch_id, params=params,
        state_dir=workspace.quality_dir, probas=items[[ITEM_ID, *schema.proba_columns]] if has_probas else None,
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
                                                      "at": utc_timestamp()})
    agreement = float(final["agreement"].mean()) if len(final) else None
    return ImportReport(batch_id, len(items), len(fetched.annotations), len(final), len(outcome.quarantined), status, agreement)


def import_labels(workspace: Workspace, params: ImportParams, vendor, now: datetime | None = None) -> list[ImportReport]:
    """Import every exported batch whose labels are not all final yet, and fetch again every imported
    batch still open for corrections (`import.recheck_days`); a recheck is reported only when it
    changed the batch's final labels."""
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
    kept = answers[~answers[ANNOTATOR_ID].astype(str).isin(set(map(str, excluded)))]
    return kept.groupby(kept[ITEM_ID].astype(str))[ANNOTATOR_ID].agg(lambda s: ",".join(sorted(set(map(str, s)))))
