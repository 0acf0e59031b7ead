"""Property-based fuzzing of the readers: whatever arrives, every row is either kept (and valid) or
quarantined with a reason — nothing is lost, nothing crashes."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.adapters.validation import validate_annotations, validate_prediction_log
from labelloop.schema import ColumnSpec, Schema

FEATURES = ["f1", "f2"]
PROBAS = ["proba_a", "proba_b"]
SCHEMA = Schema.numeric(FEATURES, ["a", "b"])
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=-5, max_value=5),
    st.text(max_size=4),
    st.none(),
)
ids = st.one_of(st.text(min_size=1, max_size=3, alphabet="abc"), st.none())


@st.composite
def log_frames(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    frame = pd.DataFrame({
        "prediction_id": draw(st.lists(ids, min_size=n, max_size=n)),
        "ts": pd.Timestamp("2026-01-01"),
        "model_version": "1",
        "predicted": "a",
    })
    for column in [*FEATURES, *PROBAS, "confidence"]:
        frame[column] = pd.Series(draw(st.lists(values, min_size=n, max_size=n)), dtype=object)
    return frame


def split(frame: pd.DataFrame, schema: Schema):
    """The validated frame: every row kept or quarantined with a reason, none lost."""
    checked = validate_prediction_log(frame, schema)
    assert len(checked.valid) + len(checked.quarantined) == len(frame)
    assert checked.quarantined["reason"].map(lambda r: isinstance(r, str) and len(r) > 0).all()
    return checked


@SETTINGS
@given(log_frames())
def test_prediction_log_reader_keeps_or_quarantines_every_row(frame):
    valid = split(frame, SCHEMA).valid
    if len(valid):
        numbers = valid[[*FEATURES, *PROBAS, "confidence"]].to_numpy(dtype=float)
        assert np.isfinite(numbers).all()
        probas = valid[PROBAS].to_numpy(dtype=float)
        assert ((probas >= 0) & (probas <= 1)).all()
        assert np.allclose(probas.sum(axis=1), 1.0, atol=1e-3)
        assert valid["prediction_id"].notna().all() and valid["prediction_id"].is_unique


@st.composite
def answer_frames(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    label_values = st.one_of(st.sampled_from(["cat", "dog", "=cmd|' /C calc'!A0", "../../etc/passwd", ""]), st.none(),
                             st.text(max_size=5))
    return pd.DataFrame({
        "item_id": draw(st.lists(st.one_of(st.sampled_from(["i1", "i2", "i3", "zz"]), st.none()), min_size=n, max_size=n)),
        "annotator_id": draw(st.lists(st.one_of(st.sampled_from(["a", "b"]), st.none()), min_size=n, max_size=n)),
        "label": draw(st.lists(label_values, min_size=n, max_size=n)),
        "annotation_id": [str(i) for i in range(n)],
    })


@SETTINGS
@given(answer_frames())
def test_vendor_answer_reader_keeps_or_quarantines_every_answer(answers):
    accepted, quarantined = validate_annotations(answers, ["i1", "i2", "i3"], ["cat", "dog"])
    assert len(accepted) + len(quarantined) == len(answers)
    assert set(accepted["label"]) <= {"cat", "dog"}
    assert set(accepted["item_id"]) <= {"i1", "i2", "i3"}
    assert not accepted.duplicated(subset=["item_id", "annotator_id"]).any()
    assert quarantined["reason"].map(lambda r: isinstance(r, str) and len(r) > 0).all()


# -- the prediction-log contract: any common shape is normalised, every row kept or quarantined ---

CLASSES = ["a", "b"]
INSTANTS = [pd.Timestamp("2026-01-01T00:00:00Z"), pd.Timestamp("2026-03-01T08:30:00.123456Z")]
UUIDS = [uuid.UUID(int=i) for i in (1, 2, 3)]
EPOCH_FACTORS = {"epoch_s": 10**-9, "epoch_ms": 10**-6, "epoch_us": 10**-3, "epoch_ns": 1}


def _instant_text(instant: pd.Timestamp, zone: str) -> str:
    return instant.tz_convert(zone).isoformat()


id_values = {
    "int": st.integers(min_value=0, max_value=5),
    "text": st.one_of(st.text(min_size=0, max_size=2, alphabet="ab "), st.none()),
    "uuid": st.one_of(st.sampled_from(UUIDS), st.none()),
    "float": st.sampled_from([1.0, 2.0, 2.5, float("nan")]),
    "mixed": st.one_of(st.integers(0, 3), st.sampled_from(["1", "x", ""]), st.sampled_from(UUIDS), st.none()),
}
ts_values = {
    "timestamp": st.sampled_from(INSTANTS),
    "iso": st.one_of(st.builds(_instant_text, st.sampled_from(INSTANTS), st.sampled_from(["UTC", "Asia/Tokyo", "America/Lima"])),
                     st.sampled_from(["yesterday", "", "2026-13-45"]), st.none()),
    **{shape: st.sampled_from([int(i.value * f) for i in INSTANTS]) for shape, f in EPOCH_FACTORS.items()},
    "mixed": st.one_of(st.sampled_from(INSTANTS), st.sampled_from([str(INSTANTS[0].value // 10**9), "2026-03-01", True, None]),
                       st.integers(min_value=-(10**19), max_value=10**19)),
}


def _column(draw, strategy, n):
    return pd.Series(draw(st.lists(strategy, min_size=n, max_size=n)), dtype=object)


@st.composite
def shaped_log_frames(draw):
    n = draw(st.integers(min_value=1, max_value=10))
    first = np.asarray(draw(st.lists(st.floats(min_value=0.05, max_value=0.95), min_size=n, max_size=n)))
    frame = pd.DataFrame({
        "prediction_id": _column(draw, id_values[draw(st.sampled_from(sorted(id_values)))], n),
        "ts": _column(draw, ts_values[draw(st.sampled_from(sorted(ts_values)))], n),
        "model_version": draw(st.sampled_from(["1", 2])),
        "f1": 1.0, "f2": _column(draw, values, n),
        "proba_a": first, "proba_b": 1 - first,
        "predicted": _column(draw, st.one_of(st.sampled_from([*CLASSES, "zebra", ""]), st.none()), n),
    })
    frame["confidence"] = np.where(draw(st.booleans()), np.maximum(first, 1 - first), first)
    frame["confidence"] = frame["confidence"].astype(object).where(
        np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n))), _column(draw, values, n))
    if draw(st.booleans()):
        frame["item_id"] = _column(draw, id_values[draw(st.sampled_from(sorted(id_values)))], n)
    return frame


@SETTINGS
@given(shaped_log_frames())
def test_prediction_log_reader_normalises_any_shape_and_keeps_or_quarantines_every_row(frame):
    from labelloop.prediction_log import TS_DTYPE

    valid = split(frame, SCHEMA).valid
    for column in ("prediction_id", "item_id", "predicted", "model_version"):
        assert valid[column].map(lambda v: isinstance(v, str) and v.strip() != "").all(), column
    assert valid["prediction_id"].is_unique and valid["item_id"].is_unique
    assert str(valid["ts"].dtype) == TS_DTYPE and valid["ts"].notna().all()
    assert set(valid["predicted"]) <= set(CLASSES)
    probas = valid[PROBAS].to_numpy(dtype=float)
    confidence = valid["confidence"].to_numpy(dtype=float)
    of_predicted = np.where(valid["predicted"] == "a", probas[:, 0], probas[:, 1])
    assert (np.isclose(confidence, probas.max(axis=1), atol=1e-3) | np.isclose(confidence, of_predicted, atol=1e-3)).all()
    if "item_id" not in frame.columns:
        assert (valid["item_id"] == valid["prediction_id"]).all()


@pytest.mark.parametrize("ts", [
    ["2026-13-45T25:00:00+09:00"],                       # zoned text that is no instant, alone
    ["2026-13-45T25:00:00+09:00", "not a time"],          # every value unreadable
    [10**30, 10**30],                                     # epochs out of range
    [pd.Timestamp("2026-03-01T17:30:00+09:00"), pd.NaT],  # a +09:00 timestamp beside NaT
], ids=["zoned-alone", "all-unreadable", "epochs-out-of-range", "zoned-with-nat"])
def test_unreadable_or_missing_timestamps_are_quarantined_never_a_type_error(ts):
    """Regression (hypothesis): a ts column whose values all come out NaT used to raise TypeError
    (an all-NaT numpy array is naive; the zoned column refused it) and stop capture."""
    n = len(ts)
    frame = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(n)], "ts": pd.Series(ts, dtype=object),
                          "model_version": "1", "f1": 1.0, "f2": 2.0, "proba_a": 0.6, "proba_b": 0.4,
                          "predicted": "a", "confidence": 0.6})
    checked = validate_prediction_log(frame, SCHEMA)
    readable = [v for v in ts if isinstance(v, pd.Timestamp) and v is not pd.NaT]
    assert checked.valid["ts"].tolist() == [v.tz_convert("UTC") for v in readable]
    assert len(checked.quarantined) == n - len(readable)
    unreadable = checked.quarantined["reason"]
    assert unreadable.str.contains("is not a timestamp|ExpectColumnValuesToNotBeNull\\(ts\\)").all()


MIXED = Schema([ColumnSpec("age", "numeric", "float64", nullable=True), ColumnSpec("amount", "numeric", "float64"),
                ColumnSpec("country", "categorical", "string", categories=["de", "fr"]),
                ColumnSpec("review", "text", "string", nullable=True, max_length=10)], ["a", "b"])
cells = st.one_of(values, st.sampled_from(["de", "fr", "it", "x" * 2000]), st.lists(st.integers(), max_size=2))


@st.composite
def mixed_log_frames(draw):
    n = draw(st.integers(min_value=1, max_value=10))
    frame = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(n)], "ts": pd.Timestamp("2026-01-01", tz="UTC"),
                          "model_version": "1", "proba_a": 0.6, "proba_b": 0.4, "predicted": "a", "confidence": 0.6})
    for column in ("age", "amount", "country", "review"):
        frame[column] = pd.Series(draw(st.lists(cells, min_size=n, max_size=n)), dtype=object)
    return frame


@SETTINGS
@given(mixed_log_frames())
def test_mixed_type_columns_keep_or_quarantine_every_row_and_kept_rows_fit_the_schema(frame):
    checked = split(frame, MIXED)
    valid = checked.valid
    assert valid["age"].dtype == np.float64 and not np.isinf(valid["age"]).any()
    assert valid["amount"].notna().all() and np.isfinite(valid["amount"]).all()
    assert valid["country"].map(lambda v: isinstance(v, str)).all()
    assert valid["review"].map(lambda v: v is None or (isinstance(v, str) and len(v) <= 1_000)).all()
    unseen = int((~valid["country"].isin(["de", "fr"])).sum())
    assert checked.unseen_categories == ({"country": unseen} if unseen else {})


# -- through capture and select, with parts a parquet producer can really write ------------------

_example = itertools.count()


@st.composite
def producer_parts(draw, class_names, feature_columns):
    """One part as a producer writes it: each column one type, chosen per part."""
    k = next(_example)
    n = draw(st.integers(min_value=1, max_value=8))
    id_shape = draw(st.sampled_from(["int", "text", "uuid"]))
    small = st.integers(min_value=0, max_value=4)
    raw_ids = draw(st.lists(small, min_size=n, max_size=n))
    ids = {"int": pd.Series([k * 100 + i for i in raw_ids], dtype="int64"),
           "text": pd.Series([f"e{k}-{i}" for i in raw_ids]),
           "uuid": pd.Series([str(uuid.UUID(int=k * 100 + i)) for i in raw_ids])}[id_shape]
    ts_shape = draw(st.sampled_from(["timestamp", "iso", "epoch_s", "epoch_ms", "epoch_ns", "naive"]))
    instant = INSTANTS[1]
    ts = {"timestamp": pd.Series([instant.tz_convert("Asia/Tokyo")] * n),
          "naive": pd.Series([instant.tz_localize(None)] * n),
          "iso": pd.Series(draw(st.lists(st.sampled_from([instant.isoformat(), "not a time"]), min_size=n, max_size=n))),
          **{s: pd.Series([int(instant.value * EPOCH_FACTORS[s])] * n, dtype="int64")
             for s in ("epoch_s", "epoch_ms", "epoch_ns")}}[ts_shape]
    top = np.asarray(draw(st.lists(st.floats(min_value=0.3, max_value=0.9), min_size=n, max_size=n)))
    m = len(class_names)
    probas = np.tile((1 - top)[:, None] / (m - 1), (1, m))
    probas[:, 0] = top
    frame = pd.DataFrame({"prediction_id": ids, "ts": ts, "model_version": draw(st.sampled_from(["1", "2"]))})
    for column in feature_columns:
        frame[column] = 1.0
    if draw(st.booleans()):
        frame[feature_columns[0]] = draw(st.lists(st.sampled_from([1.0, float("nan")]), min_size=n, max_size=n))
    for i, name in enumerate(class_names):
        frame[f"proba_{name}"] = probas[:, i]
    frame["predicted"] = draw(st.lists(st.sampled_from([class_names[0], class_names[0], "zebra"]), min_size=n, max_size=n))
    consistent = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    frame["confidence"] = np.where(consistent | (top >= 0.5), np.maximum(top, probas[:, 1]), 0.01)
    if draw(st.booleans()):
        item_ids = st.one_of(st.builds(lambda i: f"item-{k}-{i}", small), st.none())
        frame["item_id"] = draw(st.lists(item_ids, min_size=n, max_size=n))
    if draw(st.booleans()):
        frame["proba_zebra"] = 0.0
    # An extra column whose type differs between producers: the pool must still be storable.
    frame["note"] = draw(st.sampled_from([pd.Series(range(n), dtype="int64"), pd.Series(["x"] * n)]))
    frame["row_tag"] = [f"t{k}-{i}" for i in range(n)]
    return frame


@pytest.mark.filterwarnings("ignore::labelloop.domain.acquisition.selectors.BatchShrunkWarning")  # tiny pools
def test_no_row_level_problem_stops_capture_or_select(workspace):
    """Whatever shapes and bad rows producers send, capture and select run, and every row written is
    in the pool, a batch or quarantine (confidence_threshold=1.0: every valid row is a candidate)."""
    from labelloop.batches import load_pool
    from labelloop.config import CaptureParams, SelectParams
    from labelloop.prediction_log import TS_DTYPE
    from labelloop.stages.capture import capture
    from labelloop.stages.select import select_batch

    schema = workspace.schema()
    written: set[str] = set()

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(producer_parts(schema.class_names, schema.feature_columns), min_size=1, max_size=2))
    def run(parts):
        for i, part in enumerate(parts):
            path = workspace.predictions_dir / "date=2026-03-01" / f"part-{part['row_tag'].iloc[0]}-{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            part.to_parquet(path, index=False)
            written.update(part["row_tag"])
        capture(workspace, CaptureParams(confidence_threshold=1.0))
        select_batch(workspace, SelectParams(strategy="margin", batch_size=3))
        pool = load_pool(workspace)
        assert pool["item_id"].map(lambda v: isinstance(v, str)).all() and pool["item_id"].is_unique
        if len(pool):
            assert str(pool["ts"].dtype) == TS_DTYPE
        found = set(pool.get("row_tag", pd.Series(dtype=str)))
        for path in [*workspace.batches_dir.glob("*/batch.parquet"), *workspace.quarantine_dir.glob("*.parquet")]:
            found |= set(pd.read_parquet(path).get("row_tag", pd.Series(dtype=str)).dropna())
        assert written <= found, sorted(written - found)[:5]

    run()
