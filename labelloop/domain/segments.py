"""Segments: per value of a segment column, how many labels it has, how well the model does on it, and whether
traffic moved towards it. Pure computation over arrays; the monitor stage (labelloop/stages/monitor.py) feeds it
a workspace's labelled set, holdout predictions, audit set and last drift window, and keeps one line per cycle.

- accuracy on the holdout: plain share of correct rows;
- accuracy on the audit set: the champion's importance-weighted estimate per segment with its 90% interval, as the
  audit stage computed it (labelloop/domain/audit.py, reports/audit.jsonl);
- drifted: the segment's share of the last capture window is at least `drift_ratio` times its share of the drift
  reference (the labelled or holdout data), read from the drift report's category shares;
- under-performing: its accuracy (the audit's when it has `min_rows` audit rows, else the holdout's when it has
  `min_rows` holdout rows) is at least `margin` below the overall accuracy on the same rows.

A flagged segment of the hybrid's group column gets `boost` times its quota weight (`quota_boost`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from labelloop.domain.audit import Interval

MISSING = "(missing)"
OTHER = "(other)"


def segment_labels(values, top: Sequence[str] | None = None) -> np.ndarray:
    """Each value as its segment name (str; missing → '(missing)'); with `top`, values outside it → '(other)'."""
    series = pd.Series(values, dtype=object)
    missing = series.isna().to_numpy()
    out = series.astype(str).to_numpy(dtype=object)
    out[missing] = MISSING
    if top is not None:
        keep = set(top) | {MISSING}
        out = np.array([v if v in keep else OTHER for v in out], dtype=object)
    return out


def top_segments(values: np.ndarray, limit: int) -> list[str]:
    """The `limit` most frequent segment names (ties by name), the ones reported one by one."""
    counts = pd.Series(values).value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in ordered[:limit]]


@dataclass(frozen=True)
class SegmentStats:
    column: str
    segment: str
    labels: int  # labelled rows in the segment
    holdout_rows: int = 0
    holdout_accuracy: float | None = None
    audit: Interval | None = None  # the champion's audit estimate of accuracy on the segment (90%)
    reference_share: float | None = None  # share of the drift reference data
    window_share: float | None = None  # share of the last capture window
    drifted: bool = False
    underperforming: bool = False

    @property
    def flagged(self) -> bool:
        return self.drifted or self.underperforming

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmentStats:
        audit = data.get("audit")
        return cls(**{**data, "audit": Interval(**audit) if audit else None})


def measure_segments(column: str, *, labelled: np.ndarray, holdout: np.ndarray | None = None,
                     holdout_correct: np.ndarray | None = None, audit: Mapping[str, Interval] | None = None,
                     audit_overall: Interval | None = None, shares: Sequence[tuple[str, float, float]] = (),
                     drift_ratio: float = 1.5, margin: float = 0.05, min_rows: int = 30,
                     limit: int = 30) -> list[SegmentStats]:
    """Per segment of `column` (segment names as `segment_labels` gives them): labels, holdout accuracy (from
    `holdout`, the holdout rows' segments, and `holdout_correct`), the audit's estimate (`audit`: segment →
    estimate, with `audit_overall` the estimate over every audit item), window and reference shares (`shares`:
    (segment, reference share, window share), the drift report's) and the flags. At most `limit` segments (the
    most frequent in the labelled and holdout rows), the rest pooled as '(other)' (labels and holdout only)."""
    labelled = np.asarray(labelled, dtype=object)
    holdout = np.asarray(holdout if holdout is not None else [], dtype=object)
    top = top_segments(np.concatenate([labelled, holdout]), limit)
    share_of = {str(name): (ref, cur) for name, ref, cur in shares}
    names = list(top)
    if len(set(np.concatenate([labelled, holdout]))) > len(top):
        names.append(OTHER)
    fold = (lambda values: segment_labels(values, top)) if OTHER in names else (lambda values: np.asarray(values, dtype=object))
    lab, hold = fold(labelled), fold(holdout)
    overall_holdout = float(np.mean(holdout_correct)) if holdout_correct is not None and len(holdout_correct) else None
    stats = []
    for name in names:
        in_hold = hold == name
        accuracy = float(np.mean(np.asarray(holdout_correct)[in_hold])) if holdout_correct is not None and in_hold.any() else None
        estimate = (audit or {}).get(name)
        ref, cur = share_of.get(name, (None, None))
        drifted = ref is not None and cur is not None and cur > 0 and cur >= drift_ratio * max(ref, 1e-9)
        if estimate is not None and estimate.n >= min_rows and audit_overall is not None:
            under = estimate.value <= audit_overall.value - margin
        else:
            under = (accuracy is not None and overall_holdout is not None and int(in_hold.sum()) >= min_rows
                     and accuracy <= overall_holdout - margin)
        stats.append(SegmentStats(column, name, int((lab == name).sum()), int(in_hold.sum()), accuracy, estimate, ref, cur,
                                  bool(drifted), bool(under)))
    return stats


def quota_boost(stats: Sequence[SegmentStats], column: str | None, boost: float) -> dict[str, float]:
    """Quota weights for the hybrid selector: `boost` for each flagged segment of `column` (the group column)."""
    if column is None or boost <= 1:
        return {}
    return {s.segment: float(boost) for s in stats if s.column == column and s.flagged and s.segment != OTHER}


def segments_text(stats: Sequence[SegmentStats], top: int = 4) -> str:
    """One line: 'segments plan: 3 (1 drifted: pro; 1 under-performing: free)' or '' without segments."""
    if not stats:
        return ""
    parts = []
    for column in dict.fromkeys(s.column for s in stats):
        mine = [s for s in stats if s.column == column]
        drifted = [s.segment for s in mine if s.drifted]
        under = [s.segment for s in mine if s.underperforming]
        notes = [f"{len(names)} {what}: {', '.join(names[:top])}{' …' if len(names) > top else ''}"
                 for what, names in (("drifted", drifted), ("under-performing", under)) if names]
        parts.append(f"{column}: {len(mine)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return "segments " + "; ".join(parts)


def segments_table(stats: Sequence[SegmentStats]) -> str:
    """Markdown: one row per segment."""
    lines = [("| column | segment | labels | holdout accuracy (rows) | audit accuracy, 90% interval "
              "| window / reference share | flags |"), "|---|---|---|---|---|---|---|"]
    for s in stats:
        hold = "-" if s.holdout_accuracy is None else f"{s.holdout_accuracy:.3f} ({s.holdout_rows})"
        audit = "-" if s.audit is None else f"{s.audit.text()} on {s.audit.n:,}"
        share = ("-" if s.window_share is None or s.reference_share is None
                 else f"{s.window_share:.1%} / {s.reference_share:.1%}")
        flags = ", ".join(f for f, on in (("drifted", s.drifted), ("under-performing", s.underperforming)) if on) or "-"
        lines.append(f"| `{s.column}` | {s.segment} | {s.labels} | {hold} | {audit} | {share} | {flags} |")
    return "\n".join(lines)


def shares_of(drift_report: Mapping | None, column: str) -> list[tuple[str, float, float]]:
    """The category shares (segment, reference, window) a drift report (its `to_dict()`) holds for `column`."""
    if not drift_report:
        return []
    for entry in drift_report.get("columns", []):
        if entry.get("column") == column:
            return [(str(name), float(ref), float(cur)) for name, ref, cur in entry.get("categories", [])]
    return []
