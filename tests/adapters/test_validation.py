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
    text_length_limit,
    validate_annotations,
    validate_final_labels,
    validate_prediction_log,
    write_quarantine,
)
from labelloop.schema import ColumnSpec, Schema

NOT_NULL_X = "ExpectColumnValuesToNotBeNull(x): x is missing and the schema does not allow nulls"


# ------------------------------------------------------------------------------------- the wrapper
def test_run_checks_names_each_failed_row_with_its_expectation_and_reason():
    labelled = pd.DataFrame({"item_id": ["a", "a", None], "label": ["cat", "cow", "dog"], "x": [1.0, np.nan, 2.0]})
    failures = run_checks(labelled, labeled_set_checks(Schema.numeric(["x"], ["cat", "dog"])), "labeled_set")
    by_row = failures.groupby("row")["reason"].apply(set).to_dict()
    assert by_row[0] == {"ExpectColumnValuesToBeUnique(item_id)"}
    assert by_row[1] == {"ExpectColumnValuesToBeUnique(item_id)", "ExpectColumnValuesToBeInSet(label, value_set=['cat', 'dog'])",
                         NOT_NULL_X}
    assert by_row[2] == {"ExpectColumnValuesToNotBeNull(item_id)"}
    given = run_checks(labelled, [Check("ExpectColumnValuesToNotBeNull", {"column": "x"}, "x is missing")], "own_reason")
    assert given[["row", "expectation", "reason"]].values.tolist() == [[1, "ExpectColumnValuesToNotBeNull", "x is missing"]]
    assert run_checks(labelled.iloc[0:0], labeled_set_checks(Schema.numeric(["x"], ["cat"])), "labeled_set").empty


# ------------------------------------------------------------------------------- the prediction log
SCHEMA = Schema.numeric(["x"], ["A", "B"])


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
    checked = validate_prediction_log(_log(), SCHEMA)
    assert len(checked.valid) == 4 and checked.quarantined.empty and checked.unseen_categories == {}


@pytest.mark.parametrize("column, values, expected_reason", [
    ("x", [1.0, np.nan, 3.0, 4.0], NOT_NULL_X),
    ("x", [1.0, "oops", 3.0, 4.0], "x: 'oops' is not a finite number"),
    ("x", [1.0, np.inf, 3.0, 4.0], "x: inf is not a finite number"),
    ("confidence", [0.9, 1.7, 0.6, 0.8], "ExpectColumnValuesToBeBetween(confidence"),
    ("proba_A", [0.9, -0.5, 0.6, 0.2], "ExpectColumnValuesToBeBetween(proba_A"),
    ("proba_B", [0.1, 0.9, 0.4, 0.8], "probabilities do not sum to 1"),
    ("prediction_id", ["p1", "p1", "p3", "p4"], "duplicate prediction_id"),
    ("prediction_id", ["p1", None, "p3", "p4"], "ExpectColumnValuesToNotBeNull(prediction_id)"),
])
def test_bad_row_is_quarantined_with_its_reason_and_the_rest_kept(column, values, expected_reason):
    checked = validate_prediction_log(_log(**{column: values}), SCHEMA)
    valid, quarantined = checked.valid, checked.quarantined
    assert len(quarantined) == 1
    assert expected_reason in quarantined["reason"].iloc[0]
    assert len(valid) == 3
    assert "p3" in set(valid["prediction_id"]) and "p4" in set(valid["prediction_id"])


def test_missing_column_is_one_clear_error():
    with pytest.raises(ValueError, match="missing columns.*proba_B"):
        validate_prediction_log(_log().drop(columns=["proba_B"]), SCHEMA)


# ------------------------------------------------------------------ the schema's rules, per column role
MIXED = Schema([
    ColumnSpec("customer_id", "id", "string"),
    ColumnSpec("age", "numeric", "float64", nullable=True),
    ColumnSpec("amount", "numeric", "float64"),
    ColumnSpec("country", "categorical", "string", categories=["de", "fr"]),
    ColumnSpec("plan", "categorical", "string", nullable=True, categories=["free", "pro"]),
    ColumnSpec("review", "text", "string", nullable=True, min_length=2, max_length=40),
], ["A", "B"])


def _mixed_log(n: int, **overrides) -> pd.DataFrame:
    frame = pd.DataFrame({
        "prediction_id": [f"p{i}" for i in range(n)], "ts": pd.Timestamp("2026-01-01", tz="UTC"), "model_version": "1",
        "customer_id": [f"c{i}" for i in range(n)], "age": 30.0, "amount": 9.5, "country": "de", "plan": "free",
        "review": "fine", "proba_A": 0.7, "proba_B": 0.3, "predicted": "A", "confidence": 0.7,
    })
    for column, values in overrides.items():
        frame[column] = pd.Series(values, dtype=object) if isinstance(values, list) else values
    return frame


def test_each_role_is_checked_and_each_bad_row_quarantined_with_its_reason():
    log = _mixed_log(8,
                     age=[np.nan, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0],        # 0: nullable NaN: kept
                     amount=[9.5, None, "12,50", 9.5, 9.5, 9.5, 9.5, 9.5],          # 1: null, 2: text in a number
                     country=["de", "de", "de", None, "de", "de", "de", "de"],      # 3: null, not nullable
                     plan=["free", "pro", "free", "pro", None, ["pro"], "pro", "free"],  # 4: null ok; 5: a list
                     review=["fine", "ok", "ok", "ok", "ok", "ok", "x" * 1001, None])  # 6: absurdly long; 7: null ok
    checked = validate_prediction_log(log, MIXED)
    assert checked.valid["prediction_id"].tolist() == ["p0", "p4", "p7"]
    reasons = checked.quarantined.set_index("prediction_id")["reason"].to_dict()
    assert reasons == {
        "p1": "ExpectColumnValuesToNotBeNull(amount): amount is missing and the schema does not allow nulls",
        "p2": "amount: '12,50' is not a finite number",
        "p3": "ExpectColumnValuesToNotBeNull(country): country is missing and the schema does not allow nulls",
        "p5": "ExpectColumnValuesToBeInTypeList(plan): categorical values must be text",
        "p6": "ExpectColumnValueLengthsToBeBetween(review): text longer than 1,000 characters",
    }
    valid = checked.valid.set_index("prediction_id")
    assert np.isnan(valid.loc["p0", "age"]) and valid["amount"].dtype == np.float64
    assert valid.loc["p4", "plan"] is None and valid.loc["p7", "review"] is None
    assert checked.unseen_categories == {}


def test_an_unseen_category_is_counted_per_column_as_drift_not_quarantined():
    log = _mixed_log(5, country=["de", "it", "it", "es", "fr"], plan=["free", "team", None, "pro", "pro"],
                     amount=[9.5, 9.5, 9.5, 9.5, "n/a"])  # the last row is quarantined: its drift is not counted
    checked = validate_prediction_log(log, MIXED)
    assert checked.quarantined["prediction_id"].tolist() == ["p4"]
    assert checked.valid["country"].tolist() == ["de", "it", "it", "es"]
    assert checked.unseen_categories == {"country": 3, "plan": 1}


def test_values_are_read_in_the_schemas_types_and_id_columns_are_optional():
    log = _mixed_log(3, age=["41", "n/a", 7], country=pd.Series(["de", "fr", "de"], dtype="category"),
                     review=pd.Series(["good", None, "bad"], dtype="str"), plan=[1, None, "pro"])
    checked = validate_prediction_log(log.drop(columns=["customer_id"]), MIXED)
    assert checked.quarantined["prediction_id"].tolist() == ["p1"]  # 'n/a' in a numeric column
    assert checked.valid["age"].tolist() == [41.0, 7.0]
    assert checked.valid["plan"].tolist() == ["1", "pro"] and checked.unseen_categories == {"plan": 1}
    assert checked.valid["review"].tolist() == ["good", "bad"] and "customer_id" not in checked.valid
    with_ids = validate_prediction_log(_mixed_log(2, customer_id=[101, 102]), MIXED).valid
    assert with_ids["customer_id"].tolist() == ["101", "102"]
    with pytest.raises(ValueError, match=r"missing columns \['review'\]"):
        validate_prediction_log(log.drop(columns=["review"]), MIXED)


def test_text_length_limit_is_a_multiple_of_the_longest_seen_with_a_floor():
    assert text_length_limit(ColumnSpec("t", "text", "string", max_length=40)) == 1_000
    assert text_length_limit(ColumnSpec("t", "text", "string", max_length=2_000)) == 20_000
    assert text_length_limit(ColumnSpec("t", "text", "string")) == 100_000


def test_labeled_set_accepts_nullable_nulls_and_checks_categorical_types():
    labelled = pd.DataFrame({
        "item_id": ["a", "b", "c", "d"], "label": ["A", "B", "A", "B"],
        "customer_id": ["c1", "c2", None, "c4"],
        "age": [np.nan, 1.0, 2.0, 3.0], "amount": [1.0, 2.0, 3.0, np.nan],
        "country": pd.Series(["de", "it", None, "fr"], dtype="str"),  # "it": unseen, fine in the labelled set
        "plan": pd.Series([None, "pro", 3, "free"], dtype=object),
        "review": pd.Series(["x" * 5000, None, "ok", "ok"], dtype="str"),
    })
    failures = run_checks(labelled, labeled_set_checks(MIXED), "labeled_set")
    by_row = failures.groupby("row")["reason"].apply(set).to_dict()
    assert by_row == {
        2: {"ExpectColumnValuesToNotBeNull(country): country is missing and the schema does not allow nulls",
            "ExpectColumnValuesToBeInTypeList(plan): categorical values must be text"},
        3: {"ExpectColumnValuesToNotBeNull(amount): amount is missing and the schema does not allow nulls"},
    }


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
