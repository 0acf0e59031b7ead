"""The classifier labelloop trains: XGBoost over a fixed label set.

The wrapper keeps the full label set even when the labelled data lacks a class (cold start), so
every model of a workspace emits the same `proba_<class>` columns and can be compared on one holdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

if TYPE_CHECKING:
    from labelloop.config import TrainParams


class LabelloopClassifier(ClassifierMixin, BaseEstimator):
    """XGBoost multi-class model whose `classes_` is the workspace's whole label set."""

    def __init__(
        self,
        class_names: list[str] | None = None,
        n_estimators: int = 200,
        max_depth: int = 6,
        learning_rate: float = 0.1,
        subsample: float = 1.0,
        n_jobs: int | str = "auto",
        random_state: int = 0,
    ) -> None:
        self.class_names = class_names
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.n_jobs = n_jobs
        self.random_state = random_state

    @classmethod
    def from_params(cls, params: TrainParams, class_names: list[str], **overrides: object) -> LabelloopClassifier:
        values: dict[str, Any] = {
            "n_estimators": params.n_estimators,
            "max_depth": params.max_depth,
            "learning_rate": params.learning_rate,
            "subsample": params.subsample,
            "n_jobs": params.n_jobs,
            "random_state": params.random_state,
        }
        values.update(overrides)
        return cls(class_names=list(class_names), **values)

    def fit(self, X: pd.DataFrame | np.ndarray, y: pd.Series | np.ndarray,
            sample_weight: np.ndarray | None = None) -> LabelloopClassifier:
        from xgboost import XGBClassifier

        from labelloop.core.threads import resolve_n_jobs

        y = np.asarray(y).astype(str)
        classes = list(self.class_names) if self.class_names is not None else sorted(set(y))
        unknown = sorted(str(v) for v in set(y) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in the label set {classes}")
        self.classes_ = np.array(classes, dtype=object)
        present = sorted(set(y), key=classes.index)
        self.present_index_ = np.array([classes.index(c) for c in present], dtype=np.int64)
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.array(X.columns, dtype=object)
        self.n_features_in_ = np.asarray(X).shape[1]
        if len(present) == 1:
            # One class seen so far: XGBoost cannot fit; predict it with certainty.
            self.booster_ = None
            return self
        encode = {c: i for i, c in enumerate(present)}
        target = np.array([encode[v] for v in y])
        self.booster_ = XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            n_jobs=resolve_n_jobs(self.n_jobs),  # "auto" resolved where the fit runs
            random_state=self.random_state,
            tree_method="hist",
            eval_metric="mlogloss",
        )
        self.booster_.fit(np.asarray(X, dtype=np.float32), target, sample_weight=sample_weight)
        return self

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(X, pd.DataFrame) and hasattr(self, "feature_names_in_"):
            X = X[list(self.feature_names_in_)]
        X = np.asarray(X, dtype=np.float32)
        out = np.zeros((len(X), len(self.classes_)), dtype=np.float64)
        if self.booster_ is None:
            out[:, self.present_index_[0]] = 1.0
            return out
        out[:, self.present_index_] = self.booster_.predict_proba(X)
        return out

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def predict_in_batches(model: LabelloopClassifier, features: pd.DataFrame, batch_rows: int = 100_000) -> np.ndarray:
    """`model.predict_proba` over `features`, `batch_rows` rows at a time (bounded memory on a large pool)."""
    parts = [model.predict_proba(features.iloc[i:i + batch_rows]) for i in range(0, len(features), batch_rows)]
    return np.vstack(parts) if parts else np.empty((0, len(model.classes_)))
