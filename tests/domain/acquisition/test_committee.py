"""Committee strategies and expected error reduction with any estimator and a mixed schema."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.config import TextParams, TrainParams
from labelloop.domain.acquisition.committee import committee_probas, train_committee
from labelloop.domain.acquisition.pool import SelectionContext, select_indices
from labelloop.domain.acquisition.strategies import expected_error_reduction
from labelloop.model import LabelloopClassifier
from labelloop.schema import Schema
from tests.domain.acquisition.test_space import CLASSES, mixed_frame

TEXT = TextParams(char_ngrams=None, min_df=1)
ESTIMATORS = {
    "logistic_regression": TrainParams(estimator="logistic_regression", text=TEXT),
    "random_forest": TrainParams(estimator="random_forest", estimator_params={"n_estimators": 10}, text=TEXT),
    "hist_gradient_boosting": TrainParams(estimator="hist_gradient_boosting", estimator_params={"max_iter": 10}),
    "xgboost": TrainParams(estimator="xgboost", n_estimators=5, max_depth=2, text=TEXT),
}


def problem(estimator: str):
    frame, y, schema = mixed_frame(n=160)
    if estimator == "hist_gradient_boosting":  # it takes no sparse input: the same table without its text column
        schema = Schema([c for c in schema.columns if c.role != "text"], CLASSES)
    return frame, y, schema


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_committee_members_are_the_configured_pipeline(estimator):
    frame, y, schema = problem(estimator)
    members = train_committee(frame.iloc[:50], y[:50], schema, size=3, seed=0, train_params=ESTIMATORS[estimator])
    assert len(members) == 3
    assert all(m.params.estimator == estimator and m.schema is schema for m in members)
    probas = committee_probas(members, frame.iloc[50:], batch_rows=40)
    assert probas.shape == (3, len(frame) - 50, len(CLASSES))
    np.testing.assert_allclose(probas.sum(axis=2), 1.0, atol=1e-6)
    # Bootstraps differ, so the members disagree somewhere.
    assert np.abs(probas[0] - probas[1]).max() > 0


@pytest.mark.parametrize("estimator", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
@pytest.mark.parametrize("strategy", ["bald", "vote_entropy", "expected_error_reduction"])
def test_committee_and_eer_select_on_a_mixed_table_with_a_non_xgboost_estimator(estimator, strategy):
    frame, y, schema = problem(estimator)
    params = ESTIMATORS[estimator]
    lab, pool = np.arange(40), np.arange(40, len(frame))
    model = LabelloopClassifier.from_params(params, schema).fit(frame.iloc[lab], y[lab])
    probas = model.predict_proba(frame.iloc[pool])
    context = SelectionContext(
        labelled_rows=frame.iloc[lab], labelled_labels=y[lab], class_names=CLASSES, schema=schema, train_params=params,
        committee_size=3, strategy_params={"candidate_cap": 4, "eval_size": 30} if strategy == "expected_error_reduction" else {},
    )
    chosen, utilities, seconds = select_indices(probas, 8, strategy=strategy, seed=0, rows=frame.iloc[pool], context=context,
                                                class_names=CLASSES)
    assert len(set(chosen.tolist())) == 8 and np.isfinite(utilities[chosen]).all()
    if strategy != "expected_error_reduction":
        assert {"committee_train", "committee_predict"} <= set(seconds)


def test_eer_refits_the_configured_estimator(monkeypatch):
    frame, y, schema = problem("logistic_regression")
    fitted = []
    original = LabelloopClassifier.fit

    def spy(self, X, labels, sample_weight=None):
        fitted.append((self.params.estimator, len(X)))
        return original(self, X, labels, sample_weight)

    monkeypatch.setattr(LabelloopClassifier, "fit", spy)
    probas = np.full((20, len(CLASSES)), 1 / 3)
    probas[:, 0] += np.linspace(0, 0.3, 20)
    probas /= probas.sum(axis=1, keepdims=True)
    u = expected_error_reduction(probas, rng=np.random.default_rng(0), rows=frame.iloc[40:60], labelled_rows=frame.iloc[:40],
                                 labelled_labels=y[:40], class_names=CLASSES, schema=schema,
                                 train_params=ESTIMATORS["logistic_regression"], candidate_cap=3, top_classes=2)
    assert np.isfinite(u).all()
    assert fitted == [("logistic_regression", 41)] * 6  # 3 candidates × 2 labels, each on the labelled rows + itself
    with pytest.raises(ValueError, match="needs rows, labelled_rows"):
        expected_error_reduction(probas, rng=np.random.default_rng(0), class_names=CLASSES)
