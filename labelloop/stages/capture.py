"""Capture: new prediction-log rows → normalised, validated → low-confidence → deduplicated → candidate pool.

The high-water mark is the set of log parts already read (state/capture.json). Parts are immutable
once written, so a part is read exactly once; the pool is written before the mark, and rows already
pooled, batched or labelled are skipped, so a rerun after a crash adds nothing twice.

A part that cannot be read (its producer may still be writing it) is not marked read: it is retried
on later runs and given up (quarantined, its rows counted as lost) only after failing
`unreadable_part_attempts` runs in a row unchanged and staying unmodified for
`unreadable_part_min_age_seconds`. The state file keeps those attempts and every part given up.

Rows are validated against the contract and the workspace schema
(`labelloop.adapters.validation.validate_prediction_log`): a value that does not fit its column (text
in a numeric feature, a null where the schema forbids one, absurdly long text) quarantines its row
with the reason, never the rest of the part. A category not seen at init is drift, not an error: the
row is kept and counted per column in the report (`unseen_categories`), the log and the state file
(a running total for `labelloop status`).

Each window (the rows a run read and kept, every confidence, not only the low ones) is compared with the
training data (`capture.drift`, labelloop/domain/drift.py): PSI per feature column and KS for numeric
columns and text lengths, on uniform samples of at most `capture.drift.sample_rows` rows a side. The
features' reference is the labelled set at the current data version (or the holdout). The model's
confidence has no training-data counterpart kept in the workspace, so its reference is a quantile sketch
of the confidence of the first window a model version scored (state/drift-confidence.json; a later
stage may record a better one, e.g. the version's holdout confidence, with `record_confidence_reference`).
The result goes into the report (summary, markdown) and, one JSON line per run keyed by the window's
parts (a rerun replaces its line), into reports/drift.jsonl; `drift_metrics` gives MLflow metrics.

Each window also keeps its audit candidates (audit/candidates/<window>.parquet): a uniform random sample of
at most `capture.audit_sample_rows` of all its rows (every confidence), seeded by the window id, each row
with its inclusion probability; the window is recorded in the state file with the watermark, so a rerun after
a crash writes the same sample once and select only draws from windows whose parts are marked read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.batches import BatchStore, load_pool
from labelloop.config import CaptureParams, DriftParams
from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_json_lines, read_parquet, write_json, write_parquet, write_text
from labelloop.domain.drift import DriftReport, confidence_sketch, measure_drift
from labelloop.prediction_log import storable
from labelloop.stages.production import list_log_parts
from labelloop.workspace import Workspace

ITEM_ID = "item_id"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureReport:
    parts_read: int
    rows_read: int
    rows_quarantined: int
    rows_low_confidence: int
    rows_added: int
    rows_skipped_seen: int
    pool_size: int
    quarantine_file: str | None
    parts_pending: int = 0  # unreadable now, left unread to retry on a later run
    parts_lost: int = 0  # unreadable past the limit: given up (quarantined) this run
    rows_lost: int = 0  # rows of the parts given up whose footer still gave a row count
    parts_lost_unknown_rows: int = 0  # parts given up whose row count cannot be read
    bytes_lost: int = 0  # size of the parts given up
    # per categorical column, rows read this run (and kept) whose category was not seen at init: drift
    unseen_categories: dict[str, int] = field(default_factory=dict)
    drift: DriftReport | None = None  # the window against the training data; None when off or nothing was read

    def lost_text(self) -> str:
        """'' when nothing was given up, else e.g.
        'lost 2 unreadable log parts: 120 rows + unknown rows (1 part, 4,096 bytes)'."""
        return lost_text(self.parts_lost, self.rows_lost, self.parts_lost_unknown_rows, self.bytes_lost)

    def summary(self) -> str:
        """One line for the cycle line / logs."""
        text = (f"capture: {self.parts_read} parts, {self.rows_read} rows read, {self.rows_added} added, "
                f"{self.rows_quarantined} quarantined, pool {self.pool_size}")
        if self.parts_pending:
            text += f", {self.parts_pending} unreadable part{'s' if self.parts_pending != 1 else ''} to retry"
        for extra in (self.drift_text(), self.lost_text()):
            if extra:
                text += f"; {extra}"
        return text

    def drift_text(self) -> str:
        """'' without unseen categories or drift report, else e.g. 'unseen categories (drift, rows kept):
        country 12, plan 3; drift: 1 of 36 columns drifted (PSI ≥ 0.2): x3 PSI 0.41, KS 0.30'."""
        parts = [unseen_text(self.unseen_categories), self.drift.text() if self.drift is not None else ""]
        return "; ".join(p for p in parts if p)

    def drift_metrics(self) -> dict[str, float]:
        """MLflow metrics of the window's drift (drift.psi.<column>, drift.ks.<column>, ...); {} without a report."""
        return self.drift.metrics() if self.drift is not None else {}

    def markdown(self) -> str:
        """The capture artifact: every count, the lost ones included."""
        rows = [
            ("parts read", self.parts_read), ("rows read", self.rows_read), ("rows quarantined", self.rows_quarantined),
            ("rows below the confidence threshold", self.rows_low_confidence), ("rows added to the pool", self.rows_added),
            ("rows skipped (already pooled, batched or labelled)", self.rows_skipped_seen), ("pool size", self.pool_size),
            ("unreadable parts left to retry", self.parts_pending), ("unreadable parts given up (lost)", self.parts_lost),
            ("rows lost (known)", self.rows_lost), ("parts lost with unknown rows", self.parts_lost_unknown_rows),
            ("bytes lost", self.bytes_lost),
        ]
        rows += [(f"rows with a category unseen at init in `{column}` (drift, kept)", count)
                 for column, count in self.unseen_categories.items()]
        table = "| capture | count |\n|---|---|\n" + "".join(f"| {name} | {value:,} |\n" for name, value in rows)
        notes = [n for n in (self.lost_text(), f"quarantine: `{self.quarantine_file}`" if self.quarantine_file else "") if n]
        text = table + ("\n" + "\n\n".join(notes) + "\n" if notes else "")
        if self.drift is not None:
            text += "\n## Drift\n\n" + self.drift.markdown()
        return text


def unseen_text(unseen: dict[str, int]) -> str:
    if not unseen:
        return ""
    return "unseen categories (drift, rows kept): " + ", ".join(f"{column} {count:,}" for column, count in unseen.items())


def _add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    out = dict(total)
    for column, count in more.items():
        out[column] = out.get(column, 0) + int(count)
    return dict(sorted(out.items()))


def lost_text(parts: int, rows: int, parts_unknown: int, size: int) -> str:
    if not parts:
        return ""
    counted = [f"{rows:,} rows"] if parts > parts_unknown else []
    if parts_unknown:
        counted.append(f"unknown rows ({parts_unknown} part{'s' if parts_unknown != 1 else ''})")
    return (f"lost {parts} unreadable log part{'s' if parts != 1 else ''}: {' + '.join(counted)}, "
            f"{size:,} bytes (see quarantine/)")


def _state_path(workspace: Workspace):
    return workspace.state_dir / "capture.json"


def _read_state(workspace: Workspace) -> dict:
    state = read_json(_state_path(workspace), {})
    return {"parts": set(state.get("parts", [])), "pending": dict(state.get("pending", {})),
            "given_up": dict(state.get("given_up", {})), "unseen_categories": dict(state.get("unseen_categories", {})),
            "audit_windows": dict(state.get("audit_windows", {}))}


# -- audit candidates ---------------------------------------------------------------------------------


def audit_windows(workspace: Workspace) -> dict[str, dict]:
    """Every capture window with audit candidates, by window id: `rows` (the window's rows), `sampled`, `probability`
    (each row's inclusion probability), `at`. A window counts only once the watermark that covers its parts is
    written (the same atomic state write), so a crashed run's candidates file is never drawn from."""
    return _read_state(workspace)["audit_windows"]


def audit_candidates_path(workspace: Workspace, window: str) -> Path:
    return workspace.audit_candidates_dir / f"{window}.parquet"


def _audit_candidates(workspace: Workspace, window: pd.DataFrame, window_id: str, sample_rows: int) -> dict | None:
    """Keep a uniform random sample (without replacement, seeded by the window id: a rerun draws the same rows) of
    at most `sample_rows` of ALL the window's rows, each with its inclusion probability; the window's record."""
    if window.empty:
        return None
    n = len(window)
    size = min(n, sample_rows)
    rng = np.random.default_rng(int(window_id, 16))
    chosen = np.sort(rng.choice(n, size, replace=False))
    probability = size / n
    sample = window.iloc[chosen].drop(columns=["log_part"], errors="ignore").reset_index(drop=True)
    sample = storable(sample.assign(audit_window=window_id, audit_probability=probability))
    write_parquet(audit_candidates_path(workspace, window_id), sample)
    return {"rows": n, "sampled": size, "probability": probability,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_watermark(workspace: Workspace) -> set[str]:
    """Parts read (or given up): never read again."""
    return _read_state(workspace)["parts"]


def capture_status(workspace: Workspace) -> dict:
    """For `labelloop status`: parts read, unreadable parts waiting for a retry, everything given up so far."""
    state = _read_state(workspace)
    given_up = state["given_up"].values()
    unknown = sum(1 for g in given_up if g.get("rows") is None)
    return {
        "parts_read": len(state["parts"]) - len(state["given_up"]),
        "parts_pending": len(state["pending"]),
        "pending": {name: entry["attempts"] for name, entry in sorted(state["pending"].items())},
        "parts_lost": len(state["given_up"]),
        "rows_lost": sum(int(g["rows"]) for g in given_up if g.get("rows") is not None),
        "parts_lost_unknown_rows": unknown,
        "bytes_lost": sum(int(g.get("bytes", 0)) for g in given_up),
        "unseen_categories": state["unseen_categories"],  # running total over every capture run
    }


def capture_status_line(workspace: Workspace) -> str:
    status = capture_status(workspace)
    text = f"capture: {status['parts_read']} log parts read"
    if status["parts_pending"]:
        text += f", {status['parts_pending']} unreadable part(s) waiting for a retry"
    lost = lost_text(status["parts_lost"], status["rows_lost"], status["parts_lost_unknown_rows"], status["bytes_lost"])
    for extra in (unseen_text(status["unseen_categories"]), lost):
        if extra:
            text += f"; {extra}"
    last = last_drift(workspace)
    if last is not None:
        text += f"\nlast {last['text']} (window of {last['at']})"
    return text


# -- drift ------------------------------------------------------------------------------------------


def drift_log_path(workspace: Workspace) -> Path:
    return workspace.reports_dir / "drift.jsonl"


def confidence_reference_path(workspace: Workspace) -> Path:
    return workspace.state_dir / "drift-confidence.json"


def load_drift_log(workspace: Workspace) -> list[dict]:
    """Every drift line, oldest first (a line that does not parse is skipped)."""
    return read_json_lines(drift_log_path(workspace))


def last_drift(workspace: Workspace) -> dict | None:
    records = load_drift_log(workspace)
    return records[-1] if records else None


def _record_drift(workspace: Workspace, window: str, report: DriftReport, model_version: str | None) -> None:
    """Append the window's line to reports/drift.jsonl: the whole file rewritten atomically, replacing a line of
    the same window (a rerun after a crash before the watermark writes its line once)."""
    line = {"window": window, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_version": model_version,
            "text": report.text(), "drifted": [c.column for c in report.drifted],
            "moderate": [c.column for c in report.moderate], "metrics": report.metrics(), "report": report.to_dict()}
    kept = [r for r in load_drift_log(workspace) if r.get("window") != window]
    write_text(drift_log_path(workspace), "".join(json.dumps(r, sort_keys=True) + "\n" for r in [*kept, line]))


def record_confidence_reference(workspace: Workspace, model_version: str, confidence, source: str) -> None:
    """Keep `confidence` (its quantile sketch) as the reference model `model_version`'s windows are compared with."""
    references = read_json(confidence_reference_path(workspace), {})
    references[str(model_version)] = {"source": source, "rows": len(confidence), "sketch": confidence_sketch(confidence),
                                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(confidence_reference_path(workspace), references)


def _window_drift(workspace: Workspace, window: pd.DataFrame, params: DriftParams, window_id: str) -> DriftReport | None:
    """The window against the training data (None when drift is off or the window is empty); records the line,
    and the confidence reference of a model version seen for the first time."""
    if params.sample_rows == 0 or window.empty:
        return None
    schema = workspace.schema()
    path = workspace.labeled_path if params.reference == "labeled" else workspace.holdout_path
    import pyarrow.parquet as pq

    stored = set(pq.read_schema(path).names)
    usable = [c for c in schema.feature_columns if c in stored and c in window.columns]
    if len(usable) < len(schema.feature_columns):
        logger.warning("capture: drift not measured for %s (not in the %s data)",
                       [c for c in schema.feature_columns if c not in usable][:10], params.reference)
    reference = read_parquet(path, columns=usable)
    confidence = pd.to_numeric(window["confidence"], errors="coerce").to_numpy(dtype=np.float64)
    versions = window["model_version"].astype(str) if "model_version" in window.columns else pd.Series([""] * len(window))
    version = str(versions.mode().iloc[0]) if len(versions) else ""
    references = read_json(confidence_reference_path(workspace), {})
    entry = references.get(version)
    same_version = (versions == version).to_numpy()
    if entry is None and same_version.sum() >= params.min_rows:  # this window is the reference: nothing to compare
        record_confidence_reference(workspace, version, confidence[same_version],
                                    f"the first window model version {version} scored")
    reference_confidence = np.asarray(entry["sketch"], dtype=np.float64) if entry and entry.get("sketch") else None
    # Only the rows the reference's version scored are compared on confidence.
    current_confidence = np.where(same_version, confidence, np.nan) if reference_confidence is not None else None
    report = measure_drift(
        reference, window, numeric=[c for c in schema.numeric_columns if c in usable],
        categorical=[c for c in schema.categorical_columns if c in usable], text=[c for c in schema.text_columns if c in usable],
        reference_confidence=reference_confidence, current_confidence=current_confidence, bins=params.bins,
        max_categories=params.max_categories, moderate_psi=params.moderate_psi, drifted_psi=params.drifted_psi,
        max_rows=params.sample_rows, min_rows=params.min_rows, reference_name=params.reference,
        confidence_reference=f"{entry['source']} ({entry['rows']:,} rows)" if entry else "",
    )
    _record_drift(workspace, window_id, report, version or None)
    return report


def _row_count(path: Path) -> int | None:
    """Rows in a part whose data cannot be read, if its footer still says (None when it does not)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except (OSError, ValueError):
        return None


def _unreadable(path: Path, name: str, error: Exception, pending: dict, params: CaptureParams, now: float) -> dict | None:
    """Count a failed read. None while the part is retried; the give-up record once it is past the limit."""
    try:
        stat = path.stat()
    except FileNotFoundError:  # gone since it was listed: nothing to read or lose
        pending.pop(name, None)
        return None
    before = pending.get(name)
    if before is not None and (before["bytes"], before["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
        attempts = before["attempts"] + 1
    else:
        attempts = 1  # the first failure, or a part that changed (still being written)
    age = max(0.0, now - stat.st_mtime)
    entry = {"attempts": attempts, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "error": str(error)[:300]}
    if attempts < params.unreadable_part_attempts or age < params.unreadable_part_min_age_seconds:
        pending[name] = entry
        return None
    pending.pop(name, None)
    return {**entry, "rows": _row_count(path), "age_seconds": round(age, 1),
            "given_up_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def capture(workspace: Workspace, params: CaptureParams) -> CaptureReport:
    from labelloop.adapters.validation import validate_prediction_log
    from labelloop.stages.production import wal as prediction_wal

    # Rows a killed server had answered are still in its write-ahead log: make them log parts first
    # (only segments whose server is gone; a live server's are left to it).
    prediction_wal.recover(workspace)
    schema = workspace.schema()
    state = _read_state(workspace)
    pending, given_up = state["pending"], state["given_up"]
    parts = [p for p in list_log_parts(workspace) if str(p.relative_to(workspace.predictions_dir)) not in state["parts"]]
    frames: list[pd.DataFrame] = []
    quarantine: list[pd.DataFrame] = []
    taken: list[str] = []
    lost: list[dict] = []
    unseen: dict[str, int] = {}
    rows = parts_read = 0
    now = time.time()
    for part in parts:
        if rows >= params.max_rows_per_run:
            break  # the rest waits for the next run; the mark only covers what was read
        name = str(part.relative_to(workspace.predictions_dir))
        try:
            frame = read_parquet(part)
        except (OSError, ValueError) as error:  # truncated (still being written?) or not parquet at all
            record = _unreadable(part, name, error, pending, params, now)
            if record is not None:
                given_up[name] = record
                lost.append(record)
                taken.append(name)
                count = "unknown rows" if record["rows"] is None else f"{record['rows']} rows"
                quarantine.append(pd.DataFrame({
                    "prediction_id": [None], "log_part": [part.name],
                    "reason": [(f"unreadable log part {part.name} after {record['attempts']} attempts "
                                f"({count}, {record['bytes']} bytes lost): {record['error']}")],
                }))
            continue
        pending.pop(name, None)
        taken.append(name)
        parts_read += 1
        rows += len(frame)
        try:
            checked = validate_prediction_log(frame, schema)
        except ValueError as error:  # a whole-part problem: missing columns, another label set
            quarantine.append(frame.assign(log_part=part.name, reason=f"{part.name}: {error}"))
            continue
        frames.append(checked.valid)
        unseen = _add_counts(unseen, checked.unseen_categories)
        if not checked.quarantined.empty:
            quarantine.append(checked.quarantined.assign(log_part=part.name))
    new = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["prediction_id", ITEM_ID, "confidence"])
    # Across parts the same prediction (or item) may be logged twice: keep the first.
    repeated_prediction = new.duplicated(subset=["prediction_id"], keep="first")
    repeated_item = new.duplicated(subset=[ITEM_ID], keep="first") & ~repeated_prediction
    for repeated, reason in ((repeated_prediction, "duplicate prediction_id across log parts"),
                             (repeated_item, "duplicate item_id across log parts (its first prediction is kept)")):
        if repeated.any():
            quarantine.append(new.loc[repeated].assign(reason=reason))
    new = new.loc[~(repeated_prediction | repeated_item)]
    low = new[new["confidence"] < params.confidence_threshold] if len(new) else new
    pool = load_pool(workspace)
    store = BatchStore(workspace)
    labeled_ids = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    holdout_ids = set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    seen = set(pool[ITEM_ID].astype(str)) if len(pool) else set()
    seen |= store.queued_ids() | labeled_ids | holdout_ids
    fresh = low[~low[ITEM_ID].isin(seen)]
    quarantine_file = None
    digest = hashlib.sha256("\n".join(sorted(taken)).encode()).hexdigest()[:12]
    if quarantine:
        rejected = pd.concat(quarantine, ignore_index=True)
        quarantine_path = workspace.quarantine_dir / f"capture-{digest}.parquet"
        write_parquet(quarantine_path, rejected.astype(str))
        quarantine_file = str(quarantine_path)
    if len(fresh):
        keep_columns = [c for c in fresh.columns if c != "log_part"]
        combined = (pd.concat([pool, fresh[keep_columns]], ignore_index=True) if len(pool)
                    else fresh[keep_columns].reset_index(drop=True))
        combined = storable(combined)  # e.g. an extra column an older part logged as int and this one as text
        write_parquet(workspace.pool_path, combined)
        pool_size = len(combined)
        crash_point("capture.after_pool")
    else:
        pool_size = len(pool)
    windows = state["audit_windows"]
    audit_window = _audit_candidates(workspace, new, digest, params.audit_sample_rows)
    if audit_window is not None:
        windows[digest] = audit_window
    drift = _window_drift(workspace, new, params.drift, digest)
    if drift is not None and drift.drifted:
        logger.warning("capture: %s", drift.text())
    write_json(_state_path(workspace), {"parts": sorted(state["parts"] | set(taken)), "pending": pending, "given_up": given_up,
                                        "unseen_categories": _add_counts(state["unseen_categories"], unseen),
                                        "audit_windows": windows})
    if unseen:
        logger.warning("capture: %s", unseen_text(unseen))
    n_quarantined = int(sum(len(q) for q in quarantine)) - len(lost)
    return CaptureReport(
        parts_read, rows, n_quarantined, len(low), len(fresh), len(low) - len(fresh), pool_size, quarantine_file,
        parts_pending=len(pending), parts_lost=len(lost),
        rows_lost=sum(r["rows"] for r in lost if r["rows"] is not None),
        parts_lost_unknown_rows=sum(1 for r in lost if r["rows"] is None), bytes_lost=sum(r["bytes"] for r in lost),
        unseen_categories=unseen, drift=drift,
    )
