"""Selection's feature space: the model's transformed features, text reduced by TruncatedSVD, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.config import TextParams, TrainParams
from labelloop.domain.acquisition.pool import SelectionContext, select_indices
from labelloop.domain.acquisition.space import ModelSpace, raw_features
from labelloop.model import LabelloopClassifier
from labelloop.schema import ColumnSpec, Schema

CLASSES = ["ham", "promo", "spam"]
WORDS = {"spam": "win prize free money click now cash", "ham": "meeting lunch tomorrow report thanks team notes",
         "promo": "sale discount offer store coupon today deal"}


def mixed_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, Schema]:
    """Numeric (with NaN), categorical (with None) and text columns; labels ham/promo/spam."""
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=n, p=[0.45, 0.2, 0.35])
    vocabulary = " ".join(WORDS.values()).split()

    def sentence(label: str) -> str:
        own = WORDS[label].split()
        return " ".join([own[i] for i in rng.integers(0, len(own), 6)] + [vocabulary[i] for i in rng.integers(0, 21, 3)])

    frame = pd.DataFrame({
        "amount": np.where(y == "spam", 50.0, 10.0) + rng.normal(size=n) * 5,
        "country": rng.choice(["FR", "DE", "US", "JP"], size=n).astype(object),
        "body": [sentence(v) for v in y],
    })
    frame.loc[rng.random(n) < 0.1, "amount"] = np.nan
    frame.loc[rng.random(n) < 0.05, "country"] = None
    schema = Schema([
        ColumnSpec("amount", "numeric", "float64", nullable=True),
        ColumnSpec("country", "categorical", "string", nullable=True, categories=["DE", "FR", "JP", "US"]),
        ColumnSpec("body", "text", "string"),
    ], CLASSES)
    return frame, y.astype(str), schema


FAST = TrainParams(estimator="logistic_regression", text=TextParams(char_ngrams=None, min_df=1))


@pytest.fixture(scope="module")
def fitted():
    frame, y, schema = mixed_frame()
    model = LabelloopClassifier.from_params(FAST, schema).fit(frame.iloc[:60], y[:60])
    return frame, y, schema, model


def test_text_features_are_reduced_to_dense_components(fitted):
    frame, _, _, model = fitted
    raw = model.transform(frame)
    assert hasattr(raw, "toarray") and raw.shape[1] > 16  # sparse n-grams: wider than the space asked for
    space = ModelSpace.of_model(model, components=8).fit(frame, seed=0)
    x = space(frame)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    # the numeric block (imputed amount + its missing indicator) and 8 SVD components of the text; the one-hot
    # country columns carry no distances
    blocks = model.pipeline_.named_steps["features"].output_indices_
    assert blocks["numeric"].stop - blocks["numeric"].start == 2 and blocks["onehot"].stop > blocks["onehot"].start
    assert x.shape == (len(frame), 2 + 8)
    np.testing.assert_allclose(x[:, :2], raw[:, blocks["numeric"]].toarray(), rtol=1e-6)
    # Chunk by chunk gives the same rows as all at once (a chunk is the only sparse temporary).
    chunked = ModelSpace.of_model(model, components=8, chunk_rows=37).fit(frame, seed=0)
    np.testing.assert_allclose(chunked(frame.iloc[:100].copy()), x[:100], rtol=1e-5, atol=1e-5)


def test_the_svd_is_fitted_on_a_bounded_sample(fitted):
    frame, _, _, model = fitted
    seen = []
    features = model.pipeline_.named_steps["features"]

    class Spy:
        output_indices_ = features.output_indices_

        def transform(self, rows):
            seen.append(len(rows))
            return features.transform(rows)

    space = ModelSpace(Spy(), model.frame, components=4, sample_rows=50, chunk_rows=64).fit(frame, seed=3)
    assert seen == [50]
    space(frame)
    assert max(seen[1:]) <= 64 and sum(seen[1:]) == len(frame)


def test_xgboost_space_imputes_missing_values(fitted):
    frame, y, schema, _ = fitted
    numeric_and_categorical = Schema([c for c in schema.columns if c.role != "text"], CLASSES)
    model = LabelloopClassifier.from_params(TrainParams(n_estimators=5, max_depth=2), numeric_and_categorical)
    model.fit(frame.iloc[:80], y[:80])
    raw = model.transform(frame)
    assert np.isnan(raw).any()  # XGBoost reads missing values natively: the pipeline passes them through
    x = ModelSpace.of_model(model).fit(frame, seed=0)(frame)
    assert x.shape == (len(frame), 1) and np.isfinite(x).all()  # amount; the country codes are left out
    amount = frame["amount"].to_numpy()
    np.testing.assert_allclose(x[~np.isnan(amount), 0], amount[~np.isnan(amount)], rtol=1e-6)
    np.testing.assert_allclose(x[np.isnan(amount), 0], np.nanmean(amount), rtol=1e-5)  # missing: the sample's mean


def test_categorical_columns_alone_are_the_space(fitted):
    frame, y, schema, _ = fitted
    only = Schema([c for c in schema.columns if c.role == "categorical"], CLASSES)
    for params in (TrainParams(n_estimators=5, max_depth=2), FAST):  # ordinal codes (XGBoost), one-hot (the rest)
        model = LabelloopClassifier.from_params(params, only).fit(frame.iloc[:80], y[:80])
        x = ModelSpace.of_model(model).fit(frame, seed=0)(frame)
        assert x.shape == model.transform(frame).shape and np.isfinite(x).all()


def test_schema_space_needs_no_model(fitted):
    frame, _, schema, _ = fitted
    x = ModelSpace.of_schema(schema, TextParams(char_ngrams=None), components=6).fit(frame, seed=0)(frame)
    assert x.shape[0] == len(frame) and np.isfinite(x).all()


def test_raw_features_are_the_numeric_columns():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, np.nan]})
    np.testing.assert_array_equal(raw_features(["b", "a"])(frame), np.array([[3, 1], [np.nan, 2]], dtype=np.float32))
    assert raw_features()(np.ones((2, 3), dtype=np.float32)).dtype == np.float32
    assert raw_features()(np.ones((2, 3), dtype=np.int64)).dtype == np.float64


@pytest.mark.parametrize("strategy,selector", [("hybrid", None), ("margin", "cluster"), ("margin", "coreset"),
                                               ("information_density", "topk")])
def test_selectors_on_transformed_text_features_give_a_valid_batch(fitted, strategy, selector):
    frame, y, schema, model = fitted
    lab, pool = np.arange(60), np.arange(60, len(frame))
    probas = model.predict_proba(frame.iloc[pool])
    context = SelectionContext(labelled_rows=frame.iloc[lab], labelled_labels=y[lab], class_names=CLASSES, schema=schema,
                               feature_map=ModelSpace.of_model(model, components=8))
    chosen, utilities, seconds = select_indices(probas, 25, strategy=strategy, selector=selector, seed=1,
                                                rows=frame.iloc[pool], context=context, class_names=CLASSES)
    assert chosen.shape == (25,) and len(set(chosen.tolist())) == 25
    assert np.isfinite(utilities[chosen]).all() and "space_fit" in seconds
    again, _, _ = select_indices(probas, 25, strategy=strategy, selector=selector, seed=1, rows=frame.iloc[pool],
                                 context=context, class_names=CLASSES)
    np.testing.assert_array_equal(chosen, again)


def test_a_mixed_schema_without_a_feature_map_falls_back_to_the_schema_space(fitted):
    frame, _, schema, model = fitted
    probas = model.predict_proba(frame)
    context = SelectionContext(class_names=CLASSES, schema=schema, train_params=FAST)
    chosen, _, _ = select_indices(probas, 10, strategy="margin", selector="cluster", seed=0, rows=frame, context=context)
    assert len(set(chosen.tolist())) == 10
