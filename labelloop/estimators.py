"""The estimators `train.estimator` may name, and the strict check of `train.estimator_params`.

Apart from labelloop.model (which builds pipelines from a schema) so that configuration can validate
an estimator without importing the modelling stack.
"""

from __future__ import annotations

import importlib
from typing import Any

AUTO = "auto"
HGB_MAX_CATEGORIES = 250  # HistGradientBoosting's native categoricals need fewer codes than its 255 bins

# name → (class path, native missing values, native categoricals, accepts sparse input, wants scaled inputs)
ESTIMATORS: dict[str, tuple[str, bool, bool, bool, bool]] = {
    "xgboost": ("xgboost.XGBClassifier", True, True, True, False),
    "logistic_regression": ("sklearn.linear_model.LogisticRegression", False, False, True, True),
    "random_forest": ("sklearn.ensemble.RandomForestClassifier", False, False, True, False),
    "hist_gradient_boosting": ("sklearn.ensemble.HistGradientBoostingClassifier", True, True, False, False),
}
# Defaults labelloop sets for a named estimator (estimator_params override them).
ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"max_iter": 2000, "C": 10.0},
    "random_forest": {"n_estimators": 200},
    "hist_gradient_boosting": {},
}


class EstimatorError(ValueError):
    """train.estimator / train.estimator_params name something that cannot be built."""


def estimator_class(name: str) -> type:
    path = ESTIMATORS[name][0] if name in ESTIMATORS else name
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise EstimatorError(f"train.estimator {name!r} is unknown; allowed: {AUTO}, {', '.join(ESTIMATORS)}, or the dotted "
                             "path of a scikit-learn classifier class such as sklearn.svm.SVC")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise EstimatorError(f"train.estimator {name!r} cannot be imported ({error}); allowed: {', '.join(ESTIMATORS)} "
                             "or the dotted path of an installed scikit-learn classifier") from None
    return cls


def check_estimator(name: str, estimator_params: dict[str, Any]) -> None:
    """Refuse an estimator that is not a probabilistic classifier or a parameter it does not take."""
    if name in (AUTO, "xgboost") and not estimator_params:
        return  # the default: nothing to check, and no reason to import XGBoost and scikit-learn to say so
    from sklearn.base import is_classifier

    if name == AUTO:
        raise EstimatorError("train.estimator_params needs a named train.estimator (auto may resolve to different "
                             f"classes); allowed: {', '.join(ESTIMATORS)} or a dotted class path")
    cls = estimator_class(name)
    try:
        instance = cls()
    except TypeError as error:
        raise EstimatorError(f"train.estimator {name!r} is not a scikit-learn estimator class ({error})") from None
    if not is_classifier(instance):
        raise EstimatorError(f"train.estimator {name!r} is not a classifier; allowed: {', '.join(ESTIMATORS)} or a "
                             "scikit-learn classifier class")
    allowed = sorted(instance.get_params(deep=False))
    unknown = sorted(set(estimator_params) - set(allowed))
    if unknown:
        raise EstimatorError(f"train.estimator_params: {unknown} are not parameters of {name}; allowed: {', '.join(allowed)}")
    configured = cls(**{**ESTIMATOR_DEFAULTS.get(name, {}), **estimator_params})
    if hasattr(configured, "_parameter_constraints"):  # scikit-learn's own checks of each value
        try:
            configured._validate_params()
        except (ValueError, TypeError) as error:
            raise EstimatorError(f"train.estimator_params for {name}: {error}") from None
    if not hasattr(configured, "predict_proba"):
        raise EstimatorError(f"train.estimator {name!r} has no predict_proba with these parameters; acquisition needs "
                             "probabilities (e.g. sklearn.svm.SVC needs estimator_params {probability: true})")


def capabilities(name: str) -> tuple[bool, bool, bool, bool]:
    if name in ESTIMATORS:
        _, missing, categorical, sparse, scaled = ESTIMATORS[name]
        return missing, categorical, sparse, scaled
    return False, False, True, True  # an arbitrary class: impute, one-hot, scale


