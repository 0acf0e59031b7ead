"""The segment monitor over a real workspace: segments, the drift window each cycle saw, the hybrid's boost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.config import ConfigError
from labelloop.core.io import write_parquet, write_text
from labelloop.domain.cycle import CycleRecord
from labelloop.domain.drift import measure_drift
from labelloop.stages import monitor


def with_region(workspace, regions):
    """Give the labelled set and the holdout a categorical `region` column; params that monitor it."""
    from labelloop.config import dump_params

    for path in (workspace.labeled_path, workspace.holdout_path):
        frame = pd.read_parquet(path)
        frame["region"] = np.resize(np.array(regions, dtype=object), len(frame))
        write_parquet(path, frame)
    params = workspace.params().with_overrides(monitor={"segments": ["region"]}, select={"group_column": "region"})
    write_text(workspace.params_path, dump_params(params))
    return params


def drift_line(workspace, window: str, current_regions):
    from labelloop.stages.capture import _record_drift

    reference = pd.read_parquet(workspace.labeled_path)
    current = pd.DataFrame({"region": np.resize(np.array(current_regions, dtype=object), 600)})
    report = measure_drift(pd.concat([reference] * 20)[["region"]], current, categorical=["region"])
    _record_drift(workspace, window, report, None)


def test_a_cycle_line_counts_labels_per_segment_and_flags_a_segment_traffic_moved_to(workspace):
    params = with_region(workspace, ["eu", "eu", "eu", "us"])
    drift_line(workspace, "w1", ["eu", "us"])  # us: a quarter of the labels, half of the window
    line = monitor.measure_cycle(workspace, params, CycleRecord(cycle=1, labels=50, data_tag="data-v1"))
    stats = {s.segment: s for s in monitor.segment_stats(line)}
    labelled = pd.read_parquet(workspace.labeled_path)["region"].value_counts()
    assert {k: s.labels for k, s in stats.items()} == labelled.to_dict()
    assert stats["us"].drifted and not stats["eu"].drifted
    assert stats["us"].window_share == pytest.approx(0.5)
    assert line["drift_window"] == "w1" and line["drift"].startswith("drift ")
    assert stats["eu"].holdout_accuracy is None  # no champion yet: nothing to score the holdout with
    monitor.record_segments(workspace, line)
    assert monitor.quota_boost_for(workspace, "region", 3.0) == {"us": 3.0}
    assert monitor.quota_boost_for(workspace, "country", 3.0) == {}
    from labelloop.stages.select import selection_context

    context = selection_context(workspace, params.select, params.train)  # what the select stage hands the hybrid
    assert context.group_column == "region" and context.group_boost == {"us": params.monitor.segment_boost}

    # The next cycle saw no new capture window: no drift of its own, the last window's shares still flag us.
    again = monitor.measure_cycle(workspace, params, CycleRecord(cycle=2, labels=90, data_tag="data-v2"))
    assert again["drift_window"] is None and again["drift"] is None
    assert {s.segment for s in monitor.segment_stats(again) if s.drifted} == {"us"}
    monitor.record_segments(workspace, again)
    monitor.record_segments(workspace, again)  # a rerun of the cycle replaces its line
    assert [r["cycle"] for r in monitor.load_segment_log(workspace)] == [1, 2]
    lines = monitor.status_lines(workspace)
    assert lines[0] == "segments region: 2 (1 drifted: us) (cycle 2)"
    assert any(line.startswith("  region=us: ") and "[drifted]" in line for line in lines)
    short = monitor.status_lines(workspace, shown=1)  # flagged segments first, the rest counted
    assert short[1].startswith("  region=us: ") and short[2].startswith("  … 1 more segments in ")


def test_no_segments_without_a_column_and_an_unknown_column_names_the_allowed_ones(workspace):
    params = workspace.params()
    line = monitor.measure_cycle(workspace, params, CycleRecord(cycle=1, labels=50))
    assert line["segments"] == []
    assert monitor.status_lines(workspace) == ["segments: none monitored (monitor.segments or select.group_column)"]
    bad = params.with_overrides(monitor={"segments": ["nope"]})
    with pytest.raises(ConfigError, match="monitor.segments: 'nope' is not a column.*allowed: "):
        monitor.measure_cycle(workspace, bad, CycleRecord(cycle=1, labels=50))
