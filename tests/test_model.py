import numpy as np
import pandas as pd
import pytest

from labelloop.config import ConfigError, TextParams, TrainParams, parse_params
from labelloop.model import LabelloopClassifier, resolve_estimator
from labelloop.schema import ColumnSpec, Schema

CLASSES = ["a", "b", "c"]
NUMERIC = Schema.numeric(["f1", "f2"], CLASSES)
MIXED = Schema([
    ColumnSpec("f1", "numeric", "float64", nullable=True),
    ColumnSpec("colour", "categorical", "string", nullable=True, categories=["blue", "green", "red"]),
    ColumnSpec("note", "text", "string", nullable=True),
    ColumnSpec("row_id", "id", "string"),
], CLASSES)
SMALL = {"n_estimators": 10}


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES * (n // 3))
    X = pd.DataFrame({"f1": rng.normal(size=n) + (y == "b") * 3, "f2": rng.normal(size=n) + (y == "c") * 3})
    return X, y


def _mixed(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES * (n // 3))
    colour = np.where(y == "a", "red", np.where(y == "b", "green", "blue")).astype(object)
    words = {"a": "fresh tasty apple", "b": "stale bread again", "c": "cold coffee cup"}
    frame = pd.DataFrame({
        "row_id": [f"id{i}" for i in range(n)],  # unique, and sorted by class: a leak if it were used
        "f1": rng.normal(size=n),
        "colour": colour,
        "note": [f"{words[c]} {rng.integers(100)}" for c in y],
    })
    frame.loc[::7, "f1"] = np.nan
    frame.loc[::11, "colour"] = None
    frame.loc[::13, "note"] = None
    return frame, y


def test_probas_cover_the_whole_label_set_even_when_a_class_was_never_seen():
    X, y = _data()
    keep = y != "c"
    model = LabelloopClassifier.from_params(TrainParams(**SMALL), NUMERIC).fit(X[keep], y[keep])
    probas = model.predict_proba(X)
    assert probas.shape == (len(X), 3)
    assert np.allclose(probas.sum(axis=1), 1.0)
    assert np.all(probas[:, 2] == 0.0)
    assert set(model.predict(X)) <= {"a", "b"}


def test_one_seen_class_predicts_it_with_certainty():
    X, _ = _data()
    model = LabelloopClassifier(NUMERIC).fit(X[:5], ["b"] * 5)
    assert np.all(model.predict(X) == "b")


def test_a_label_outside_the_label_set_is_refused():
    X, y = _data()
    y = y.astype(object)
    y[0] = "zebra"
    with pytest.raises(ValueError, match="zebra"):
        LabelloopClassifier(NUMERIC).fit(X, y)


def test_learns_a_separable_problem_and_is_reproducible():
    X, y = _data(300)
    first = LabelloopClassifier.from_params(TrainParams(n_estimators=30), NUMERIC).fit(X, y)
    second = LabelloopClassifier.from_params(TrainParams(n_estimators=30), NUMERIC).fit(X, y)
    assert (first.predict(X) == y).mean() > 0.9
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))


def test_columns_are_matched_by_name_not_position_and_a_matrix_is_accepted_for_numeric_schemas():
    X, y = _data()
    model = LabelloopClassifier(NUMERIC, TrainParams(**SMALL)).fit(X, y)
    assert np.array_equal(model.predict_proba(X), model.predict_proba(X[["f2", "f1"]]))
    assert np.array_equal(model.predict_proba(X), model.predict_proba(X.to_numpy()))


@pytest.mark.parametrize("estimator", ["xgboost", "logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_every_named_estimator_learns_from_numeric_categorical_text_and_missing_values(estimator):
    frame, y = _mixed()
    schema = Schema([c for c in MIXED.columns if c.role != "text"], CLASSES) if estimator == "hist_gradient_boosting" else MIXED
    params = TrainParams(estimator=estimator, **SMALL, text=TextParams(min_df=1, char_ngrams=None))
    model = LabelloopClassifier.from_params(params, schema).fit(frame, y)
    assert (model.predict(frame) == y).mean() > 0.85
    probas = model.predict_proba(frame)
    assert probas.shape == (len(frame), 3) and np.allclose(probas.sum(axis=1), 1.0)
    # The stored artefact is scikit-learn and XGBoost only: nothing of labelloop inside it.
    import pickle

    assert b"labelloop" not in pickle.dumps(model.pipeline_)


def test_the_id_column_is_never_a_feature():
    frame, y = _mixed()
    model = LabelloopClassifier(MIXED, TrainParams(**SMALL)).fit(frame, y)
    names = list(model.pipeline_.named_steps["features"].get_feature_names_out())
    assert not any("row_id" in n for n in names)


def test_unseen_categories_and_missing_values_at_predict_time_are_handled_not_crashed_on():
    frame, y = _mixed()
    model = LabelloopClassifier(MIXED, TrainParams(**SMALL)).fit(frame, y)
    odd = pd.DataFrame({"row_id": ["x"], "f1": [None], "colour": ["purple"], "note": [None]})
    probas = model.predict_proba(odd)
    assert probas.shape == (1, 3) and np.isfinite(probas).all()
    # A category given as a number reads as its text (3 and 3.0 are the same category).
    assert model.predict_proba(odd.assign(colour=[3])).shape == (1, 3)


def test_a_feature_matrix_is_refused_for_a_mixed_schema():
    frame, y = _mixed()
    model = LabelloopClassifier(MIXED, TrainParams(**SMALL)).fit(frame, y)
    with pytest.raises(TypeError, match="DataFrame"):
        model.predict_proba(np.zeros((1, 3)))


def test_auto_estimator_is_xgboost_for_tables_and_logistic_regression_for_text():
    assert resolve_estimator("auto", NUMERIC) == "xgboost"
    assert resolve_estimator("auto", MIXED) == "logistic_regression"
    assert resolve_estimator("random_forest", MIXED) == "random_forest"


def test_hist_gradient_boosting_refuses_text_with_a_clear_message():
    frame, y = _mixed()
    with pytest.raises(ValueError, match="hist_gradient_boosting.*text"):
        LabelloopClassifier(MIXED, TrainParams(estimator="hist_gradient_boosting")).fit(frame, y)


def test_any_importable_classifier_class_with_its_parameters():
    frame, y = _mixed()
    params = TrainParams(estimator="sklearn.neighbors.KNeighborsClassifier", estimator_params={"n_neighbors": 3},
                         text=TextParams(min_df=1, char_ngrams=None))
    model = LabelloopClassifier(MIXED, params).fit(frame, y)
    assert model.estimator_.n_neighbors == 3
    assert (model.predict(frame) == y).mean() > 0.8


@pytest.mark.parametrize(("train", "message"), [
    ({"estimator": "xgbost"}, "train.estimator 'xgbost'.*allowed: auto, xgboost, logistic_regression"),
    ({"estimator": "sklearn.linear_model.LinearRegression"}, "not a classifier"),
    ({"estimator": "sklearn.svm.SVC"}, "predict_proba.*probability: true"),
    ({"estimator": "logistic_regression", "estimator_params": {"C": -1}}, "estimator_params.*C"),
    ({"estimator": "random_forest", "estimator_params": {"depth": 3}}, "depth.*allowed:.*max_depth"),
    ({"estimator_params": {"C": 1}}, "needs a named train.estimator"),
    ({"text": {"word_ngrams": [2, 1]}}, "n-gram range"),
])
def test_bad_estimator_settings_name_the_key_and_what_is_allowed(train, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"train": train})


# -- does the fit depend on random_state? (gate.seed_twins auto) ----------------------------------------

@pytest.mark.parametrize(("params", "dependent"), [
    (TrainParams(), False),  # XGBoost at its defaults: no sampling, the seed changes nothing
    (TrainParams(subsample=0.8), True),
    (TrainParams(estimator="xgboost", estimator_params={"colsample_bytree": 0.8}), True),
    (TrainParams(estimator="xgboost", estimator_params={"subsample": 1.0, "colsample_bynode": 1.0}), False),
    (TrainParams(estimator="random_forest"), True),
    (TrainParams(estimator="logistic_regression"), False),  # lbfgs
    (TrainParams(estimator="logistic_regression", estimator_params={"solver": "saga"}), True),
    (TrainParams(estimator="sklearn.naive_bayes.GaussianNB"), False),  # no random_state at all
    (TrainParams(estimator="hist_gradient_boosting"), None),  # only a refit can tell (early stopping, by size)
])
def test_seed_dependence_is_read_from_the_settings(params, dependent):
    from labelloop.model import seed_dependent

    assert seed_dependent(params, NUMERIC) is dependent


@pytest.mark.parametrize(("params", "differ"), [(TrainParams(n_estimators=10), False),
                                                (TrainParams(n_estimators=10, subsample=0.7), True),
                                                (TrainParams(estimator="random_forest", estimator_params=SMALL), True)])
def test_the_detection_matches_what_two_seeds_really_fit(params, differ):
    from labelloop.model import seed_dependent, twin_seeds

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 2)), columns=["f1", "f2"])
    y = np.array(CLASSES)[(X["f1"] + rng.normal(scale=0.8, size=300) > 0).astype(int) + (X["f2"] > 1)]
    probas = [LabelloopClassifier(NUMERIC, params.model_copy(update={"random_state": seed})).fit(X, y).predict_proba(X)
              for seed in (0, *twin_seeds(0, 1))]
    assert (not np.array_equal(*probas)) == differ == seed_dependent(params, NUMERIC)


def test_twin_seeds_are_distinct_reproducible_and_not_the_neighbouring_seeds():
    from labelloop.model import twin_seeds

    seeds = twin_seeds(5, 3)
    assert seeds == twin_seeds(5, 3) and len(set(seeds)) == 3 and not {4, 5, 6, 7, 8} & set(seeds)
    assert twin_seeds(5, 2) == seeds[:2] and twin_seeds(6, 3) != seeds
