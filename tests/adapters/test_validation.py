import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.validation import validate_prediction_log

FEATURES = ["x"]
PROBAS = ["proba_A", "proba_B"]


def _log(**overrides):
    frame = pd.DataFrame({
        "prediction_id": ["p1", "p2", "p3", "p4"],
        "ts": pd.Timestamp("2026-01-01"),
        "model_version": "1",
        "x": [1.0, 2.0, 3.0, 4.0],
        "proba_A": [0.9, 0.5, 0.6, 0.2],
        "proba_B": [0.1, 0.5, 0.4, 0.8],
        "predicted": ["A", "A", "A", "B"],
        "confidence": [0.9, 0.5, 0.6, 0.8],
    })
    for column, values in overrides.items():
        frame[column] = values
    return frame


def test_clean_log_passes_whole():
    valid, quarantined = validate_prediction_log(_log(), FEATURES, PROBAS)
    assert len(valid) == 4 and quarantined.empty


@pytest.mark.parametrize("column, values, expected_reason", [
    ("x", [1.0, np.nan, 3.0, 4.0], "ExpectColumnValuesToNotBeNull(x)"),
    ("x", [1.0, np.inf, 3.0, 4.0], "ExpectColumnValuesToNotBeNull(x)"),
    ("x", [1.0, "oops", 3.0, 4.0], "ExpectColumnValuesToNotBeNull(x)"),
    ("confidence", [0.9, 1.7, 0.6, 0.8], "ExpectColumnValuesToBeBetween(confidence"),
    ("proba_A", [0.9, -0.5, 0.6, 0.2], "ExpectColumnValuesToBeBetween(proba_A"),
    ("proba_B", [0.1, 0.9, 0.4, 0.8], "probabilities do not sum to 1"),
    ("prediction_id", ["p1", "p1", "p3", "p4"], "duplicate prediction_id"),
    ("prediction_id", ["p1", None, "p3", "p4"], "ExpectColumnValuesToNotBeNull(prediction_id)"),
])
def test_bad_row_is_quarantined_with_its_reason_and_the_rest_kept(column, values, expected_reason):
    valid, quarantined = validate_prediction_log(_log(**{column: values}), FEATURES, PROBAS)
    assert len(quarantined) == 1
    assert expected_reason in quarantined["reason"].iloc[0]
    assert len(valid) == 3
    assert "p3" in set(valid["prediction_id"]) and "p4" in set(valid["prediction_id"])


def test_missing_column_is_one_clear_error():
    with pytest.raises(ValueError, match="missing columns.*proba_B"):
        validate_prediction_log(_log().drop(columns=["proba_B"]), FEATURES, PROBAS)
