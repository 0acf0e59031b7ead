"""The cycle's MLflow metrics: the drift window's and every segment's (labelloop/apps/cycle.py)."""

from labelloop.apps.cycle import cycle_metrics, segment_metric


def test_drift_and_segment_metrics_of_a_monitor_line():
    segment = {"column": "plan", "segment": "pro=1", "labels": 3, "holdout_rows": 20, "holdout_accuracy": 0.5,
               "audit": {"value": 0.6, "low": 0.4, "high": 0.8, "n": 30, "n_effective": 28.0}, "reference_share": 0.1,
               "window_share": 0.3, "drifted": True, "underperforming": False}
    line = {"cycle": 2, "drift_metrics": {"drift.psi.x": 0.3, "drift.columns_drifted": 1.0, "drift.psi.confidence": 0.05},
            "segments": [segment]}
    assert cycle_metrics(line) == {
        "drift.psi.x": 0.3, "drift.columns_drifted": 1.0, "drift.psi.confidence": 0.05,
        "segment.labels.plan/pro_1": 3.0, "segment.holdout_accuracy.plan/pro_1": 0.5,
        "segment.audit_accuracy.plan/pro_1": 0.6, "segments.drifted": 1.0, "segments.underperforming": 0.0}
    assert cycle_metrics({"cycle": 3, "drift_metrics": {}, "segments": []}) == {}
    assert segment_metric("labels", "région", "a b") == "segment.labels.région/a b"
