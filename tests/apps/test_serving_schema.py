"""Serving follows the schema: numeric, categorical and text fields, nullability, unseen categories.

The unit tests check the request model and the in-process validation against a schema alone; the
module's workspace is a real one made by `labelloop init` from a mixed table (numeric with and without
missing values, categorical with and without, text, an id column), with a real champion trained on it.
"""

import numpy as np
import pandas as pd
import pytest

from labelloop.apps.serving import (
    InvalidRequest,
    PredictionService,
    _request_frame,
    _request_models,
    create_app,
    predict_log_in_process,
    validate_features,
)
from labelloop.schema import ColumnSpec, Schema
from labelloop.stages.production import list_log_parts

SCHEMA = Schema([
    ColumnSpec("customer_id", "id", "string"),
    ColumnSpec("amount", "numeric", "float64"),
    ColumnSpec("age", "numeric", "float64", nullable=True),
    ColumnSpec("plan", "categorical", "string", categories=["basic", "pro", "team"]),
    ColumnSpec("country", "categorical", "string", nullable=True, categories=["de", "fr", "jp", "us"]),
    ColumnSpec("comment", "text", "string", nullable=True, min_length=5, max_length=200),
], ["no", "yes"])


def _row(**changes):
    return {"amount": 12.5, "age": 40, "plan": "pro", "country": "de", "comment": "arrived late, want a refund", **changes}


# -- the request model, from the schema ------------------------------------------------------------

def _validate(rows):
    from pydantic import ValidationError

    try:
        return _request_models(SCHEMA, 10).model_validate({"rows": rows}).rows, None
    except ValidationError as error:
        return None, error.errors()


def test_request_model_accepts_each_role_and_null_where_nullable():
    rows, errors = _validate([_row(), _row(age=None, country=None, comment=None), _row(country=3, plan="new plan")])
    assert errors is None
    left_out = {k: v for k, v in _row().items() if k not in ("age", "country", "comment")}
    rows_left_out, errors = _validate([left_out])  # a nullable field may be left out: read as missing
    assert errors is None and rows_left_out[0] == left_out
    assert rows[2]["country"] == "3"  # a number in a categorical field is read as text, as init read the source
    frame = _request_frame(rows + rows_left_out, SCHEMA)
    assert list(frame.columns) == SCHEMA.feature_columns
    assert frame["amount"].dtype == np.float64 and frame["age"].dtype == np.float64
    assert np.isnan(frame["age"].iloc[1]) and np.isnan(frame["age"].iloc[3])
    assert frame["country"].tolist() == ["de", None, "3", None] and frame["plan"].dtype == object
    assert frame["comment"].iloc[1] is None


@pytest.mark.parametrize(("change", "field", "kind"), [
    ({"amount": "12.5"}, "amount", "float_type"),          # a string in a numeric field
    ({"age": "forty"}, "age", "float_type"),               # ... nullable or not
    ({"amount": True}, "amount", "float_type"),            # booleans are not numbers
    ({"amount": None}, "amount", "float_type"),            # null where not nullable
    ({"plan": None}, "plan", "string_type"),
    ({"plan": ["pro"]}, "plan", "string_type"),            # a list where a scalar is expected
    ({"country": {"code": "de"}}, "country", "string_type"),
    ({"plan": True}, "plan", "string_type"),
    ({"comment": 42}, "comment", "string_type"),           # text is not coerced from numbers
    ({"colour": "red"}, "colour", "extra_forbidden"),      # an unknown field
    ({"customer_id": ["c1"]}, "customer_id", "string_type"),  # an id (logged, not a feature) is a scalar too
])
def test_request_model_rejects_what_the_role_does_not_take(change, field, kind):
    _, errors = _validate([_row(**change)])
    assert errors is not None and [(e["loc"][-1], e["type"]) for e in errors] == [(field, kind)]


def test_request_model_requires_non_nullable_fields():
    _, errors = _validate([{k: v for k, v in _row().items() if k != "plan"}])
    assert [(e["loc"], e["type"]) for e in errors] == [(("rows", 0, "plan"), "missing")]


# -- in-process validation ------------------------------------------------------------------------

def test_validate_features_returns_canonical_types_fast_and_slow_path_alike():
    clean = pd.DataFrame([_row(), _row(age=None, country=None, comment=None)])
    fast = validate_features(clean.assign(customer_id=["a", "b"]), SCHEMA)
    assert list(fast.columns) == SCHEMA.feature_columns
    assert fast.dtypes.to_dict() == {"amount": np.float64, "age": np.float64, "plan": object, "country": object,
                                     "comment": object}
    assert fast["country"].tolist() == ["de", None] and np.isnan(fast["age"].iloc[1])
    # The per-cell path (numbers in a categorical column, NaN for a missing string, an int column) gives the same.
    mixed = clean.astype({"country": object, "comment": object})
    mixed.loc[1, "comment"] = np.nan
    mixed["plan"] = [7, "pro"]
    slow = validate_features(mixed, SCHEMA)
    assert slow["plan"].tolist() == ["7", "pro"] and slow["comment"].tolist() == [clean["comment"][0], None]
    pd.testing.assert_frame_equal(slow.drop(columns="plan"), fast.drop(columns="plan"))


def test_validate_features_names_every_bad_cell():
    frame = pd.DataFrame([_row(), _row(), _row(), _row()]).astype({"amount": object, "plan": object, "comment": object})
    frame.loc[0, "amount"] = "abc"
    frame.loc[1, "amount"] = np.inf
    frame.loc[2, "amount"] = None
    frame.loc[1, "plan"] = None
    frame.loc[3, "comment"] = 5
    with pytest.raises(InvalidRequest) as error:
        validate_features(frame, SCHEMA)
    assert [(e["loc"], e["type"]) for e in error.value.errors] == [
        (["rows", 0, "amount"], "float_type"), (["rows", 1, "amount"], "finite_number"),
        (["rows", 2, "amount"], "not_nullable"), (["rows", 1, "plan"], "not_nullable"),
        (["rows", 3, "comment"], "string_type")]
    assert "amount is not nullable" in str(error.value)
    with pytest.raises(InvalidRequest, match="plan: missing feature column"):
        validate_features(pd.DataFrame([_row()]).drop(columns="plan"), SCHEMA)


def test_numeric_only_schema_keeps_the_float_matrix_path_and_allows_nan_only_where_nullable():
    schema = Schema([ColumnSpec("a", "numeric", "float64"), ColumnSpec("b", "numeric", "float64", nullable=True)], ["x", "y"])
    assert schema.all_numeric
    rows, _ = _request_models(schema, 5).model_validate({"rows": [{"a": 1, "b": None}, {"a": 2}]}).rows, None
    frame = _request_frame(rows, schema)
    assert frame.to_numpy().dtype == np.float64 and np.isnan(frame["b"]).all()
    ok = validate_features(pd.DataFrame({"a": [1.0, 2.0], "b": [np.nan, 3.0]}), schema)
    assert ok["b"].isna().tolist() == [True, False]
    with pytest.raises(InvalidRequest) as error:
        validate_features(pd.DataFrame({"a": [np.nan, 2.0], "b": [1.0, np.inf]}), schema)
    assert [(e["loc"], e["type"]) for e in error.value.errors] == [(["rows", 0, "a"], "not_nullable"),
                                                                   (["rows", 1, "b"], "finite_number")]


def _values(series):
    """A column's values with every missing marker as None (pandas reads parquet strings with NaN)."""
    return [None if pd.isna(v) else v for v in series]


# -- a real workspace from a mixed table, a real champion ----------------------------------------------

WORDS_YES = ["refund", "broken", "late", "never", "arrived", "damaged"]
WORDS_NO = ["great", "fast", "lovely", "works", "perfect", "thanks"]


def mixed_table(n=480, seed=0):
    rng = np.random.RandomState(seed)
    plan = rng.choice(["basic", "pro", "team"], n)
    country = rng.choice(["de", "fr", "jp", "us"], n).astype(object)
    country[rng.rand(n) < 0.08] = None
    amount = rng.normal(50, 20, n).round(2)
    age = rng.randint(18, 80, n).astype(float)
    age[rng.rand(n) < 0.1] = np.nan
    score = (plan == "pro") * 1.0 + (amount > 55) * 1.0 + (country == "us") * 0.5 + rng.normal(0, 0.4, n)
    label = np.where(score > 1.0, "yes", "no")
    comment = [" ".join(rng.choice(WORDS_YES if y == "yes" else WORDS_NO, 4)) + " about the order"
               if rng.rand() > 0.1 else None for y in label]
    return pd.DataFrame({"customer_id": [f"c{i:05d}" for i in range(n)], "amount": amount, "age": age, "plan": plan,
                         "country": country, "comment": comment, "label": label})


@pytest.fixture(scope="module")
def mixed_template(tmp_path_factory):
    from labelloop.apps.init import init_workspace
    from labelloop.config import Params
    from labelloop.stages import gate, train

    root = tmp_path_factory.mktemp("mixed")
    source = root / "table.parquet"
    mixed_table().to_parquet(source, index=False)
    params = Params().with_overrides(dataset={"source": str(source)}, production={"rows_per_cycle": 100},
                                     select={"batch_size": 20},
                                     train={"estimator": "xgboost", "n_estimators": 20, "max_depth": 3})
    ws = init_workspace(root / "ws", params)
    result = train.train_challenger(ws, ws.params().train)
    gate.promote(ws, ws.params().train.model_name, result.version)
    return ws


@pytest.fixture
def mixed(mixed_template, tmp_path):
    from tests.conftest import clone_workspace

    return clone_workspace(mixed_template, tmp_path / "ws")


def test_the_workspace_schema_has_every_role(mixed_template):
    schema = mixed_template.schema()
    roles = {c.name: (c.role, c.nullable) for c in schema.columns}
    assert roles == {"customer_id": ("id", False), "amount": ("numeric", False), "age": ("numeric", True),
                     "plan": ("categorical", False), "country": ("categorical", True), "comment": ("text", True)}


@pytest.fixture(scope="module")
def mixed_client(mixed_template, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tests.conftest import clone_workspace

    ws = clone_workspace(mixed_template, tmp_path_factory.mktemp("mixed-client") / "ws")
    with TestClient(create_app(ws, ws.params().train.model_name, flush_rows=10_000, flush_seconds=3600)) as client:
        yield ws, client


def test_strings_for_categorical_and_text_and_null_where_nullable_are_scored(mixed_client):
    from labelloop.adapters import tracking
    from labelloop.schema import conform

    ws, client = mixed_client
    rows = [_row(), _row(age=None), _row(age=None, country=None, comment=None),
            {k: v for k, v in _row().items() if k not in ("age", "country", "comment")}]  # left out = missing
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 4 and all(set(p["probabilities"]) == {"no", "yes"} for p in predictions)
    # The same rows scored by the registered model (through the wrapper, canonical types) give the same.
    schema = ws.schema()
    model = tracking.load_model(ws, ws.params().train.model_name, response.json()["model_version"])
    expected = model.predict_proba(conform(pd.DataFrame(rows).reindex(columns=schema.feature_columns), schema))
    got = np.array([[p["probabilities"][c] for c in schema.class_names] for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[2], got[3], rtol=1e-9)  # null and left out are the same missing value


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"amount": None}, "amount", "not nullable"),
    ({"plan": None}, "plan", "not nullable"),
    ({"amount": "12.5"}, "amount", "valid number"),
    ({"age": "forty"}, "age", "valid number"),
    ({"comment": 42}, "comment", "valid string"),
    ({"plan": ["pro"]}, "plan", "valid string"),
    ({"country": {"code": "de"}}, "country", "valid string"),
    ({"colour": "red"}, "colour", "Extra inputs"),
])
def test_what_a_field_does_not_take_is_422_naming_it(mixed_client, change, field, words):
    _, client = mixed_client
    before = client.get("/health").json()["buffered_rows"]
    response = client.post("/predict", json={"rows": [_row(), _row(**change)]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert [(d["field"], d["row"]) for d in body["detail"]] == [(field, 1)]
    assert field in body["error"] and words in body["error"]
    assert client.get("/health").json()["buffered_rows"] == before


def test_an_unseen_category_is_scored_as_missing_and_counted(mixed_client):
    _, client = mixed_client
    unseen_before = client.get("/health").json()["unseen_categories"].get("country", {"rows": 0})["rows"]
    response = client.post("/predict", json={"rows": [_row(country="br"), _row(country=None), _row(country="br"),
                                                      _row(plan="enterprise")]})
    assert response.status_code == 200, response.text
    p = [pred["probabilities"] for pred in response.json()["predictions"]]
    assert p[0] == pytest.approx(p[1]) and p[0] == p[2]  # XGBoost's native categoricals: unseen → missing
    unseen = client.get("/health").json()["unseen_categories"]
    assert unseen["country"]["rows"] == unseen_before + 2 and "br" in unseen["country"]["examples"]
    assert unseen["plan"]["rows"] >= 1 and "enterprise" in unseen["plan"]["examples"]


def test_schema_endpoint_example_is_a_valid_request(mixed_client):
    _, client = mixed_client
    described = client.get("/schema").json()
    example = described["request_example"]
    assert set(example["rows"][0]) == {"amount", "age", "plan", "country", "comment"}
    assert {c["name"]: c["role"] for c in described["columns"]}["comment"] == "text"
    assert client.post("/predict", json=example).status_code == 200
    # The OpenAPI document types each field by its role.
    openapi = client.get("/openapi.json").json()
    row = next(v for k, v in openapi["components"]["schemas"].items() if k.startswith("Row"))
    assert set(row["required"]) == {"amount", "plan"} and row["additionalProperties"] is False
    assert row["properties"]["amount"]["type"] == "number" and row["properties"]["comment"]["anyOf"][0]["type"] == "string"


@pytest.mark.parametrize("mode", ["durable", "buffered"])
def test_the_log_holds_the_canonical_columns(mixed, mode):
    from fastapi.testclient import TestClient

    name = mixed.params().train.model_name
    rows = [_row(customer_id="c-1"), _row(age=None, country=None, comment=None), _row(country=7)]
    with TestClient(create_app(mixed, name, flush_rows=10_000, flush_seconds=3600, mode=mode)) as client:
        assert client.post("/predict", json={"rows": rows}).status_code == 200
    parts = list_log_parts(mixed)
    log = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert len(log) == 3
    assert log["amount"].dtype == np.float64 and log["age"].dtype == np.float64 and np.isnan(log["age"][1])
    assert _values(log["country"]) == ["de", None, "7"] and _values(log["comment"])[1] is None
    assert log["plan"].tolist() == ["pro"] * 3 and _values(log["customer_id"]) == ["c-1", None, None]
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {f.name: f.type for f in pq.read_schema(parts[0])}
    assert types["amount"] == pa.float64() and all(pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])
                                                   for c in ("plan", "country", "comment", "customer_id"))


def test_in_process_scoring_takes_the_workspace_traffic_as_stored(mixed):
    schema = mixed.schema()
    traffic = pd.read_parquet(mixed.simulator_dir / "traffic.parquet").head(40)
    assert traffic["age"].isna().any() and traffic["country"].isna().any()  # the nulls init kept
    service = PredictionService(mixed, mixed.params().train.model_name, mode="buffered")
    scored = service.predict(traffic[schema.feature_columns])
    service.close()
    logged = predict_log_in_process(mixed, mixed.params().train.model_name, traffic[schema.stored_columns])  # + ids
    np.testing.assert_allclose(logged[schema.proba_columns].to_numpy(), scored.probas, rtol=1e-9)
    assert _values(logged["country"]) == _values(traffic["country"])
    assert _values(logged["customer_id"]) == _values(traffic["customer_id"])  # ids are logged with the row


def test_a_version_that_cannot_be_loaded_is_refused_and_not_retried(mixed, monkeypatch):
    from labelloop.adapters import tracking
    from labelloop.apps.serving import NoChampion

    calls = []

    def older(workspace, model_name, version):
        calls.append(version)
        raise tracking.IncompatibleModel(f"model {model_name!r} version {version} was stored by an older labelloop")

    monkeypatch.setattr(tracking, "load_model", older)
    service = PredictionService(mixed, mixed.params().train.model_name, mode="buffered", alias_ttl_seconds=0.001)
    for _ in range(2):
        with pytest.raises(NoChampion, match="older labelloop"):
            service.predict(pd.DataFrame([_row()]))
    assert calls == ["1"] and "older labelloop" in service.health()["refused_versions"]["1"]
