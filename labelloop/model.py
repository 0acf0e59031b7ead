"""The classifier labelloop trains: a scikit-learn pipeline built from the workspace schema.

What is stored (in MLflow, by `dvc repro`) is the pipeline alone — a plain scikit-learn `Pipeline` of
scikit-learn and XGBoost objects, so anyone loads it without labelloop:

    features    ColumnTransformer from the schema's roles
                  numeric      passthrough (XGBoost, HistGradientBoosting: missing values are native) or
                               median-imputed with a missing indicator (and scaled, for linear models)
                  categorical  ordinal codes (missing: a category of its own; unseen → NaN), native categoricals (XGBoost,
                               HistGradientBoosting) or one-hot with unseen values ignored (the rest)
                  text         TF-IDF over word and character n-grams, or hashing, per text column
    classifier  the estimator; XGBoost sits in a one-member soft VotingClassifier, whose label encoding
                gives string labels in and out with nothing but scikit-learn

`LabelloopClassifier` is labelloop's side of it: it fits that pipeline and keeps the workspace's whole
label set even when the labelled data lacks a class (cold start), so every model of a workspace emits
the same `proba_<class>` columns and can be compared on one holdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labelloop.estimators import AUTO, ESTIMATOR_DEFAULTS, HGB_MAX_CATEGORIES, EstimatorError, capabilities, estimator_class
from labelloop.schema import Schema, conform

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from labelloop.config import TextParams, TrainParams

def resolve_estimator(name: str, schema: Schema) -> str:
    """`auto`: XGBoost for tables, logistic regression once there is text (see TrainParams.estimator)."""
    if name != AUTO:
        return name
    return "logistic_regression" if schema.text_columns else "xgboost"


# XGBoost's row and column sampling: the only places its fit draws random numbers.
XGBOOST_SAMPLING = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
SEED_SHUFFLING_SOLVERS = ("sag", "saga", "liblinear")  # logistic regression solvers that use random_state


def seed_dependent(params: TrainParams, schema: Schema) -> bool | None:
    """Does the fit depend on `random_state` (two fits on the same rows with other seeds can differ)?

    True or False where the settings say; None where only a refit can tell (the train stage then fits one seed
    twin and compares its predictions):
      xgboost              only through sampling: subsample or a colsample_* below 1 (at the defaults, 1.0, any
                           seed gives the same model)
      logistic_regression  only the sag, saga and liblinear solvers (lbfgs, the default, is deterministic)
      random_forest        always (bootstrap rows, random feature subsets, the feature order of each split)
      no random_state      never
      anything else        None (hist_gradient_boosting, e.g., draws only for early stopping, which turns on
                           by itself above 10,000 rows, or for feature subsampling)"""
    name = resolve_estimator(params.estimator, schema)
    settings = {**ESTIMATOR_DEFAULTS.get(name, {}), **params.estimator_params}
    if name == "xgboost":
        sampled = [settings.get(key, params.subsample if key == "subsample" else 1.0) for key in XGBOOST_SAMPLING]
        return any(value is not None and float(value) < 1 for value in sampled)
    import inspect

    if "random_state" not in inspect.signature(estimator_class(name)).parameters:  # scikit-learn's explicit init params
        return False
    if name == "logistic_regression":
        return settings.get("solver", "lbfgs") in SEED_SHUFFLING_SOLVERS
    if name == "random_forest":
        return True
    return None


def twin_seeds(random_state: int, count: int) -> list[int]:
    """The random_states of a model's `count` seed twins: drawn from (random_state, i), so they never collide
    with the neighbouring seeds a user tries by hand."""
    return [int(np.random.SeedSequence([random_state, i]).generate_state(1)[0] % 2**31) for i in range(1, count + 1)]


def _text_vectorizer(text: TextParams):
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer, TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

    analyzers: list[tuple[str, str, tuple[int, int]]] = [("word", "word", tuple(text.word_ngrams))]  # type: ignore[list-item]
    if text.char_ngrams is not None:
        analyzers.append(("char", "char_wb", tuple(text.char_ngrams)))  # type: ignore[arg-type]
    parts = []
    for name, analyzer, ngrams in analyzers:
        if text.vectorizer == "tfidf":
            parts.append((name, TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True,
                                                max_features=text.max_features, min_df=text.min_df, dtype=np.float32)))
        else:
            parts.append((name, Pipeline([
                ("hash", HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, n_features=text.max_features,
                                           alternate_sign=False, norm=None, dtype=np.float32)),
                ("idf", TfidfTransformer(sublinear_tf=True)),
            ])))
    return FeatureUnion(parts)


def _fill_missing(value: str):
    """A string column's missing values -> `value`, whether None (labelloop's canonical form, an object column
    from JSON) or NaN (pandas' str dtype, what a client's frame through MLflow holds), so both encode the same.
    Two imputers: one SimpleImputer matches either None or NaN, never both (and pandas.NA, which would match
    both, cannot be stored with skops). keep_empty_features keeps a column all-missing in a small labelled set."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("nan", SimpleImputer(missing_values=np.nan, strategy="constant", fill_value=value, keep_empty_features=True)),
        ("none", SimpleImputer(missing_values=None, strategy="constant", fill_value=value, keep_empty_features=True)),
    ])


def build_features(schema: Schema, estimator: str, text: TextParams, categorical_native: list[str] | None = None):
    """The ColumnTransformer for `schema` as `estimator` needs it (unfitted). Output column order:
    numeric, then categorical, then each text column's n-grams."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

    native_missing, native_categorical, _, scaled = capabilities(estimator)
    transformers: list[tuple[str, Any, list[str]]] = []
    if schema.numeric_columns:
        if native_missing:
            transformers.append(("numeric", "passthrough", schema.numeric_columns))
        else:
            steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", add_indicator=True,
                                                                     keep_empty_features=True))]
            if scaled:
                steps.append(("scale", StandardScaler()))
            transformers.append(("numeric", Pipeline(steps), schema.numeric_columns))
    native = categorical_native if categorical_native is not None else (schema.categorical_columns if native_categorical else [])
    others = [c for c in schema.categorical_columns if c not in native]
    if native:
        transformers.append(("categorical", Pipeline([
            ("fill", _fill_missing("(missing)")),
            ("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                                      dtype=np.float64)),
        ]), native))
    if others:
        transformers.append(("onehot", Pipeline([
            ("fill", _fill_missing("(missing)")),
            ("encode", OneHotEncoder(handle_unknown="ignore", min_frequency=2, dtype=np.float32)),
        ]), others))
    for i, column in enumerate(schema.text_columns):
        transformers.append((f"text_{i}", Pipeline([
            ("fill", _fill_missing("")),
            ("flatten", FunctionTransformer(np.ravel, feature_names_out="one-to-one")),  # a vectorizer reads one string per row
            ("vectorize", _text_vectorizer(text)),
        ]), [column]))
    # Text makes the output sparse; without it everything stays dense (sparse_threshold 0).
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=1.0 if schema.text_columns else 0.0,
                             verbose_feature_names_out=True)


def build_estimator(name: str, params: TrainParams, feature_types: list[str] | None, categorical_index: list[int],
                    **overrides: Any):
    """The unfitted final estimator; `feature_types`/`categorical_index` mark the native categorical columns."""
    from labelloop.core.threads import resolve_n_jobs

    cls = estimator_class(name)
    accepted = set(cls().get_params(deep=False))
    settings: dict[str, Any] = dict(ESTIMATOR_DEFAULTS.get(name, {}))
    if name == "xgboost":
        settings.update(n_estimators=params.n_estimators, max_depth=params.max_depth, learning_rate=params.learning_rate,
                        subsample=params.subsample, tree_method="hist", eval_metric="mlogloss",
                        enable_categorical=bool(categorical_index), feature_types=feature_types if categorical_index else None)
    if name == "hist_gradient_boosting":
        settings["categorical_features"] = categorical_index or None
    if "random_state" in accepted:
        settings["random_state"] = params.random_state
    if "n_jobs" in accepted and name != "logistic_regression":  # deprecated there (no effect since 1.8)
        settings["n_jobs"] = resolve_n_jobs(params.n_jobs)  # "auto" resolved where the fit runs
    settings.update(params.estimator_params)
    settings.update({k: v for k, v in overrides.items() if k in accepted})
    estimator = cls(**settings)
    if name == "xgboost":
        from sklearn.ensemble import VotingClassifier

        # XGBoost wants integer classes; VotingClassifier label-encodes (strings in, strings out) with sklearn alone.
        return VotingClassifier([("xgboost", estimator)], voting="soft")
    return estimator


def fit_pipeline(frame: pd.DataFrame, y: np.ndarray, schema: Schema, params: TrainParams,
                 sample_weight: np.ndarray | None = None, **overrides: Any) -> Pipeline:
    """Fit the features on `frame`, then the estimator on them; returns the fitted pipeline."""
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    name = resolve_estimator(params.estimator, schema)
    _, native_categorical, accepts_sparse, _ = capabilities(name)
    if schema.text_columns and not accepts_sparse:
        raise EstimatorError(f"train.estimator {name!r} does not accept the sparse features text columns make "
                             f"({', '.join(schema.text_columns)}); use xgboost, logistic_regression or random_forest")
    native: list[str] = []
    if native_categorical:
        limit = HGB_MAX_CATEGORIES if name == "hist_gradient_boosting" else None
        native = [c for c in schema.categorical_columns
                  if limit is None or len(schema.column(c).categories or range(limit)) < limit]
    features = build_features(schema, name, params.text, categorical_native=native)
    matrix = features.fit_transform(frame)
    n_numeric = len(schema.numeric_columns)
    categorical_index = list(range(n_numeric, n_numeric + len(native))) if native_categorical else []
    feature_types = ["c" if i in set(categorical_index) else "q" for i in range(matrix.shape[1])]
    if len(set(y)) < 2:
        # One class seen so far: nothing to learn; predict it with certainty.
        classifier = DummyClassifier(strategy="prior").fit(matrix, y)
    else:
        classifier = build_estimator(name, params, feature_types, categorical_index, **overrides)
        kwargs = {"sample_weight": sample_weight} if sample_weight is not None else {}
        classifier.fit(matrix, y, **kwargs)
    # Assembled from the fitted parts: the estimator needs the feature count (XGBoost's feature types) first.
    return Pipeline([("features", features), ("classifier", classifier)])


class LabelloopClassifier:
    """A fitted schema pipeline plus the workspace's whole class list (probabilities aligned to it)."""

    def __init__(self, schema: Schema, params: TrainParams | None = None, **overrides: Any) -> None:
        from labelloop.config import TrainParams

        self.schema = schema
        self.params = params or TrainParams()
        self.overrides = overrides
        self.classes_ = np.array(schema.class_names, dtype=object)
        self.pipeline_: Pipeline | None = None
        self.present_index_ = np.arange(0)

    @classmethod
    def from_params(cls, params: TrainParams, schema: Schema, **overrides: Any) -> LabelloopClassifier:
        return cls(schema, params, **overrides)

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, schema: Schema, params: TrainParams | None = None) -> LabelloopClassifier:
        model = cls(schema, params)
        model._attach(pipeline)
        return model

    def clone(self, **overrides: Any) -> LabelloopClassifier:
        """An unfitted copy with the same settings (committee members vary `random_state`)."""
        return LabelloopClassifier(self.schema, self.params, **{**self.overrides, **overrides})

    def _attach(self, pipeline: Pipeline) -> None:
        known = list(self.schema.class_names)
        present = [str(c) for c in pipeline.classes_]
        unknown = sorted(set(present) - set(known))
        if unknown:
            raise ValueError(f"the model predicts classes {unknown[:5]} that are not in the label set {known}")
        self.pipeline_ = pipeline
        self.present_index_ = np.array([known.index(c) for c in present], dtype=np.int64)

    def frame(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """`X` as the pipeline's input: the feature columns in canonical types."""
        if not isinstance(X, pd.DataFrame):
            if not self.schema.all_numeric:
                raise TypeError("a feature matrix is only accepted for an all-numeric schema; pass a DataFrame")
            return pd.DataFrame(np.asarray(X, dtype=np.float64), columns=self.schema.feature_columns)
        missing = [c for c in self.schema.feature_columns if c not in X.columns]
        if missing:
            raise ValueError(f"feature columns {missing[:10]} are missing from the input")
        if self.schema.all_numeric:
            return X[self.schema.feature_columns].astype("float64")
        return conform(X, self.schema)

    def fit(self, X: pd.DataFrame | np.ndarray, y: pd.Series | np.ndarray,
            sample_weight: np.ndarray | None = None) -> LabelloopClassifier:
        labels = np.asarray(y).astype(str).astype(object)
        unknown = sorted(set(labels) - set(self.schema.class_names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in the label set {self.schema.class_names}")
        self._attach(fit_pipeline(self.frame(X), labels, self.schema, self.params, sample_weight, **self.overrides))
        return self

    def _fitted(self) -> Pipeline:
        if self.pipeline_ is None:
            raise RuntimeError("the model is not fitted")
        return self.pipeline_

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        frame = self.frame(X)
        out = np.zeros((len(frame), len(self.classes_)), dtype=np.float64)
        if len(frame):
            out[:, self.present_index_] = self._fitted().predict_proba(frame)
        return out

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def transform(self, X: pd.DataFrame | np.ndarray):
        """The model's own feature space (the fitted ColumnTransformer's output; sparse when text is present)."""
        return self._fitted().named_steps["features"].transform(self.frame(X))

    @property
    def estimator_(self):
        """The fitted final estimator (XGBoost unwrapped from its label-encoding VotingClassifier)."""
        classifier = self._fitted().named_steps["classifier"]
        return classifier.estimators_[0] if type(classifier).__name__ == "VotingClassifier" else classifier

    def set_n_jobs(self, n_jobs: int) -> None:
        """Thread count for predictions (serving uses one thread for small requests)."""
        estimator = self.estimator_
        if "n_jobs" in estimator.get_params(deep=False):
            estimator.set_params(n_jobs=n_jobs)


def predict_in_batches(model: LabelloopClassifier, features: pd.DataFrame, batch_rows: int = 100_000) -> np.ndarray:
    """`model.predict_proba` over `features`, `batch_rows` rows at a time (bounded memory on a large pool)."""
    parts = [model.predict_proba(features.iloc[i:i + batch_rows]) for i in range(0, len(features), batch_rows)]
    return np.vstack(parts) if parts else np.empty((0, len(model.classes_)))
