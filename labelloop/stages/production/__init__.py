"""Production side: the champion scores traffic and every prediction is appended to the prediction log.

The log is parquet partitioned by date: `predictions/date=YYYY-MM-DD/part-*.parquet`. Each part is
written atomically; a part's name is derived from what it holds, so a rerun rewrites nothing.

Feature columns are logged in the schema's types (`labelloop.prediction_log.log_features`): numeric
float64 with NaN where missing, categorical, text and id columns as strings (a parquet string column
even when every value of a part is null). Id columns are logged when the scored rows carry them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.prediction_log import log_features
from labelloop.schema import Schema
from labelloop.workspace import Workspace

ITEM_ID = "item_id"
MAX_QUARANTINE_REASONS = 20  # per row, in a production quarantine file


def predictions_frame(features: pd.DataFrame, probas: np.ndarray, schema: Schema, model_version: str,
                      prediction_ids: list[str], ts: datetime | None = None) -> pd.DataFrame:
    """Rows in the prediction-log format for one scored chunk (`features`: the schema's feature columns and
    any of its id columns, in any spelling `log_features` accepts)."""
    ts = ts or datetime.now(UTC)
    frame = pd.DataFrame({"prediction_id": prediction_ids})
    frame["ts"] = pd.Timestamp(ts)
    frame["model_version"] = str(model_version)
    logged = log_features(features, schema)
    for column in logged.columns:
        if schema.column(column).role != "numeric":
            logged[column] = logged[column].astype("str")  # a string column in parquet, also when all null
    frame = pd.concat([frame, logged], axis=1)
    probas = np.asarray(probas, dtype=np.float64)
    for i, column in enumerate(schema.proba_columns):
        frame[column] = probas[:, i]
    frame["predicted"] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
    frame["confidence"] = probas.max(axis=1)
    frame[ITEM_ID] = frame["prediction_id"]
    return frame


def append_predictions(workspace: Workspace, frame: pd.DataFrame, part_name: str | None = None) -> Path:
    """Write one part of the log; with a given `part_name` an existing part is left as is."""
    if frame.empty:
        raise ValueError("refusing to append an empty prediction frame")
    day = pd.Timestamp(frame["ts"].iloc[0]).strftime("%Y-%m-%d")
    name = part_name or f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
    path = workspace.predictions_dir / f"date={day}" / name
    if not path.exists():
        write_parquet(path, frame)
    return path


def list_log_parts(workspace: Workspace) -> list[Path]:
    return sorted(workspace.predictions_dir.glob("date=*/part-*.parquet"))


def serve_traffic(workspace: Workspace, rows: int, score_for_log) -> dict:
    """Score the next `rows` of the simulated traffic stream and log the predictions.

    `score_for_log(features, prediction_ids) -> log rows` is the serving endpoint's own validation
    and scoring path (`labelloop.apps.serving.score_for_log`); `features` holds the schema's id and
    feature columns in their stored types (NaN / None where missing). The stream cursor moves only
    after the part is written; the part's name is the row range, so a rerun after a crash writes it once.

    Rows the scorer refuses are quarantined, not fatal: when it raises a ValueError whose `errors`
    name rows (`{"loc": ["rows", <position>, <column>], "msg": ...}`, as serving's InvalidRequest
    does), those rows go to `quarantine/production-traffic-<range>.parquet` with the reasons and the
    rest are scored; any other error propagates.
    """
    traffic_path = workspace.traffic_path
    if not traffic_path.exists():
        raise FileNotFoundError(
            f"{traffic_path} does not exist: this workspace has no simulated traffic (init with simulate_traffic)")
    cursor_path = workspace.state_dir / "traffic_cursor.json"
    cursor = read_json(cursor_path, {"next_row": 0})
    start = int(cursor["next_row"])
    traffic = read_parquet(traffic_path)
    chunk = traffic.iloc[start:start + rows]
    if chunk.empty:
        return {"rows": 0, "start": start, "exhausted": True, "part": None}
    schema = workspace.schema()
    name = f"traffic-{start:09d}-{start + len(chunk):09d}"
    existing = sorted(workspace.predictions_dir.glob(f"date=*/part-traffic-{start:09d}-*.parquet"))
    quarantined = 0
    if existing:
        part: Path | None = existing[0]
    else:
        columns = [c for c in schema.stored_columns if c in chunk.columns]
        features = chunk[columns].reset_index(drop=True)
        ids = chunk[ITEM_ID].astype(str).tolist()
        frame, refused = _score_or_quarantine(score_for_log, features, ids)
        if len(refused):
            write_parquet(workspace.quarantine_dir / f"production-{name}.parquet",
                          refused.assign(**{ITEM_ID: [ids[i] for i in refused.index]}).astype(str))
            quarantined = len(refused)
        part = None
        if frame is not None:
            part = append_predictions(workspace, frame, part_name=f"part-{name}.parquet")
            crash_point("production.after_part")
    write_json(cursor_path, {"next_row": start + len(chunk)})
    return {"rows": len(chunk), "start": start, "exhausted": start + len(chunk) >= len(traffic),
            "part": str(part) if part is not None else None, "quarantined": quarantined}


def _refused_rows(error: ValueError, n_rows: int) -> dict[int, list[str]]:
    """Row position → reasons, from a scorer error that names rows (empty when it names none)."""
    reasons: dict[int, list[str]] = {}
    for entry in getattr(error, "errors", None) or []:
        loc = list(entry.get("loc", [])) if isinstance(entry, dict) else []
        if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int) and 0 <= loc[1] < n_rows:
            field = ".".join(str(p) for p in loc[2:]) or "row"
            reasons.setdefault(loc[1], []).append(f"{field}: {entry.get('msg', 'refused')}")
    return reasons


def _score_or_quarantine(score_for_log, features: pd.DataFrame, ids: list[str]) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """(log rows of the rows scored or None, the refused rows with a `reason`).

    The scorer may name only some of the bad rows (serving reports at most 50 errors): the rest are
    scored again until it accepts them; every round removes at least one row, so this ends.
    """
    keep = list(range(len(features)))
    reasons: dict[int, list[str]] = {}
    frame = None
    while keep:
        try:
            frame = score_for_log(features.iloc[keep].reset_index(drop=True), [ids[i] for i in keep])
            break
        except ValueError as error:
            refused = _refused_rows(error, len(keep))
            if not refused:
                raise  # not about particular rows: a problem with the model or the schema, not the data
            for position, why in refused.items():
                reasons[keep[position]] = why
            keep = [row for position, row in enumerate(keep) if position not in refused]
    bad = sorted(reasons)
    rejected = features.iloc[bad].copy()
    rejected["reason"] = ["; ".join(reasons[i][:MAX_QUARANTINE_REASONS]) for i in bad]
    return frame, rejected
