import numpy as np
import pandas as pd
import pytest

from labelloop.schema import (
    ColumnSpec,
    Schema,
    SchemaError,
    SchemaOverrides,
    as_text,
    conform,
    infer_schema,
    invalid_rows,
    schema_rows,
)


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < 0.5, "yes", "no")
    order = np.argsort(label, kind="stable")  # class-sorted, as exported tables often are
    return pd.DataFrame({
        "patient_id": np.arange(n),  # integers unique per row: an id, and on this table a perfect leak
        "age": rng.normal(50, 10, n).round(1),
        "weight": np.where(rng.random(n) < 0.1, np.nan, rng.normal(70, 5, n)),
        "country": rng.choice(["fr", "de", "it"], n).astype(object),
        "comment": [f"patient reports {w} pain in the morning" for w in rng.choice(["mild", "severe", "no"], n)],
        "site": ["main"] * (n - 1) + ["annex"],
        "empty": [None] * n,
        "label": label[order],
    })


def test_roles_are_inferred_from_the_values():
    inferred = infer_schema(_table(), "label")
    roles = {c.name: c.role for c in inferred.schema.columns}
    assert roles == {"patient_id": "id", "age": "numeric", "weight": "numeric", "country": "categorical",
                     "comment": "text", "site": "categorical", "empty": "ignored"}
    schema = inferred.schema
    assert schema.feature_columns == ["age", "weight", "country", "comment", "site"]
    assert schema.column("weight").nullable and not schema.column("age").nullable
    assert schema.column("country").categories == ["de", "fr", "it"]
    assert schema.class_names == ["no", "yes"]


def test_warnings_name_the_id_the_leak_the_near_constant_and_the_dropped_column():
    warnings = "\n".join(infer_schema(_table(), "label").warnings)
    assert "'patient_id' looks like an id" in warnings
    assert "'patient_id' alone predicts the label" in warnings and "leakage" in warnings
    assert "'site' is near-constant" in warnings
    assert "'empty': every value is missing; dropped" in warnings


def test_a_leaking_feature_is_flagged_but_kept():
    table = _table()
    table["score"] = np.where(table["label"] == "yes", 1.0, 0.0) + np.random.default_rng(1).normal(0, 0.01, len(table))
    inferred = infer_schema(table, "label")
    assert inferred.schema.column("score").role == "numeric"
    assert any("'score' alone predicts the label" in w for w in inferred.warnings)


def test_overrides_win_and_an_id_used_as_a_feature_only_when_asked():
    overrides = SchemaOverrides(numeric_columns=("patient_id",), categorical_columns=("age",), drop_columns=("comment",))
    schema = infer_schema(_table(), "label", overrides).schema
    assert schema.column("patient_id").role == "numeric"
    assert schema.column("age").role == "categorical"
    assert schema.column("comment").role == "ignored"
    assert "comment" not in schema.stored_columns


@pytest.mark.parametrize(("overrides", "message"), [
    (SchemaOverrides(id_columns=("nope",)), "not in the table.*'nope'"),
    (SchemaOverrides(id_columns=("age",), text_columns=("age",)), "'age' is given two roles"),
    (SchemaOverrides(text_columns=("label",)), "label column 'label' cannot"),
    (SchemaOverrides(numeric_columns=("empty",)), "'empty' is entirely missing"),
])
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(SchemaError, match=message):
        infer_schema(_table(), "label", overrides)


def test_missing_labels_are_refused_with_their_count():
    table = _table()
    table.loc[[3, 5, 8], "label"] = None
    with pytest.raises(SchemaError, match="3 of 200 rows have no label in 'label'"):
        infer_schema(table, "label")


def test_a_column_mixing_types_is_one_error_naming_it_and_the_offending_values():
    table = _table()
    table["dose"] = [str(v) for v in range(len(table))]
    table.loc[[4, 9], "dose"] = ["n/a", "unknown"]
    with pytest.raises(SchemaError, match=r"'dose' mixes numbers.*'n/a', 'unknown'"):
        infer_schema(table, "label")
    table["dose"] = [1, "a"] * (len(table) // 2)
    with pytest.raises(SchemaError, match=r"'dose' mixes value types \(int e\.g\. 1; str e\.g\. 'a'\)"):
        infer_schema(table, "label")
    # Forcing a role is the way out: every value is read as text.
    forced = infer_schema(table, "label", SchemaOverrides(categorical_columns=("dose",))).schema
    assert forced.column("dose").categories == ["1", "a"]


def test_numbers_stored_as_strings_are_numeric():
    table = _table().assign(age=lambda t: t["age"].astype(str))
    assert infer_schema(table, "label").schema.column("age").role == "numeric"


def test_conform_gives_canonical_types_and_invalid_rows_names_what_capture_refuses():
    schema = infer_schema(_table(), "label").schema
    raw = pd.DataFrame({"age": ["41", "x", None], "weight": [None, 1.0, 2.0], "country": [3.0, "fr", None],
                        "comment": ["a", None, "b"], "site": ["main", "main", "main"]})
    out = conform(raw, schema)
    assert out["age"].dtype == np.float64 and out["age"].iloc[0] == 41.0
    assert list(out["country"]) == ["3", "fr", None]
    # "x" is not a number; a missing age is not allowed (age never was missing); weight may be missing.
    assert list(invalid_rows(raw, schema)) == [False, True, True]


def test_schema_json_round_trips_and_the_old_numeric_format_still_reads():
    schema = infer_schema(_table(), "label").schema
    assert Schema.from_json(schema.to_json()) == schema
    old = Schema.from_json({"feature_columns": ["a", "b"], "class_names": ["x", "y"], "label_column": "label"})
    assert old.all_numeric and old.feature_columns == ["a", "b"] and old.proba_columns == ["proba_x", "proba_y"]


def test_schema_rows_list_every_column_and_the_label():
    rows = schema_rows(infer_schema(_table(), "label").schema)
    assert [r["column"] for r in rows][-1] == "label"
    assert {r["role"] for r in rows} == {"id", "numeric", "categorical", "text", "ignored", "label"}


def test_an_unknown_role_is_refused():
    with pytest.raises(SchemaError, match="unknown column role 'date'"):
        Schema([ColumnSpec("d", "date", "string")], ["a", "b"])


@pytest.mark.parametrize(("value", "text"), [(None, None), (np.nan, None), (3.0, "3"), (2.5, "2.5"), ("é", "é"),
                                             (b"caf\xc3\xa9", "café"), (True, "True")])
def test_as_text(value, text):
    assert as_text(value) == text
