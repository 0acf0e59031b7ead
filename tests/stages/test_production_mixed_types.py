"""Production → write-ahead log → prediction log → capture with the columns real tables have: id,
numeric with missing values, categorical (with categories unseen at init), text.

Small schemas built directly; the scorer is a stub at the serving boundary (what
`labelloop.apps.serving.score_for_log` returns and raises), so these tests are about the log, not a model.
"""

from __future__ import annotations

import json
import struct
import zlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelloop.batches import load_pool
from labelloop.config import CaptureParams
from labelloop.schema import Schema
from labelloop.stages.capture import capture, capture_status, capture_status_line
from labelloop.stages.production import list_log_parts, predictions_frame, serve_traffic
from labelloop.stages.production import wal as prediction_wal
from tests.adapters.test_validation import MIXED

SCHEMA = MIXED  # id, numeric (one nullable), categorical (one nullable), text; classes A and B
CLASSES = SCHEMA.class_names


def read_log(ws) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in list_log_parts(ws)], ignore_index=True)


def features(n: int, offset: int = 0, **overrides) -> pd.DataFrame:
    frame = pd.DataFrame({
        "customer_id": [f"c{offset + i}" for i in range(n)],
        "age": [np.nan if i % 3 == 0 else 20.0 + i for i in range(n)],
        "amount": [1.5 * (i + 1) for i in range(n)],
        "country": ["de" if i % 2 else "fr" for i in range(n)],
        "plan": [None if i % 4 == 1 else "pro" for i in range(n)],
        "review": [None if i % 5 == 2 else f"crème brûlée n°{offset + i} — ok 👍" for i in range(n)],
    })
    for column, values in overrides.items():
        frame[column] = pd.Series(values, dtype=object)
    return frame


def chunk(frame: pd.DataFrame, prefix: str, ts: datetime | None = None) -> prediction_wal.LogChunk:
    n = len(frame)
    first = np.linspace(0.55, 0.95, n)
    return prediction_wal.LogChunk(SCHEMA, frame, np.column_stack([first, 1 - first]), [f"{prefix}{i}" for i in range(n)],
                                   "3", ts or datetime(2026, 3, 1, 12, tzinfo=UTC))


def use_schema(ws, schema: Schema = SCHEMA) -> None:
    ws.schema_path.write_text(json.dumps(schema.to_json()))


# -- the write-ahead log -----------------------------------------------------------------------------

def test_mixed_rows_survive_a_killed_writer_with_their_types_and_nulls(workspace):
    log = prediction_wal.GroupCommitLog(workspace, SCHEMA, flush_rows=10_000, commit_wait_seconds=0)
    with_ids = chunk(features(4), "a")
    without_ids = chunk(features(3, offset=10).drop(columns=["customer_id"]), "b")
    for c in (with_ids, without_ids):
        log.begin()
        log.commit(c)
    log.begin()
    log.commit(chunk(features(2, offset=20), "c", ts=datetime(2026, 3, 2, 0, 5, tzinfo=UTC)))  # another day
    segment = log._segment
    header = json.loads(prediction_wal._read_records(segment.path.read_bytes())[0][0][1:])
    assert header["format"] == 2 and header["schema"]["columns"][3]["categories"] == ["de", "fr"]
    segment.release()  # killed: the writer's lock goes with its process

    report = prediction_wal.recover(workspace)
    assert (report.segments_recovered, report.rows_recovered, report.torn_bytes) == (1, 9, 0)
    assert len(report.parts) == 2  # one part per UTC day
    frame = read_log(workspace).sort_values("prediction_id").reset_index(drop=True)
    expected = pd.concat([features(4), features(3, offset=10).assign(customer_id=None), features(2, offset=20)],
                         ignore_index=True)
    for column in SCHEMA.stored_columns:
        got = frame[column].astype(object).where(frame[column].notna(), None).tolist()
        want = expected[column].astype(object).where(expected[column].notna(), None).tolist()
        assert got == want, column
    types = pq.read_schema(report.parts[0])
    assert types.field("age").type == pa.float64() and types.field("amount").type == pa.float64()
    for column in ("customer_id", "country", "plan", "review"):
        assert pa.types.is_string(types.field(column).type) or pa.types.is_large_string(types.field(column).type), column
    assert prediction_wal.recover(workspace).segments_recovered == 0 and len(read_log(workspace)) == 9


def test_a_segment_in_the_old_numeric_format_is_still_recovered(workspace):
    """Format 1 (a server of the previous version killed before upgrading): header with feature_columns."""
    def record(payload: bytes) -> bytes:
        return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload

    header = b"H" + json.dumps({"format": 1, "feature_columns": ["x1", "x2"], "class_names": CLASSES}).encode()
    meta = json.dumps({"chunks": [{"ids": ["old-1", "old-2"], "model_version": "1", "ts": "2026-02-01T10:00:00+00:00"},
                                  {"ids": ["old-3"], "model_version": "2", "ts": "2026-02-01T10:00:01+00:00"}]}).encode()
    matrix = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype="<f8")
    probas = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], dtype="<f8")
    group = b"G" + struct.pack("<I", len(meta)) + meta + matrix.tobytes() + probas.tobytes()
    directory = prediction_wal.wal_dir(workspace)
    directory.mkdir(parents=True)
    (directory / "seg-20260201T100000000000-0ld0ld00.wal").write_bytes(record(header) + record(group))

    report = prediction_wal.recover(workspace)
    assert (report.segments_recovered, report.rows_recovered) == (1, 3)
    frame = read_log(workspace).sort_values("prediction_id")
    assert frame["prediction_id"].tolist() == ["old-1", "old-2", "old-3"]
    np.testing.assert_array_equal(frame[["x1", "x2"]].to_numpy(), matrix)
    assert frame["model_version"].tolist() == ["1", "1", "2"] and frame["predicted"].tolist() == ["A", "B", "A"]


def test_an_unknown_segment_format_is_one_clear_error(workspace):
    payload = b"H" + json.dumps({"format": 9}).encode()
    directory = prediction_wal.wal_dir(workspace)
    directory.mkdir(parents=True)
    (directory / "seg-20260201T100000000000-99999999.wal").write_bytes(
        struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    with pytest.raises(ValueError, match="format 9; this labelloop reads formats 1, 2"):
        prediction_wal.recover(workspace)


def test_a_value_that_cannot_be_logged_is_refused_before_it_reaches_the_wal():
    with pytest.raises(ValueError, match=r"numeric column 'amount' .*'12,50'"):
        chunk(features(2, amount=[1.0, "12,50"]), "x")
    with pytest.raises(ValueError, match="lack the schema's columns"):
        chunk(features(2).drop(columns=["review"]), "x")
    with pytest.raises(ValueError, match="all-numeric schema"):
        prediction_wal.LogChunk(SCHEMA, np.ones((1, 5)), np.array([[0.5, 0.5]]), ["m"], "1", datetime.now(UTC))
    # Numbers written as text (in a numeric column) are read; in a categorical column a number is logged as text.
    made = chunk(features(2, amount=["1.5", 2], country=[7, "fr"], plan=[np.nan, "pro"]), "x")
    decoded = prediction_wal._decode_group(prediction_wal._encode_group([made]), SCHEMA)[0]
    logged = prediction_wal.log_frame([decoded])
    assert logged["amount"].tolist() == [1.5, 2.0] and logged["country"].tolist() == ["7", "fr"]
    assert logged["plan"].isna().tolist() == [True, False]


# -- production → capture ----------------------------------------------------------------------------

class Refused(ValueError):
    """What serving's InvalidRequest carries: one error per bad cell, located by row position."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__(f"{len(errors)} bad cells")


def stub_scorer(calls: list[int]):
    """Scores like serving: refuses a null where the schema forbids it (one error per call, as a capped
    error list would), else logs every row through `predictions_frame`."""
    def score(frame: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
        calls.append(len(frame))
        for position, value in enumerate(frame["amount"]):
            if pd.isna(value):
                raise Refused([{"loc": ["rows", position, "amount"], "msg": "a value is required", "type": "not_nullable"}])
        first = np.linspace(0.5, 0.8, len(frame))
        return predictions_frame(frame, np.column_stack([first, 1 - first]), SCHEMA, "3", ids)
    return score


def test_mixed_traffic_is_logged_in_canonical_types_and_refused_rows_are_quarantined_not_fatal(workspace):
    use_schema(workspace)
    traffic = features(12, amount=[np.nan if i in (4, 9) else float(i) for i in range(12)])
    traffic.insert(0, "item_id", [f"t{i}" for i in range(12)])
    traffic["label"] = "no"
    traffic.to_parquet(workspace.traffic_path, index=False)
    calls: list[int] = []

    result = serve_traffic(workspace, 12, stub_scorer(calls))
    assert (result["rows"], result["quarantined"]) == (12, 2) and calls == [12, 11, 10]
    refused = pd.read_parquet(workspace.quarantine_dir / "production-traffic-000000000-000000012.parquet")
    assert refused["item_id"].tolist() == ["t4", "t9"]
    assert refused["reason"].tolist() == ["amount: a value is required"] * 2
    log = read_log(workspace)
    assert sorted(log["prediction_id"]) == sorted(f"t{i}" for i in range(12) if i not in (4, 9))
    types = pq.read_schema(result["part"])
    assert types.field("age").type == pa.float64()
    assert pa.types.is_large_string(types.field("review").type) and pa.types.is_large_string(types.field("customer_id").type)
    assert log["age"].isna().sum() == 3 and log["review"].isna().sum() == 2  # missing values kept as missing

    # A rerun (the cursor moved) scores nothing again; a crash before the cursor would rewrite the same files.
    assert serve_traffic(workspace, 12, stub_scorer(calls))["exhausted"] is True


def test_capture_quarantines_bad_values_with_reasons_and_reports_unseen_categories_as_drift(workspace):
    use_schema(workspace)
    scored = features(6, country=["de", "it", "it", "fr", "es", "de"])
    first = np.full(6, 0.6)
    good = predictions_frame(scored, np.column_stack([first, 1 - first]), SCHEMA, "3", [f"g{i}" for i in range(6)],
                             ts=pd.Timestamp("2026-03-01", tz="UTC"))
    path = workspace.predictions_dir / "date=2026-03-01" / "part-good.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    good.to_parquet(path, index=False)
    # Another producer: amount logged as text (a mixed-type column), a null where the schema forbids it,
    # an absurdly long review, and no id column at all.
    other = good.drop(columns=["customer_id"]).assign(prediction_id=[f"o{i}" for i in range(6)], item_id=None)
    other["amount"] = ["1.5", "n/a", "3", "4", "5", "6"]
    other["country"] = ["de", None, "fr", "fr", "pt", "de"]
    other["review"] = ["fine", "ok", "x" * 5_000, "ok", "ok", "ok"]
    other.drop(columns=["item_id"]).to_parquet(path.with_name("part-other.parquet"), index=False)

    report = capture(workspace, CaptureParams(confidence_threshold=1.0))
    assert (report.rows_read, report.rows_quarantined, report.rows_added) == (12, 2, 10)
    assert report.unseen_categories == {"country": 4}  # it, it, es from one part; pt from the other
    assert "unseen categories (drift, rows kept): country 4" in report.summary()
    assert "category unseen at init in `country`" in report.markdown()
    reasons = pd.read_parquet(report.quarantine_file).set_index("prediction_id")["reason"].to_dict()
    assert reasons == {
        "o1": ("ExpectColumnValuesToNotBeNull(country): country is missing and the schema does not allow nulls; "
               "amount: 'n/a' is not a finite number"),
        "o2": "ExpectColumnValueLengthsToBeBetween(review): text longer than 1,000 characters",
    }

    pool = load_pool(workspace).set_index("item_id")
    assert len(pool) == 10 and pool.loc["g1", "country"] == "it"
    assert pool.loc["o0", "amount"] == 1.5 and np.isnan(pool.loc["g0", "age"])
    status = capture_status(workspace)
    assert status["unseen_categories"] == {"country": 4} and "country 4" in capture_status_line(workspace)
    capture(workspace, CaptureParams(confidence_threshold=1.0))  # nothing new: the running total stays
    assert capture_status(workspace)["unseen_categories"] == {"country": 4}
