"""The segment monitor: per cycle, per segment of each monitored column (`monitor.segments`, else
`select.group_column`), the labels bought, the champion's holdout accuracy, its audit estimate (when the audit
stage wrote one for the cycle, labelloop/stages/audit.py) and the segment's share of the last capture window
against the drift reference (labelloop/domain/drift.py); which segments drifted or under-perform
(labelloop/domain/segments.py). One line per cycle in reports/segments.jsonl (a rerun of the cycle replaces its
line), with the drift window the cycle saw. The select stage reads the last line: a flagged segment of
`select.group_column` gets `monitor.segment_boost` times its turns in the hybrid's quota (`quota_boost_for`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from labelloop.columns import LABEL
from labelloop.config import ConfigError, Params
from labelloop.core.io import read_json_lines, read_parquet, write_text
from labelloop.domain.audit import Interval
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.drift import brief
from labelloop.domain.segments import SegmentStats, measure_segments, quota_boost, segment_labels, shares_of
from labelloop.workspace import Workspace

SEGMENT_LIMIT = 30  # segments reported one by one per column; the rest are pooled as '(other)'


def segments_path(workspace: Workspace) -> Path:
    return workspace.reports_dir / "segments.jsonl"


def load_segment_log(workspace: Workspace) -> list[dict]:
    """Every cycle's line, oldest first (a line that does not parse is skipped)."""
    return read_json_lines(segments_path(workspace))


def segment_columns(params: Params, stored: list[str]) -> list[str]:
    """The monitored columns: `monitor.segments`, else `select.group_column` when set; each must be a stored column."""
    columns = list(params.monitor.segments) or ([params.select.group_column] if params.select.group_column else [])
    unknown = [c for c in columns if c not in stored]
    if unknown:
        key = "monitor.segments" if params.monitor.segments else "select.group_column"
        raise ConfigError(f"{key}: {', '.join(map(repr, unknown))} is not a column of the workspace's data; "
                          f"allowed: {', '.join(stored)}")
    return columns


def monitored_columns(workspace: Workspace, params: Params) -> list[str]:
    """`segment_columns` checked against the labelled set's columns: the segments the monitor reports and the
    gate's per-segment audit guard groups by."""
    import pyarrow.parquet as pq

    return segment_columns(params, pq.read_schema(workspace.labeled_path).names)


def new_drift(workspace: Workspace, previous_window: str | None) -> dict | None:
    """The last capture window's drift line when no earlier cycle saw it (None: no new window this cycle)."""
    from labelloop.stages.capture import last_drift

    last = last_drift(workspace)
    return last if last is not None and last.get("window") != previous_window else None


def _audit_of(workspace: Workspace, cycle: int, column: str) -> tuple[Interval | None, dict[str, Interval]]:
    """The champion's audit estimate of `cycle` (overall, and per segment of `column` when the audit stage used it)."""
    from labelloop.stages.audit import report_path

    line = next((r for r in read_json_lines(report_path(workspace)) if r.get("cycle") == cycle), None)
    model = next((m for m in (line or {}).get("models", []) if m.get("role") == "champion"), None)
    found = (model or {}).get("estimate")
    if not found:
        return None, {}

    per_segment = found.get("per_segment", {}) if found.get("segment_column") == column else {}
    return Interval(**found["accuracy"]), {name: Interval(**interval) for name, interval in per_segment.items()}


def _holdout_correct(workspace: Workspace, params: Params, champion: str | None, holdout) -> np.ndarray | None:
    """Whether the champion is right on each holdout row (its cached holdout probabilities, labelloop/stages/gate.py)."""
    if champion is None:
        return None
    from labelloop.adapters.tracking import IncompatibleModel
    from labelloop.stages.gate import holdout_proba

    schema = workspace.schema()
    digest = hashlib.sha256(workspace.holdout_path.read_bytes()).hexdigest()[:16]
    try:
        proba = holdout_proba(workspace, params.train.model_name, champion, holdout, digest)
    except IncompatibleModel:  # a champion stored by an older labelloop cannot predict: no per-segment accuracy
        return None
    predicted = np.asarray(schema.class_names, dtype=object)[np.argmax(proba, axis=1)]
    return predicted == holdout[LABEL].astype(str).to_numpy(dtype=object)


def measure_cycle(workspace: Workspace, params: Params, record: CycleRecord) -> dict:
    """The cycle's monitor line: the drift window it saw (new since the last line, else none) and every segment."""
    previous = [r for r in load_segment_log(workspace) if r.get("cycle") != record.cycle]
    seen = next((r.get("drift_window") for r in reversed(previous) if r.get("drift_window")), None)
    drift = new_drift(workspace, seen)
    line: dict = {"cycle": record.cycle, "data_tag": record.data_tag, "champion_version": record.champion_version,
                  "drift_window": drift.get("window") if drift else None,
                  "drift": brief(drift.get("report", {})) if drift else None,
                  "drift_metrics": drift.get("metrics", {}) if drift else {}, "segments": []}
    columns = monitored_columns(workspace, params)
    if not columns:
        return line
    labelled = read_parquet(workspace.labeled_path, columns=columns)
    holdout = read_parquet(workspace.holdout_path)
    correct = _holdout_correct(workspace, params, record.champion_version, holdout)
    monitor = params.monitor
    stats: list[SegmentStats] = []
    for column in columns:
        overall, per_segment = _audit_of(workspace, record.cycle, column)
        stats += measure_segments(
            column, labelled=segment_labels(labelled[column]),
            holdout=segment_labels(holdout[column]) if column in holdout.columns else None,
            holdout_correct=correct if column in holdout.columns else None, audit=per_segment, audit_overall=overall,
            shares=shares_of(drift.get("report") if drift else _last_report(workspace), column),
            drift_ratio=monitor.drift_ratio, margin=monitor.underperform_margin, min_rows=monitor.min_rows,
            limit=SEGMENT_LIMIT)
    line["segments"] = [s.to_dict() for s in stats]
    return line


def _last_report(workspace: Workspace) -> dict | None:
    from labelloop.stages.capture import last_drift

    last = last_drift(workspace)
    return last.get("report") if last else None


def record_segments(workspace: Workspace, line: dict) -> None:
    """Write the cycle's line (the whole file rewritten atomically; a rerun of the cycle replaces its line)."""
    kept = [r for r in load_segment_log(workspace) if r.get("cycle") != line["cycle"]]
    write_text(segments_path(workspace), "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in [*kept, line]))


def segment_stats(line: dict | None) -> list[SegmentStats]:
    return [SegmentStats.from_dict(s) for s in (line or {}).get("segments", [])]


def quota_boost_for(workspace: Workspace, group_column: str | None, boost: float) -> dict[str, float]:
    """The hybrid's quota weights for the next batch: `boost` for the last cycle's flagged segments of `group_column`."""
    log = load_segment_log(workspace)
    return quota_boost(segment_stats(log[-1] if log else None), group_column, boost)


def status_lines(workspace: Workspace, shown: int = 8) -> list[str]:
    """For `labelloop status` (files only): the last cycle's segments, and for the flagged ones, then the most
    labelled (`shown` in all), the holdout accuracy over the last five cycles."""
    from labelloop.domain.segments import segments_text

    log = load_segment_log(workspace)
    if not log or not log[-1].get("segments"):
        return ["segments: none monitored (monitor.segments or select.group_column)"]
    last = log[-1]
    lines = [f"{segments_text(segment_stats(last))} (cycle {last['cycle']})"]
    ordered = sorted(segment_stats(last), key=lambda s: (not s.flagged, -s.labels))
    for s in ordered[:shown]:
        trend = [next((x["holdout_accuracy"] for x in r.get("segments", []) if x["column"] == s.column
                       and x["segment"] == s.segment), None) for r in log[-5:]]
        trend_text = " → ".join("-" if v is None else f"{v:.3f}" for v in trend)
        audit = f", audit {s.audit.text()} on {s.audit.n}" if s.audit is not None else ""
        flags = "".join(f" [{f}]" for f, on in (("drifted", s.drifted), ("under-performing", s.underperforming)) if on)
        lines.append(f"  {s.column}={s.segment}: {s.labels} labels, holdout accuracy {trend_text}{audit}{flags}")
    if len(ordered) > shown:
        lines.append(f"  … {len(ordered) - shown} more segments in {segments_path(workspace)}")
    return lines
