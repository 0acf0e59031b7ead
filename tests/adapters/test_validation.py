"""The one Great Expectations wrapper and its suites: the prediction log, the labelled set, the vendor's
answers and the final labels, and the quarantine file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.validation import (
    Check,
    labeled_set_checks,
    run_checks,
    validate_annotations,
    validate_final_labels,
    validate_prediction_log,
    write_quarantine,
)


# ------------------------------------------------------------------------------------- the wrapper
def test_run_checks_names_each_failed_row_with_its_expectation_and_reason():
    labelled = pd.DataFrame({"item_id": ["a", "a", None], "label": ["cat", "cow", "dog"], "x": [1.0, np.nan, 2.0]})
    failures = run_checks(labelled, labeled_set_checks(["x"], ["cat", "dog"]), "labeled_set")
    by_row = failures.groupby("row")["reason"].apply(set).to_dict()
    assert by_row[0] == {"ExpectColumnValuesToBeUnique(item_id)"}
    assert by_row[1] == {"ExpectColumnValuesToBeUnique(item_id)", "ExpectColumnValuesToBeInSet(label, value_set=['cat', 'dog'])",
                         "ExpectColumnValuesToNotBeNull(x)"}
    assert by_row[2] == {"ExpectColumnValuesToNotBeNull(item_id)"}
    given = run_checks(labelled, [Check("ExpectColumnValuesToNotBeNull", {"column": "x"}, "x is missing")], "own_reason")
    assert given[["row", "expectation", "reason"]].values.tolist() == [[1, "ExpectColumnValuesToNotBeNull", "x is missing"]]
    assert run_checks(labelled.iloc[0:0], labeled_set_checks(["x"], ["cat"]), "labeled_set").empty


# ------------------------------------------------------------------------------- the prediction log
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


# ---------------------------------------------------------------------------- answers and final labels
BATCH = ["a", "b", "c"]
LABELS = ["cat", "dog"]


def frame(rows):
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label", "annotation_id"])


def test_clean_answers_pass_unchanged():
    data = frame([("a", "u1", "cat", "1"), ("b", "u1", "dog", "2"), ("a", "u2", "cat", "3")])
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert len(accepted) == 3 and quarantined.empty
    assert {"expectation", "reason"} <= set(quarantined.columns)


def test_each_bad_row_is_quarantined_with_its_expectation():
    data = frame([
        ("a", "u1", "cat", "1"),          # ok
        ("zzz", "u1", "cat", "2"),        # unknown item id
        ("b", "u1", "horse", "3"),        # unknown label
        (None, "u1", "cat", "4"),         # null item
        ("c", None, "dog", "5"),          # null annotator
        ("c", "u2", None, "6"),           # null label
        ("b", "u2", "  ", "7"),           # blank label counts as missing
    ])
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert accepted["annotation_id"].tolist() == ["1"]
    reasons = quarantined.set_index("annotation_id")
    assert reasons.loc["2", "expectation"] == "ExpectColumnValuesToBeInSet"
    assert reasons.loc["2", "reason"] == "item_id is not in this batch"
    assert reasons.loc["3", "reason"] == "label is not in the label set"
    assert reasons.loc["4", "reason"] == "item_id is missing"
    assert reasons.loc["5", "reason"] == "annotator_id is missing"
    assert reasons.loc["6", "expectation"] == "ExpectColumnValuesToNotBeNull"
    assert reasons.loc["7", "reason"] == "label is missing"
    assert len(accepted) + len(quarantined) == len(data)  # nothing dropped silently


def test_duplicate_answers_keep_the_last_one():
    data = frame([("a", "u1", "cat", "1"), ("a", "u1", "dog", "2"), ("a", "u2", "dog", "3")])
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert accepted["annotation_id"].tolist() == ["2", "3"]
    assert quarantined["annotation_id"].tolist() == ["1"]
    assert "duplicate" in quarantined["reason"].iloc[0]


def test_malformed_rows_from_the_vendor_adapter_are_quarantined():
    data = frame([("a", "u1", "cat", "1"), (None, None, None, None)])
    data["parse_error"] = [None, "line 2: not valid JSON"]
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert len(accepted) == 1
    assert quarantined["expectation"].tolist() == ["malformed"]
    assert "not valid JSON" in quarantined["reason"].iloc[0]


def test_non_string_values_are_compared_as_text():
    data = pd.DataFrame({"item_id": [1, 2], "annotator_id": [7, 7], "label": [0, 5]})
    accepted, quarantined = validate_annotations(data, ["1", "2"], ["0", "1"])
    assert accepted["item_id"].tolist() == ["1"] and quarantined["item_id"].tolist() == ["2"]


def test_missing_columns_raise_one_clear_error():
    with pytest.raises(ValueError, match="annotator_id"):
        validate_annotations(pd.DataFrame({"item_id": ["a"], "label": ["cat"]}), BATCH, LABELS)


def test_final_labels_one_per_item():
    final = pd.DataFrame({"item_id": ["a", "a", "b", "c", "q"], "label": ["cat", "dog", None, "dog", "cat"]})
    accepted, quarantined = validate_final_labels(final, BATCH, LABELS)
    assert accepted["item_id"].tolist() == ["c"]
    reasons = quarantined.groupby("item_id")["reason"].first()
    assert reasons["a"] == "more than one final label for this item"
    assert reasons["b"] == "final label is missing"
    assert reasons["q"] == "item_id is not in this batch"


def test_empty_input():
    accepted, quarantined = validate_annotations(frame([]), BATCH, LABELS)
    assert accepted.empty and quarantined.empty


def test_quarantine_file_is_jsonl_with_reasons_and_replaced_on_rerun(tmp_path):
    data = frame([("zzz", "u1", "cat", "1"), ("b", "u1", "horse", "2")])
    data["score"] = [np.nan, 0.5]
    _, quarantined = validate_annotations(data, BATCH, LABELS)
    path = tmp_path / "quarantine" / "b1.jsonl"
    write_quarantine(path, quarantined, batch_id="b1")
    write_quarantine(path, quarantined, batch_id="b1")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["batch_id"] == "b1" and lines[0]["expectation"] == "ExpectColumnValuesToBeInSet"
    assert lines[0]["score"] is None and lines[1]["label"] == "horse"


# ------------------------------------------------------------------------------------ annotator ids
ALICE_SPELLINGS = ["alice", "alice\u200b", " alice ", "\ufeffal\u2060ice", "ａｌｉｃｅ", "al\u200cice\u200d"]


def test_look_alike_annotator_ids_are_one_annotator_so_their_answers_are_duplicates():
    data = frame([("a", spelling, "cat", str(n)) for n, spelling in enumerate(ALICE_SPELLINGS)]
                 + [("b", "bob\u200b", "dog", "9")])
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert accepted[["item_id", "annotator_id", "annotation_id"]].values.tolist() == [
        ["a", "alice", str(len(ALICE_SPELLINGS) - 1)], ["b", "bob", "9"]]  # the last answer per person is kept
    assert set(quarantined["expectation"]) == {"ExpectCompoundColumnsToBeUnique"}
    assert len(quarantined) == len(ALICE_SPELLINGS) - 1


def test_an_annotator_id_of_only_invisible_characters_is_quarantined_with_an_escaped_reason():
    data = frame([("a", "\u200b\u2060", "cat", "1"), ("b", "u1", "dog", "2"), ("c", "  ", "dog", "3")])
    accepted, quarantined = validate_annotations(data, BATCH, LABELS)
    assert accepted["annotation_id"].tolist() == ["2"]
    reasons = quarantined.set_index("annotation_id")["reason"]
    assert reasons["1"] == "annotator_id '\\u200b\\u2060' is empty once normalised (only invisible or space characters)"
    assert reasons["3"] == "annotator_id is missing"  # blank stays 'missing', as before
    assert "\u200b" not in "".join(quarantined["reason"])  # the reason shows the characters escaped
