import numpy as np
import pandas as pd

from labelloop.capture import capture, read_watermark
from labelloop.batches import load_pool
from labelloop.config import CaptureParams
from labelloop.production import append_predictions, predictions_frame


def _log_rows(ws, ids, confidence=0.4, ts="2026-03-01"):
    schema = ws.schema()
    k = len(schema.class_names)
    features = pd.DataFrame(np.ones((len(ids), len(schema.feature_columns))), columns=schema.feature_columns)
    probas = np.full((len(ids), k), (1 - confidence) / (k - 1))
    probas[:, 0] = confidence
    return predictions_frame(features, probas, schema, "1", list(ids), ts=pd.Timestamp(ts, tz="UTC"))


def test_reads_only_new_parts_and_keeps_low_confidence(workspace):
    append_predictions(workspace, pd.concat([_log_rows(workspace, ["a1", "a2"], 0.4), _log_rows(workspace, ["a3"], 0.95)]))
    first = capture(workspace, CaptureParams(confidence_threshold=0.9))
    assert (first.parts_read, first.rows_read, first.rows_added) == (1, 3, 2)
    assert set(load_pool(workspace).item_id) == {"a1", "a2"}
    second = capture(workspace, CaptureParams(confidence_threshold=0.9))
    assert (second.parts_read, second.rows_added) == (0, 0)
    append_predictions(workspace, _log_rows(workspace, ["b1"], ts="2026-03-02"))
    third = capture(workspace, CaptureParams(confidence_threshold=0.9))
    assert (third.parts_read, third.rows_added, third.pool_size) == (1, 1, 3)
    assert len(read_watermark(workspace)) == 2


def test_rows_already_pooled_or_labelled_are_skipped(workspace):
    labelled_id = pd.read_parquet(workspace.labeled_path).item_id.iloc[0]
    append_predictions(workspace, _log_rows(workspace, ["c1", labelled_id]))
    capture(workspace, CaptureParams())
    append_predictions(workspace, _log_rows(workspace, ["c1", "c2"]))  # c1 logged again in a later part
    report = capture(workspace, CaptureParams())
    pool = load_pool(workspace)
    assert sorted(pool.item_id) == ["c1", "c2"]
    assert labelled_id not in set(pool.item_id)
    assert report.rows_added == 1


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_kept(workspace):
    frame = _log_rows(workspace, ["d1", "d2", "d3"])
    frame.loc[1, workspace.schema().proba_columns[0]] = 7.0
    append_predictions(workspace, frame)
    report = capture(workspace, CaptureParams())
    assert report.rows_quarantined == 1 and report.rows_added == 2
    quarantined = pd.read_parquet(report.quarantine_file)
    assert quarantined.prediction_id.tolist() == ["d2"]
    assert "ExpectColumnValuesToBeBetween" in quarantined.reason.iloc[0]


def test_truncated_part_is_quarantined_and_the_run_goes_on(workspace):
    good = append_predictions(workspace, _log_rows(workspace, ["e1"]))
    broken = good.parent / "part-broken.parquet"
    broken.write_bytes(good.read_bytes()[:40])
    report = capture(workspace, CaptureParams())
    assert report.rows_added == 1
    assert "unreadable log part part-broken.parquet" in pd.read_parquet(report.quarantine_file).reason.iloc[0]


def test_a_part_missing_columns_is_quarantined_whole(workspace):
    frame = _log_rows(workspace, ["f1", "f2"]).drop(columns=["confidence"])
    append_predictions(workspace, frame)
    report = capture(workspace, CaptureParams())
    assert report.rows_added == 0
    reasons = pd.read_parquet(report.quarantine_file)
    assert sorted(reasons.prediction_id) == ["f1", "f2"]
    assert reasons.reason.str.contains("missing columns").all()


def test_rerun_after_crash_before_the_watermark_adds_nothing_twice(workspace, monkeypatch):
    append_predictions(workspace, _log_rows(workspace, ["g1", "g2"]))
    import labelloop.capture as capture_module

    real_write_json = capture_module.write_json
    monkeypatch.setattr(capture_module, "write_json", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    try:
        capture(workspace, CaptureParams())
    except RuntimeError:
        pass
    monkeypatch.setattr(capture_module, "write_json", real_write_json)
    assert len(load_pool(workspace)) == 2  # the pool was written before the crash
    report = capture(workspace, CaptureParams())
    assert report.rows_added == 0 and len(load_pool(workspace)) == 2
