import uuid

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelloop.batches import load_pool
from labelloop.config import CaptureParams, DriftParams, SelectParams
from labelloop.prediction_log import TS_DTYPE
from labelloop.stages.capture import capture, capture_status, capture_status_line, drift_log_path, load_drift_log, read_watermark
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.stages.select import select_batch


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
    import labelloop.stages.capture as capture_module

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


# -- the prediction-log contract: shapes real producers write -----------------------------------


def _part(ws, name, day="2026-03-01"):
    path = ws.predictions_dir / f"date={day}" / f"part-{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write(ws, frame, name, day="2026-03-01"):
    path = _part(ws, name, day)
    frame.to_parquet(path, index=False)
    return path


def test_common_producer_shapes_are_normalised_and_never_jam_capture(workspace):
    instant = pd.Timestamp("2026-03-01T08:00:00Z")
    seconds = instant.value // 10**9
    # the pool holds text ids, timestamps
    append_predictions(workspace, _log_rows(workspace, ["first"], ts="2026-03-01T08:00:00"))
    capture(workspace, CaptureParams())
    # A database autoincrement id, no item_id column, ts as ISO text in three spellings of one instant.
    autoincrement = _log_rows(workspace, ["x", "y", "z"]).drop(columns=["item_id"])
    autoincrement["prediction_id"] = np.array([101, 102, 103], dtype=np.int64)
    autoincrement["ts"] = ["2026-03-01T10:00:00+02:00", "2026-03-01T08:00:00Z", "2026-03-01 08:00:00"]
    # UUIDs (objects), epoch milliseconds; model_version an integer.
    ids = [uuid.uuid4() for _ in range(3)]
    with_uuids = _log_rows(workspace, ["x", "y", "z"]).drop(columns=["item_id"])
    with_uuids["prediction_id"] = pd.Series(ids, dtype=object)
    with_uuids["ts"] = np.int64(seconds * 1000)
    with_uuids["model_version"] = 7
    # Text ids with their own item ids, epoch nanoseconds; then epoch seconds as floats and a zoned timestamp.
    nanos = _log_rows(workspace, ["n1", "n2", "n3"])
    nanos["item_id"] = ["item-1", "item-2", "item-3"]
    nanos["ts"] = np.int64(seconds * 10**9)
    floats = _log_rows(workspace, ["s1", "s2"])
    floats["ts"] = [float(seconds), float(seconds)]
    zoned = _log_rows(workspace, ["t1"])
    zoned["ts"] = instant.tz_convert("Asia/Tokyo")
    for i, frame in enumerate([autoincrement, with_uuids, nanos, floats, zoned]):
        _write(workspace, frame, f"shape-{i}")
        report = capture(workspace, CaptureParams())  # each its own run: every one must move the mark
        assert (report.parts_read, report.rows_added, report.rows_quarantined) == (1, len(frame), 0)
    pool = load_pool(workspace)
    assert str(pool["ts"].dtype) == TS_DTYPE and (pool["ts"] == instant).all()
    by_prediction = dict(zip(pool.prediction_id, pool.item_id))
    assert {k: by_prediction[k] for k in ("101", "102", "103")} == {"101": "101", "102": "102", "103": "103"}
    assert {str(u) for u in ids} <= set(by_prediction) and all(by_prediction[str(u)] == str(u) for u in ids)
    assert {by_prediction[k] for k in ("n1", "n2", "n3")} == {"item-1", "item-2", "item-3"}
    assert set(pool.model_version) == {"1", "7"}
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=4, audit_fraction=0))
    assert meta.n_items == 4
    # The mark moved past every part: the next run reads only what is new.
    append_predictions(workspace, _log_rows(workspace, ["later"], ts="2026-03-02"))
    assert capture(workspace, CaptureParams()).rows_added == 1


def test_a_part_without_item_id_beside_one_with_it_gives_select_real_ids(workspace):
    _write(workspace, _log_rows(workspace, ["w1", "w2"]), "with-item-id")
    _write(workspace, _log_rows(workspace, ["v1", "v2", "v3"]).drop(columns=["item_id"]), "without-item-id")
    report = capture(workspace, CaptureParams())
    assert report.rows_added == 5
    pool = load_pool(workspace)
    assert sorted(pool.item_id) == ["v1", "v2", "v3", "w1", "w2"]
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=3, audit_fraction=0))
    assert meta.n_items == 3


def test_rows_breaking_the_contract_are_quarantined_with_their_reason_and_the_rest_kept(workspace):
    schema = workspace.schema()
    frame = _log_rows(workspace, [f"r{i}" for i in range(7)])
    frame["item_id"] = ["i0", "i1", "i2", None, "i0", "i5", "i6"]
    frame.loc[1, "predicted"] = "zebra"
    frame.loc[2, "confidence"] = frame.loc[2, "confidence"] - 0.2
    frame["ts"] = frame["ts"].map(pd.Timestamp.isoformat)  # a producer logging ts as text...
    frame.loc[5, "ts"] = "yesterday"  # ...not always a timestamp
    _write(workspace, frame, "violations")
    report = capture(workspace, CaptureParams())
    assert sorted(load_pool(workspace).item_id) == ["i0", "i6"]
    assert (report.rows_read, report.rows_quarantined, report.rows_added) == (7, 5, 2)
    reasons = pd.read_parquet(report.quarantine_file).set_index("prediction_id")["reason"]
    assert "ExpectColumnValuesToBeInSet(predicted" in reasons["r1"] and str(schema.class_names[0]) in reasons["r1"]
    assert "confidence" in reasons["r2"] and "top probability" in reasons["r2"]
    assert "ExpectColumnValuesToNotBeNull(item_id)" in reasons["r3"]
    assert "duplicate item_id" in reasons["r4"]
    assert "'yesterday' is not a timestamp" in reasons["r5"]


def test_a_probability_column_for_a_class_outside_the_label_set_quarantines_that_part_whole(workspace):
    other = _log_rows(workspace, ["u1", "u2"])
    other["proba_zebra"] = 0.0
    _write(workspace, other, "other-label-set")
    _write(workspace, _log_rows(workspace, ["k1"]), "known-label-set")
    report = capture(workspace, CaptureParams())
    assert sorted(load_pool(workspace).item_id) == ["k1"]
    assert report.rows_quarantined == 2
    quarantined = pd.read_parquet(report.quarantine_file)
    assert sorted(quarantined.prediction_id) == ["u1", "u2"]
    assert quarantined.reason.str.contains("proba_zebra").all()
    assert quarantined.reason.str.contains(str(workspace.schema().class_names)[1:-1], regex=False).all()


def test_an_item_logged_in_two_parts_of_one_run_enters_the_pool_once(workspace):
    first = _log_rows(workspace, ["p1", "p2"])
    first["item_id"] = ["same", "only-first"]
    second = _log_rows(workspace, ["p3"])
    second["item_id"] = ["same"]
    _write(workspace, first, "a")
    _write(workspace, second, "b")
    report = capture(workspace, CaptureParams())
    pool = load_pool(workspace)
    assert sorted(pool.item_id) == ["only-first", "same"] and pool.set_index("item_id").loc["same", "prediction_id"] == "p1"
    reasons = pd.read_parquet(report.quarantine_file)
    assert reasons.prediction_id.tolist() == ["p3"] and "duplicate item_id" in reasons.reason.iloc[0]


# -- a part read while its producer is still writing it -----------------------------------------


def test_a_part_still_being_written_is_retried_and_its_rows_arrive_exactly_once(workspace):
    append_predictions(workspace, _log_rows(workspace, ["e1"]))
    complete = _log_rows(workspace, ["h1", "h2", "h3"])
    path = _part(workspace, "in-progress")
    complete.to_parquet(path, index=False)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the producer has written half of it so far
    params = CaptureParams(unreadable_part_attempts=1, unreadable_part_min_age_seconds=10**9)
    first = capture(workspace, params)
    assert (first.rows_added, first.parts_pending, first.parts_lost, first.quarantine_file) == (1, 1, 0, None)
    assert "date=2026-03-01/part-in-progress.parquet" not in read_watermark(workspace)
    path.write_bytes(whole)  # the producer finishes
    second = capture(workspace, params)
    assert (second.parts_read, second.rows_added, second.parts_pending, second.parts_lost) == (1, 3, 0, 0)
    third = capture(workspace, params)
    assert (third.parts_read, third.rows_added) == (0, 0)
    pool = load_pool(workspace)
    assert sorted(pool.item_id) == ["e1", "h1", "h2", "h3"]
    assert capture_status(workspace)["parts_pending"] == 0


def test_a_part_that_stays_broken_is_given_up_after_the_limit_with_its_row_count(workspace):
    params = CaptureParams(unreadable_part_attempts=2, unreadable_part_min_age_seconds=0)
    truncated = _part(workspace, "truncated")
    _log_rows(workspace, ["j1", "j2"]).to_parquet(truncated, index=False)
    truncated.write_bytes(truncated.read_bytes()[:40])
    # A part whose footer is fine but whose first column chunk is garbage: its row count is known.
    corrupt = _part(workspace, "corrupt")
    _log_rows(workspace, [f"m{i}" for i in range(5)]).to_parquet(corrupt, index=False)
    chunk = pq.read_metadata(corrupt).row_group(0).column(0)
    data = bytearray(corrupt.read_bytes())
    data[chunk.data_page_offset: chunk.data_page_offset + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    corrupt.write_bytes(bytes(data))
    sizes = truncated.stat().st_size + corrupt.stat().st_size

    first = capture(workspace, params)
    assert (first.parts_pending, first.parts_lost, first.quarantine_file) == (2, 0, None)
    # The truncated part grows between runs (still being written): its count starts again.
    truncated.write_bytes(truncated.read_bytes() + b"\0" * 10)
    sizes += 10
    second = capture(workspace, params)
    assert (second.parts_pending, second.parts_lost, second.rows_lost, second.parts_lost_unknown_rows) == (1, 1, 5, 0)
    third = capture(workspace, params)
    assert (third.parts_pending, third.parts_lost, third.rows_lost, third.parts_lost_unknown_rows) == (0, 1, 0, 1)
    assert "unknown rows" in third.lost_text() and "unknown rows" in third.markdown()
    reasons = " ".join(pd.read_parquet(second.quarantine_file).reason) + " ".join(pd.read_parquet(third.quarantine_file).reason)
    assert "part-corrupt.parquet after 2 attempts (5 rows" in reasons and "part-truncated.parquet" in reasons
    assert "unknown rows" in reasons
    status = capture_status(workspace)
    lost = (status["parts_lost"], status["rows_lost"], status["parts_lost_unknown_rows"], status["bytes_lost"])
    assert lost == (2, 5, 1, sizes)
    fourth = capture(workspace, params)  # given up means read: never counted twice
    assert (fourth.parts_read, fourth.parts_lost, fourth.parts_pending) == (0, 0, 0)


# -- drift of each window against the training data ---------------------------------------------

def _traffic_rows(ws, n, start=0, shift=None, confidence=None, seed=0):
    """Log rows with the real features of the simulator's traffic; `shift` adds to columns; confidence drawn."""
    schema = ws.schema()
    traffic = pd.read_parquet(ws.traffic_path).iloc[start:start + n].reset_index(drop=True)
    features = traffic[schema.feature_columns].copy()
    for column, delta in (shift or {}).items():
        features[column] = features[column] + delta
    rng = np.random.default_rng(seed)
    top = rng.beta(8, 2, len(features)) if confidence is None else confidence(rng, len(features))
    k = len(schema.class_names)
    top = np.clip(top, 1 / k + 1e-6, 1.0)
    probas = np.repeat(((1 - top) / (k - 1))[:, None], k, axis=1)
    probas[:, 0] = top
    ids = [f"t{start + i}" for i in range(len(features))]
    return predictions_frame(features, probas, schema, "1", ids, ts=pd.Timestamp("2026-03-01", tz="UTC"))


def _drift_params(**drift):
    return CaptureParams(drift=DriftParams(**{"reference": "holdout", "min_rows": 200, **drift}))


def test_capture_reports_drift_against_the_training_data_and_keeps_one_line_per_window(workspace):
    column = workspace.schema().numeric_columns[3]
    append_predictions(workspace, _traffic_rows(workspace, 1_000))
    calm = capture(workspace, _drift_params())
    assert calm.drift is not None and not calm.drift.skipped
    assert not calm.drift.drifted, calm.drift.text()
    assert calm.drift.reference_rows == len(pd.read_parquet(workspace.holdout_path))
    # The first window of model version 1 becomes its confidence reference: nothing to compare it with yet.
    assert "confidence" not in {c.column for c in calm.drift.columns}
    assert "drift: none of 36 columns" in calm.summary()

    shifted = _traffic_rows(workspace, 1_000, start=1_000, shift={column: 40.0},
                            confidence=lambda rng, n: rng.beta(2, 2, n))
    append_predictions(workspace, shifted)
    moved = capture(workspace, _drift_params())
    assert {c.column for c in moved.drift.drifted} == {column, "confidence"}, moved.drift.text()
    assert "columns drifted (PSI ≥ 0.2)" in moved.summary() and column in moved.summary()
    assert "## Drift" in moved.markdown() and f"| `{column}` | numeric |" in moved.markdown()
    metrics = moved.drift_metrics()
    assert metrics[f"drift.psi.{column}"] >= 0.2 and metrics["drift.psi.confidence"] >= 0.2
    assert metrics["drift.columns_drifted"] == 2

    lines = load_drift_log(workspace)
    assert len(lines) == 2 and lines[0]["drifted"] == [] and set(lines[1]["drifted"]) == {column, "confidence"}
    assert lines[1]["metrics"] == pytest.approx(metrics)
    status = capture_status_line(workspace)
    assert "last drift: 2 of 37 columns drifted" in status


def test_a_rerun_after_a_crash_writes_the_window_drift_line_once(workspace, monkeypatch):
    append_predictions(workspace, _traffic_rows(workspace, 600))
    import labelloop.stages.capture as capture_module

    real_write_json = capture_module.write_json

    def crash_on_watermark(path, obj):
        if path.name == "capture.json":
            raise RuntimeError("killed")
        real_write_json(path, obj)

    monkeypatch.setattr(capture_module, "write_json", crash_on_watermark)
    with pytest.raises(RuntimeError):
        capture(workspace, _drift_params())
    monkeypatch.setattr(capture_module, "write_json", real_write_json)
    assert len(load_drift_log(workspace)) == 1
    capture(workspace, _drift_params())
    assert len(load_drift_log(workspace)) == 1


def test_too_small_a_training_set_is_said_not_hidden_and_zero_rows_turns_drift_off(workspace):
    append_predictions(workspace, _traffic_rows(workspace, 300))
    # The labelled seed set (50 rows) is below min_rows 500.
    report = capture(workspace, CaptureParams(drift=DriftParams(reference="labeled")))
    labelled = len(pd.read_parquet(workspace.labeled_path))
    assert report.drift.skipped == f"reference has {labelled} rows and window has 300 rows, fewer than 500"
    assert "drift: not measured" in report.summary()
    append_predictions(workspace, _traffic_rows(workspace, 300, start=300))
    off = capture(workspace, CaptureParams(drift=DriftParams(sample_rows=0)))
    assert off.drift is None and off.drift_metrics() == {} and len(load_drift_log(workspace)) == 1
    assert drift_log_path(workspace).exists()


def test_idle_capture_writes_no_drift_line(workspace):
    report = capture(workspace, _drift_params())
    assert report.drift is None and not drift_log_path(workspace).exists()
    assert "drift" not in capture_status_line(workspace)


def test_categorical_and_text_columns_drift_with_unseen_categories_and_longer_texts(workspace):
    import json

    from tests.adapters.test_validation import MIXED

    workspace.schema_path.write_text(json.dumps(MIXED.to_json()))
    rng = np.random.default_rng(7)

    def rows(n, countries, words):
        return pd.DataFrame({
            "customer_id": [f"c{i}" for i in range(n)], "age": rng.normal(40, 10, n), "amount": rng.exponential(20, n),
            "country": rng.choice(countries, n), "plan": rng.choice(["pro", "free", None], n),
            "review": [" ".join(["ok"] * k) for k in rng.poisson(words, n) + 1],
        })

    holdout = rows(800, ["de", "fr"], 5).assign(item_id=[f"h{i}" for i in range(800)], label="A")
    holdout.to_parquet(workspace.holdout_path, index=False)
    window = rows(800, ["de", "fr", "it"], 20)
    probas = np.column_stack([np.full(800, 0.6), np.full(800, 0.4)])
    append_predictions(workspace, predictions_frame(window, probas, MIXED, "1", [f"w{i}" for i in range(800)],
                                                    ts=pd.Timestamp("2026-03-01", tz="UTC")))
    report = capture(workspace, _drift_params())
    by_name = {c.column: c for c in report.drift.columns}
    assert set(by_name) == {"age", "amount", "country", "plan", "review"}
    assert by_name["country"].status == "drifted" and by_name["country"].unseen_share == pytest.approx(1 / 3, abs=0.05)
    assert by_name["review"].kind == "text" and by_name["review"].status == "drifted"
    assert by_name["age"].status == by_name["plan"].status == "stable"
    assert report.unseen_categories.get("country", 0) > 0  # capture's own count against init's categories
