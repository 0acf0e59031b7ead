"""Production side: the champion scores traffic and every prediction is appended to the prediction log.

The log is parquet partitioned by date: `predictions/date=YYYY-MM-DD/part-*.parquet`. Each part is
written atomically; a part's name is derived from what it holds, so a rerun rewrites nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.core.faults import crash_point
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.workspace import Schema, Workspace

ITEM_ID = "item_id"


def predictions_frame(features: pd.DataFrame, probas: np.ndarray, schema: Schema, model_version: str,
                      prediction_ids: list[str], ts: datetime | None = None) -> pd.DataFrame:
    """Rows in the prediction-log format for one scored chunk."""
    ts = ts or datetime.now(UTC)
    frame = pd.DataFrame({"prediction_id": prediction_ids})
    frame["ts"] = pd.Timestamp(ts)
    frame["model_version"] = str(model_version)
    frame = pd.concat([frame, features[schema.feature_columns].reset_index(drop=True)], axis=1)
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
    and scoring path (`labelloop.apps.serving.score_for_log`). The stream cursor moves only after the
    part is written; the part's name is the row range, so a rerun after a crash writes it once.
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
    existing = sorted(workspace.predictions_dir.glob(f"date=*/part-traffic-{start:09d}-*.parquet"))
    if existing:
        part = existing[0]
    else:
        frame = score_for_log(chunk[schema.feature_columns].reset_index(drop=True), chunk[ITEM_ID].astype(str).tolist())
        part = append_predictions(workspace, frame, part_name=f"part-traffic-{start:09d}-{start + len(chunk):09d}.parquet")
        crash_point("production.after_part")
    write_json(cursor_path, {"next_row": start + len(chunk)})
    return {"rows": len(chunk), "start": start, "exhausted": start + len(chunk) >= len(traffic), "part": str(part)}
