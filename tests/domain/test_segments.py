import numpy as np
import pytest

from labelloop.domain.audit import Interval
from labelloop.domain.segments import (
    MISSING,
    OTHER,
    SegmentStats,
    measure_segments,
    quota_boost,
    segment_labels,
    segments_table,
    segments_text,
    shares_of,
)


def test_segment_labels_name_missing_values_and_pool_the_rest():
    assert list(segment_labels(["a", None, 3, float("nan")])) == ["a", MISSING, "3", MISSING]
    assert list(segment_labels(["a", "b", "c", None], top=["a"])) == ["a", OTHER, OTHER, MISSING]


def stats_of(**kwargs):
    labelled = np.array(["eu"] * 60 + ["us"] * 30 + ["asia"] * 10, dtype=object)
    holdout = np.array(["eu"] * 50 + ["us"] * 40 + ["asia"] * 10, dtype=object)
    # eu right 45/50, us right 26/40 (0.65, overall 0.80), asia right 9/10
    correct = np.r_[np.arange(50) < 45, np.arange(40) < 26, np.arange(10) < 9]
    return {s.segment: s for s in measure_segments("region", labelled=labelled, holdout=holdout, holdout_correct=correct,
                                                   **kwargs)}


def test_labels_holdout_accuracy_and_an_under_performing_segment():
    stats = stats_of(min_rows=30, margin=0.05)
    assert {k: s.labels for k, s in stats.items()} == {"eu": 60, "us": 30, "asia": 10}
    assert stats["us"].holdout_accuracy == pytest.approx(0.65) and stats["us"].underperforming
    assert not stats["eu"].underperforming  # 0.90 is above the overall 0.80
    assert not stats["asia"].underperforming  # too few rows to judge (10 < 30), whatever its accuracy
    assert not any(s.drifted for s in stats.values())  # no drift report: nothing drifted


def test_the_audit_estimate_decides_when_it_has_enough_rows():
    overall = Interval(0.80, 0.75, 0.85, 200, 200.0)
    audit = {"us": Interval(0.82, 0.7, 0.9, 60, 60.0), "eu": Interval(0.70, 0.6, 0.8, 60, 60.0)}
    stats = stats_of(audit=audit, audit_overall=overall, min_rows=30)
    assert not stats["us"].underperforming  # the audit (live traffic) says us is fine, whatever the holdout says
    assert stats["eu"].underperforming and stats["eu"].audit == audit["eu"]


def test_a_segment_whose_share_of_the_window_grew_has_drifted():
    shares = [("eu", 0.6, 0.3), ("us", 0.3, 0.2), ("asia", 0.1, 0.5)]
    stats = stats_of(shares=shares, drift_ratio=1.5)
    assert [k for k, s in stats.items() if s.drifted] == ["asia"]
    assert (stats["asia"].reference_share, stats["asia"].window_share) == (0.1, 0.5)


def test_quota_boost_goes_to_flagged_segments_of_the_group_column_only():
    stats = list(stats_of(shares=[("asia", 0.1, 0.5)], min_rows=30).values())
    assert quota_boost(stats, "region", 2.0) == {"us": 2.0, "asia": 2.0}
    assert quota_boost(stats, "country", 2.0) == {}  # not the hybrid's groups
    assert quota_boost(stats, None, 2.0) == {} and quota_boost(stats, "region", 1.0) == {}


def test_rare_segments_beyond_the_limit_are_pooled():
    labelled = np.array([f"s{i}" for i in range(10)] + ["s0"] * 5, dtype=object)
    stats = measure_segments("c", labelled=labelled, limit=3)
    assert [s.segment for s in stats] == ["s0", "s1", "s2", OTHER]
    assert stats[-1].labels == 7 and sum(s.labels for s in stats) == 15


def test_texts_and_round_trip():
    stats = list(stats_of(audit={"us": Interval(0.6, 0.5, 0.7, 40, 40.0)}, audit_overall=Interval(0.8, 0.7, 0.9, 100, 100.0),
                          shares=[("asia", 0.1, 0.5)]).values())
    assert segments_text(stats) == "segments region: 3 (1 drifted: asia; 1 under-performing: us)"
    assert segments_text([]) == ""
    assert [SegmentStats.from_dict(s.to_dict()) for s in stats] == stats
    table = segments_table(stats)
    assert "| `region` | us | 30 | 0.650 (40) | 0.600 [0.500, 0.700] on 40 | - | under-performing |" in table


def test_shares_of_reads_a_drift_reports_categories():
    report = {"columns": [{"column": "x", "categories": []}, {"column": "region", "categories": [["eu", 0.6, 0.3]]}]}
    assert shares_of(report, "region") == [("eu", 0.6, 0.3)]
    assert shares_of(report, "plan") == [] and shares_of(None, "region") == []
