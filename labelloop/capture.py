"""Capture: new prediction-log rows → validated → low-confidence → deduplicated → candidate pool.

The high-water mark is the set of log parts already read (state/capture.json). Parts are immutable
once written, so a part is read exactly once; the pool is written before the mark, and rows already
pooled, batched or labelled are skipped, so a rerun after a crash adds nothing twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from labelloop.faults import crash_point
from labelloop.batches import BatchStore, load_pool
from labelloop.config import CaptureParams
from labelloop.io import read_json, read_parquet, write_json, write_parquet
from labelloop.production import list_log_parts
from labelloop.workspace import Workspace

ITEM_ID = "item_id"


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


def _state_path(workspace: Workspace):
    return workspace.state_dir / "capture.json"


def read_watermark(workspace: Workspace) -> set[str]:
    return set(read_json(_state_path(workspace), {"parts": []})["parts"])


def _read_part(path, quarantine: list[pd.DataFrame]) -> pd.DataFrame | None:
    try:
        return read_parquet(path)
    except (OSError, ValueError) as error:  # truncated or not parquet at all
        quarantine.append(pd.DataFrame({"prediction_id": [None], "reason": [f"unreadable log part {path.name}: {error}"]}))
        return None


def capture(workspace: Workspace, params: CaptureParams) -> CaptureReport:
    from labelloop.validation import validate_prediction_log

    schema = workspace.schema()
    seen_parts = read_watermark(workspace)
    parts = [p for p in list_log_parts(workspace) if str(p.relative_to(workspace.predictions_dir)) not in seen_parts]
    frames: list[pd.DataFrame] = []
    quarantine: list[pd.DataFrame] = []
    taken: list[str] = []
    rows = 0
    for part in parts:
        if rows >= params.max_rows_per_run:
            break  # the rest waits for the next run; the mark only covers what was read
        frame = _read_part(part, quarantine)
        taken.append(str(part.relative_to(workspace.predictions_dir)))
        if frame is None:
            continue
        try:
            valid, bad = validate_prediction_log(frame, schema.feature_columns, schema.proba_columns)
        except ValueError as error:
            quarantine.append(pd.DataFrame({"prediction_id": frame.get("prediction_id", pd.Series([None])).astype(str),
                                            "reason": f"{part.name}: {error}"}))
            continue
        rows += len(frame)
        frames.append(valid)
        if not bad.empty:
            bad = bad.assign(log_part=part.name)
            quarantine.append(bad)
    new = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["prediction_id"])
    if ITEM_ID not in new.columns:
        new[ITEM_ID] = new["prediction_id"]
    new[ITEM_ID] = new[ITEM_ID].astype(str)
    # Across parts the same prediction may be logged twice: keep the first.
    duplicated = new.duplicated(subset=["prediction_id"], keep="first")
    if duplicated.any():
        quarantine.append(new.loc[duplicated].assign(reason="duplicate prediction_id across log parts"))
        new = new.loc[~duplicated]
    low = new[new["confidence"] < params.confidence_threshold] if len(new) else new
    pool = load_pool(workspace)
    store = BatchStore(workspace)
    labeled_ids = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    holdout_ids = set(read_parquet(workspace.holdout_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    seen = set(pool[ITEM_ID].astype(str)) if len(pool) else set()
    seen |= store.queued_ids() | labeled_ids | holdout_ids
    fresh = low[~low[ITEM_ID].isin(seen)]
    quarantine_file = None
    if quarantine:
        rejected = pd.concat(quarantine, ignore_index=True)
        digest = hashlib.sha256("\n".join(sorted(taken)).encode()).hexdigest()[:12]
        quarantine_path = workspace.quarantine_dir / f"capture-{digest}.parquet"
        write_parquet(quarantine_path, rejected.astype(str))
        quarantine_file = str(quarantine_path)
    if len(fresh):
        keep_columns = [c for c in fresh.columns if c != "log_part"]
        combined = pd.concat([pool, fresh[keep_columns]], ignore_index=True) if len(pool) else fresh[keep_columns].reset_index(drop=True)
        write_parquet(workspace.pool_path, combined)
        pool_size = len(combined)
        crash_point("capture.after_pool")
    else:
        pool_size = len(pool)
    write_json(_state_path(workspace), {"parts": sorted(seen_parts | set(taken))})
    n_quarantined = int(sum(len(q) for q in quarantine))
    return CaptureReport(len(taken), rows, n_quarantined, len(low), len(fresh), len(low) - len(fresh), pool_size, quarantine_file)
