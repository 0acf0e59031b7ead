"""Why the model guesses what it guesses: TreeSHAP for XGBoost, coefficients x values for linear models, none else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.config import TextParams, TrainParams
from labelloop.explain import (
    METHOD_LINEAR,
    METHOD_NONE,
    METHOD_TREESHAP,
    explain,
    explain_method,
    feature_refs,
    why_text,
)
from labelloop.model import LabelloopClassifier
from labelloop.schema import ColumnSpec, Schema

STATES = ["CA", "NY", "TX", "WA"]


def _table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x0": rng.normal(size=n), "x1": rng.normal(size=n), "x2": rng.normal(size=n),
        "state": rng.choice(STATES, size=n),
    })


TABLE_SCHEMA = Schema([ColumnSpec("x0", "numeric", "float64"), ColumnSpec("x1", "numeric", "float64"),
                       ColumnSpec("x2", "numeric", "float64"), ColumnSpec("state", "categorical", "string", categories=STATES)],
                      ["high", "low"])


def _fit(estimator: str, frame: pd.DataFrame, y, schema: Schema = TABLE_SCHEMA, **train) -> LabelloopClassifier:
    return LabelloopClassifier.from_params(TrainParams(estimator=estimator, n_estimators=30, max_depth=3, **train),
                                           schema).fit(frame, np.asarray(y))


@pytest.mark.parametrize("estimator, method", [("xgboost", METHOD_TREESHAP), ("logistic_regression", METHOD_LINEAR)])
def test_the_deciding_feature_tops_the_explanation(estimator, method):
    frame = _table()
    y = np.where(frame["x0"] > 0, "high", "low")  # x0 alone decides
    model = _fit(estimator, frame, y)
    rows = frame.iloc[:40].reset_index(drop=True)
    explanations = explain(model, rows, top=2)
    assert explain_method(model) == method
    for row, e in zip(rows.itertuples(), explanations, strict=True):
        assert e["method"] == method and e["label"] == ("high" if row.x0 > 0 else "low")
        top = e["toward"][0]
        assert top["feature"] == f"x0={row.x0:.4g}" and top["weight"] > 0  # named with the item's own value
        assert all(abs(other["weight"]) < top["weight"] for other in e["toward"][1:] + e["away"])
        assert len(e["toward"]) <= 2 and len(e["away"]) <= 2


def test_a_deciding_category_reads_column_equals_value_for_tree_and_linear_models():
    frame = _table(seed=1)
    y = np.where(frame["state"] == "CA", "high", "low")
    rows = frame.iloc[:30].reset_index(drop=True)
    for estimator in ("xgboost", "logistic_regression"):  # native categorical vs one-hot
        explanations = explain(_fit(estimator, frame, y), rows)
        for row, e in zip(rows.itertuples(), explanations, strict=True):
            assert e["toward"][0]["feature"] == f"state={row.state}", (estimator, e)


def test_explaining_the_other_class_turns_toward_into_away():
    frame = _table()
    y = np.where(frame["x0"] > 0, "high", "low")
    model = _fit("xgboost", frame, y)
    row = frame.iloc[[int(np.argmax(frame["x0"]))]].reset_index(drop=True)  # surely "high"
    [own] = explain(model, row)
    [other] = explain(model, row, labels=["low"])
    assert own["label"] == "high" and other["label"] == "low"
    assert other["away"][0]["feature"] == own["toward"][0]["feature"]
    assert other["away"][0]["weight"] == pytest.approx(-own["toward"][0]["weight"], abs=1e-4)


def test_multiclass_contributions_are_centred_per_class():
    frame = _table(n=450, seed=2)
    y = np.select([frame["x1"] < -0.4, frame["x1"] > 0.4], ["a", "c"], "b")
    schema = Schema(TABLE_SCHEMA.columns, ["a", "b", "c"])
    rows = frame.iloc[:30].reset_index(drop=True)
    for estimator in ("xgboost", "logistic_regression"):
        model = _fit(estimator, frame, y, schema)
        predicted = model.predict(rows)
        for row, guess, e in zip(rows.itertuples(), predicted, explain(model, rows), strict=True):
            assert e["label"] == guess
            if guess != "b":  # the middle class is decided by x1 not being extreme: any sign
                assert e["toward"][0]["feature"] == f"x1={row.x1:.4g}", (estimator, e)


def test_text_tokens_explain_a_linear_text_model():
    rng = np.random.default_rng(3)
    words = ["parcel", "order", "late", "thanks", "box", "colour", "size"]
    texts = [" ".join(rng.choice(words, size=5)) + (" refund" if i % 2 else "") for i in range(200)]
    frame = pd.DataFrame({"body": texts, "amount": rng.normal(size=200)})
    frame.loc[40, "amount"] = np.nan  # a nullable numeric column beside the text (imputer + indicator)
    y = np.where(frame["body"].str.contains("refund"), "refund", "other")
    schema = Schema([ColumnSpec("body", "text", "string"), ColumnSpec("amount", "numeric", "float64", nullable=True)],
                    ["other", "refund"])
    words_only = _fit("logistic_regression", frame, y, schema, text=TextParams(char_ngrams=None, min_df=1))
    rows = frame.iloc[:20].reset_index(drop=True)
    for row, e in zip(rows.itertuples(), explain(words_only, rows), strict=True):
        if "refund" in row.body:
            assert e["label"] == "refund" and e["toward"][0]["feature"] == "body: 'refund'"
    # With the default character n-grams too, the top reason is still a piece of 'refund' in the body.
    default = _fit("logistic_regression", frame, y, schema)
    refund_row = rows[rows["body"].str.contains("refund")].head(1).reset_index(drop=True)
    [e] = explain(default, refund_row)
    top = e["toward"][0]["feature"]
    assert top.startswith("body: '") and top.split("'")[1].strip() in "refund" and len(top.split("'")[1].strip()) >= 2


def test_missing_values_and_missing_indicators_read_as_missing():
    frame = _table(seed=4)
    frame.loc[frame.index % 3 == 0, "x2"] = np.nan
    y = np.where(frame["x2"].isna(), "high", "low")  # missingness decides
    schema = Schema([*TABLE_SCHEMA.columns[:2], ColumnSpec("x2", "numeric", "float64", nullable=True), TABLE_SCHEMA.columns[3]],
                    ["high", "low"])
    rows = frame.iloc[:12].reset_index(drop=True)
    # XGBoost handles missing values natively (one feature); the linear model gets an imputed value and a missing
    # indicator, which both read "x2 missing" on a missing row (summed into one entry) and "x2 present" otherwise.
    for estimator, present in (("xgboost", "x2={:.4g}"), ("logistic_regression", "x2 present")):
        for row, e in zip(rows.itertuples(), explain(_fit(estimator, frame, y, schema), rows), strict=True):
            features = [t["feature"] for t in e["toward"]]
            assert features[0] == ("x2 missing" if np.isnan(row.x2) else present.format(row.x2)), (estimator, e)
            assert len(features) == len(set(features))


def test_other_estimators_say_they_have_no_explanation():
    frame = _table()
    model = _fit("random_forest", frame, np.where(frame["x0"] > 0, "high", "low"))
    explanations = explain(model, frame.head(3))
    assert explain_method(model) == METHOD_NONE
    assert all(e["method"] == METHOD_NONE and not e["toward"] and not e["away"] for e in explanations)
    assert "RandomForestClassifier" in explanations[0]["note"] and "TreeSHAP" in why_text(explanations[0])


def test_a_class_the_model_never_saw_and_no_guess_are_said_so():
    frame = _table()
    schema = Schema(TABLE_SCHEMA.columns, ["high", "low", "unseen"])
    model = _fit("xgboost", frame, np.where(frame["x0"] > 0, "high", "low"), schema)
    unseen, missing = explain(model, frame.head(2), labels=["unseen", None])
    assert unseen["note"] == "the model never saw class 'unseen'" and missing["note"] == "no guess"
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        explain(model, frame.head(3), labels=["high", "low"])


def test_feature_refs_trace_every_output_column_to_its_source():
    frame = _table()
    model = _fit("logistic_regression", frame, np.where(frame["x0"] > 0, "high", "low"))
    refs = feature_refs(model)
    assert len(refs) == model.transform(frame.head(1)).shape[1]
    assert [r.column for r in refs[:3]] == ["x0", "x1", "x2"]
    assert {(r.column, r.detail) for r in refs if r.kind == "onehot"} == {("state", s) for s in STATES}


def test_why_text_is_one_line():
    e = {"label": "high", "method": "treeshap", "toward": [{"feature": "x0=1.2", "weight": 0.81}], "away": []}
    assert why_text(e) == "toward: x0=1.2 (+0.81); away: nothing notable"
    assert why_text(None) == ""
