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

With annotator context, the gold questions of a batch were split between showing the model's guess before
the answer and not (`export.gold_guess_share`): each import records every annotator's gold answers per
condition (in the gold tracker, keyed by batch) and reports accuracy with and without the guess.

Label-error repair (`import.error_scan`): after an import, when the labelled set as the next dataset run will
version it has changed since the last scan, out-of-fold probabilities over it (k folds of the workspace's
pipeline, bounded in rows and trees) flag likely wrong labels by confident learning
(`labelloop.domain.quality.find_label_errors`); the most confidently wrong go to the review queue with reason
`label_error` (each item once), the next export asks them again, and an answer that differs becomes a
relabel in the next data version. Each batch's report counts the flagged items it re-asked and changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.adapters.validation import (
    validate_annotations,
    validate_final_labels,
    write_quarantine,
)
from labelloop.adapters.vendors.base import VendorRefused
from labelloop.batches import BatchStore, ReviewQueue, utc_timestamp
from labelloop.columns import ANNOTATOR_ID, ITEM_ID, LABEL
from labelloop.config import ErrorScanParams, ImportParams, TrainParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, write_bytes, write_json, write_parquet
from labelloop.domain.quality import (
    REASON_LABEL_ERROR,
    QualityReport,
    batch_cost,
    find_label_errors,
    gold_accuracy,
    gold_record,
    guess_condition_record,
    guess_condition_summary,
    low_accuracy_annotators,
    require_columns,
    run_quality_control,
)
from labelloop.schema import Schema
from labelloop.workspace import Workspace

ERROR_SCANS_FILE = "error_scans.json"  # in the workspace's quality dir: one summary per scan


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
        guess = data.get("guess", {})
        if not isinstance(guess, dict):
            raise ValueError(f"{self.path} is not a gold tracker file (its 'guess' entry is not a mapping)")
        # batch -> `guess_condition_record`: gold answers with and without a visible model guess
        self._guess: dict[str, dict[str, dict[str, list[int]]]] = guess

    def _save(self) -> None:
        write_json(self.path, {"batches": self._batches, **({"guess": self._guess} if self._guess else {})})

    def record(self, batch_id: str, answers: pd.DataFrame) -> None:
        """Store one batch's `gold_answers(...)` (replacing any earlier record of the batch)."""
        entry = gold_record(answers)
        if self._batches.get(batch_id) == entry:
            return
        self._batches[batch_id] = entry
        self._save()

    def record_guess(self, batch_id: str, record: dict[str, dict[str, list[int]]]) -> None:
        """Store one batch's `guess_condition_record` (replacing any earlier record of the batch)."""
        if self._guess.get(batch_id) == record:
            return
        self._guess[batch_id] = record
        self._save()

    def guess_summary(self) -> dict[str, Any]:
        """`guess_condition_summary` over every batch: annotator accuracy on gold with and without the guess."""
        return guess_condition_summary(self._guess.values())

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
    n_reasked: int = 0  # items the error scan flagged, answered again in this batch
    n_changed: int = 0  # of those, items whose accepted label differs from the flagged one (relabels to come)
    # Gold accuracy with and without a visible guess (`guess_condition_summary`): this batch and all batches.
    guess_effect: dict | None = None
    error_scan: dict | None = None  # the scan that followed this import (`scan_label_errors`), if one ran


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
    n_reasked, n_changed = reasked_counts(workspace, batch_id, outcome)
    return ImportReport(batch_id, len(items), len(fetched.annotations), len(final), len(outcome.quarantined), status, agreement,
                        n_reasked=n_reasked, n_changed=n_changed, guess_effect=record_guess_effect(workspace, batch_id, items,
                                                                                                 outcome.answers))


def record_guess_effect(workspace: Workspace, batch_id: str, items: pd.DataFrame, answers: pd.DataFrame) -> dict | None:
    """Gold answers per guess condition (the plan's `guess_shown`), recorded in the gold tracker; None when the
    batch had no gold question or was exported without annotator context."""
    if "guess_shown" not in items.columns or "is_gold" not in items.columns or "gold_label" not in items.columns:
        return None
    gold_rows = items[items["is_gold"].fillna(False).astype(bool)]
    if gold_rows.empty:
        return None
    ids = gold_rows[ITEM_ID].astype(str).to_numpy()
    gold = pd.Series(gold_rows["gold_label"].astype(str).to_numpy(), index=ids)
    conditions = pd.Series(gold_rows["guess_shown"].astype(str).to_numpy(), index=ids)
    guesses = pd.Series(gold_rows["predicted"].to_numpy() if "predicted" in gold_rows.columns else None, index=ids, dtype=object)
    record = guess_condition_record(answers, gold, conditions, guesses)
    tracker = GoldTracker(workspace.quality_dir / GoldTracker.FILE_NAME)
    tracker.record_guess(batch_id, record)
    return {"batch": guess_condition_summary([record]), "all_batches": tracker.guess_summary()}


def reasked_counts(workspace: Workspace, batch_id: str, outcome: ImportOutcome) -> tuple[int, int]:
    """(flagged items this batch asked again and got answers for, those whose accepted label changed)."""
    entries = ReviewQueue(workspace.review_queue_path).frame()
    mine = entries[(entries["reason"] == REASON_LABEL_ERROR) & (entries["sent_batch"] == batch_id)]
    if mine.empty:
        return 0, 0
    flagged_label = mine.drop_duplicates(ITEM_ID, keep="last").set_index(ITEM_ID)["given_label"]
    answered = set(outcome.final[ITEM_ID].astype(str)) & set(flagged_label.index)
    accepted = outcome.labels.assign(**{ITEM_ID: outcome.labels[ITEM_ID].astype(str)}).set_index(ITEM_ID)[LABEL]
    changed = [i for i in answered if i in accepted.index and str(accepted[i]) != str(flagged_label[i])]
    return len(answered), len(changed)


def import_labels(workspace: Workspace, params: ImportParams, vendor, now: datetime | None = None,
                  train: TrainParams | None = None) -> list[ImportReport]:
    """Import every exported batch whose labels are not all final yet, and fetch again every imported
    batch still open for corrections (`import.recheck_days`); a recheck is reported only when it
    changed the batch's final labels. Then, with `import.error_scan.enabled`, the label-error scan
    (`scan_label_errors`, with `train`'s pipeline; default the workspace's), whose summary every report
    of this import carries."""
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
    if params.error_scan.enabled:
        scan = scan_label_errors(workspace, params.error_scan, train or workspace.params().train)
        if scan is not None:
            reports = [dataclasses.replace(r, error_scan=scan) for r in reports]
    return reports


# ------------------------------------------------------------------------------------ label-error repair
def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold in [0, folds): every class spread evenly over the folds, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    for value in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == value)
        rng.shuffle(rows)
        out[rows] = (np.arange(len(rows)) + int(rng.integers(folds))) % folds
    return out


def out_of_fold_probas(frame: pd.DataFrame, labels: np.ndarray, schema: Schema, train: TrainParams, folds: int,
                       seed: int = 0, **overrides: Any) -> np.ndarray:
    """(n, classes) probabilities, each row scored by the workspace's pipeline (`train`, with `overrides`)
    fitted on the other folds: what the model would say about a row it never trained on."""
    from labelloop.model import LabelloopClassifier

    if folds < 2:
        raise ValueError(f"out-of-fold probabilities need at least 2 folds, got {folds}")
    labels = np.asarray(labels).astype(str)
    assignment = stratified_folds(labels, folds, seed)
    out = np.zeros((len(frame), len(schema.class_names)), dtype=np.float64)
    for fold in range(folds):
        held = assignment == fold
        if not held.any() or held.all():
            continue
        model = LabelloopClassifier.from_params(train, schema, **overrides).fit(frame[~held], labels[~held])
        out[held] = model.predict_proba(frame[held])
    return out


def labels_digest(labeled: pd.DataFrame) -> str:
    """Which labelled set a scan looked at: sha256 of its sorted (item, label) pairs."""
    pairs = sorted(zip(labeled[ITEM_ID].astype(str), labeled[LABEL].astype(str), strict=True))
    return hashlib.sha256("\n".join(f"{i}\t{label}" for i, label in pairs).encode()).hexdigest()


def scan_rows(labeled: pd.DataFrame, max_rows: int, seed_batch: str) -> pd.DataFrame:
    """The rows a scan fits on, at most `max_rows`: the newest labels (the candidates) and seed rows (curated,
    never flagged) for at most half of the room."""
    is_seed = labeled["batch_id"].astype(str) == seed_batch
    seeds, others = labeled[is_seed], labeled[~is_seed]
    n_others = min(len(others), max_rows - min(len(seeds), max_rows // 2))
    n_seeds = min(len(seeds), max_rows - n_others)
    return pd.concat([seeds.tail(n_seeds), others.tail(n_others)], ignore_index=True)


def scan_label_errors(workspace: Workspace, params: ErrorScanParams, train: TrainParams) -> dict | None:
    """Flag likely wrong labels in the labelled set and queue them for another look; the scan's summary.

    Looks at the labelled set as the next dataset run will version it (`dataset.next_labeled`); None when it
    is the set the last scan looked at (a rerun, an import that brought nothing), so a rerun never pays
    twice. Below `min_rows` rows the summary says the scan was skipped. Seed labels (curated) are never
    flagged, nor an item the scan queued before (each label is asked about once); the `max_flags` most
    confidently wrong (largest margin) join the review queue, keyed by the batch their label came from.
    """
    from labelloop.stages.dataset import SEED_BATCH, next_labeled

    labeled = next_labeled(workspace)
    digest = labels_digest(labeled)
    history_path = workspace.quality_dir / ERROR_SCANS_FILE
    history = read_json(history_path, default=None) or {"scans": []}
    if history["scans"] and history["scans"][-1].get("labels_sha256") == digest:
        return None
    started = time.perf_counter()
    summary: dict[str, Any] = {"at": utc_timestamp(), "labels_sha256": digest, "n_labelled": len(labeled)}
    if len(labeled) < params.min_rows:
        summary.update(status="skipped", reason=f"{len(labeled)} labelled rows, below import.error_scan.min_rows="
                                                f"{params.min_rows}")
    else:
        schema = workspace.schema()
        rows = scan_rows(labeled, params.max_rows, SEED_BATCH)
        labels = rows[LABEL].astype(str).to_numpy()
        probas = out_of_fold_probas(rows, labels, schema, train, params.folds, seed=train.random_state,
                                    n_estimators=min(params.n_estimators, train.n_estimators))
        index = {c: k for k, c in enumerate(schema.class_names)}
        flags = find_label_errors(np.array([index.get(v, -1) for v in labels]), probas)
        queue = ReviewQueue(workspace.review_queue_path)
        asked = queue.ever_queued(REASON_LABEL_ERROR)
        candidate = (rows["batch_id"].astype(str) != SEED_BATCH).to_numpy() & ~rows[ITEM_ID].astype(str).isin(asked).to_numpy()
        flagged = np.flatnonzero(flags.flagged & candidate)
        chosen = flagged[np.argsort(-flags.margin[flagged], kind="stable")][:params.max_flags]
        names = schema.class_names
        entries = pd.DataFrame({
            ITEM_ID: rows[ITEM_ID].astype(str).to_numpy()[chosen],
            "source_batch": rows["batch_id"].astype(str).to_numpy()[chosen],
            "reason": REASON_LABEL_ERROR,
            "given_label": labels[chosen],
            "suggested_label": [names[k] for k in flags.suggested[chosen]],
            "p_given": [float(probas[i, index[labels[i]]]) for i in chosen],
            "p_suggested": [float(probas[i, flags.suggested[i]]) for i in chosen],
        })
        entries["detail"] = [
            f"out-of-fold p({g!r})={pg:.2f} < its threshold {flags.thresholds[index[g]]:.2f}; p({s!r})={ps:.2f} >= "
            f"{flags.thresholds[index[s]]:.2f}"
            for g, s, pg, ps in zip(entries["given_label"], entries["suggested_label"], entries["p_given"],
                                    entries["p_suggested"], strict=True)]
        for source, group in entries.groupby("source_batch", sort=True):
            queue.add(str(source), group)
        summary.update(
            status="done", n_rows=len(rows), n_candidates=int(candidate.sum()), n_flagged=len(flagged),
            n_queued=len(chosen), folds=params.folds,
            thresholds={c: (None if not np.isfinite(t) else round(float(t), 4)) for c, t in zip(names, flags.thresholds,
                                                                                                   strict=True)},
            flagged=entries.drop(columns=["reason", "detail"]).round(4).to_dict(orient="records"),
        )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(history_path, {"scans": [*history["scans"], summary]})
    return summary


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
