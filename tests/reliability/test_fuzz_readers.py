"""Property-based fuzzing of the readers: whatever arrives, every row is either kept (and valid) or
quarantined with a reason — nothing is lost, nothing crashes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.label_validation import validate_annotations
from labelloop.validation import validate_prediction_log

FEATURES = ["f1", "f2"]
PROBAS = ["proba_a", "proba_b"]
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


@SETTINGS
@given(log_frames())
def test_prediction_log_reader_keeps_or_quarantines_every_row(frame):
    valid, quarantined = validate_prediction_log(frame, FEATURES, PROBAS)
    assert len(valid) + len(quarantined) == len(frame)
    assert quarantined["reason"].map(lambda r: isinstance(r, str) and len(r) > 0).all()
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
