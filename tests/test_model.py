import numpy as np
import pandas as pd
import pytest

from labelloop.config import TrainParams
from labelloop.model import LabelloopClassifier

CLASSES = ["a", "b", "c"]


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES * (n // 3))
    X = pd.DataFrame({"f1": rng.normal(size=n) + (y == "b") * 3, "f2": rng.normal(size=n) + (y == "c") * 3})
    return X, y


def test_probas_cover_the_whole_label_set_even_when_a_class_was_never_seen():
    X, y = _data()
    keep = y != "c"
    model = LabelloopClassifier.from_params(TrainParams(n_estimators=10), CLASSES).fit(X[keep], y[keep])
    probas = model.predict_proba(X)
    assert probas.shape == (len(X), 3)
    assert np.allclose(probas.sum(axis=1), 1.0)
    assert np.all(probas[:, 2] == 0.0)
    assert set(model.predict(X)) <= {"a", "b"}


def test_one_seen_class_predicts_it_with_certainty():
    X, _ = _data()
    model = LabelloopClassifier(class_names=CLASSES).fit(X[:5], ["b"] * 5)
    assert np.all(model.predict(X) == "b")


def test_a_label_outside_the_label_set_is_refused():
    X, y = _data()
    y = y.astype(object)
    y[0] = "zebra"
    with pytest.raises(ValueError, match="zebra"):
        LabelloopClassifier(class_names=CLASSES).fit(X, y)


def test_learns_a_separable_problem_and_is_reproducible():
    X, y = _data(300)
    first = LabelloopClassifier.from_params(TrainParams(n_estimators=30), CLASSES).fit(X, y)
    second = LabelloopClassifier.from_params(TrainParams(n_estimators=30), CLASSES).fit(X, y)
    assert (first.predict(X) == y).mean() > 0.9
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))


def test_columns_are_matched_by_name_not_position():
    X, y = _data()
    model = LabelloopClassifier(class_names=CLASSES, n_estimators=10).fit(X, y)
    assert np.array_equal(model.predict_proba(X), model.predict_proba(X[["f2", "f1"]]))
