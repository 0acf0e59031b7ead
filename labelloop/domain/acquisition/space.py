"""Selection's feature space: the rows the diversity selectors and density measure distances between.

Selectors (cluster, coreset, hybrid) and information density need a dense float matrix. What they get:

- all-numeric schema: the raw feature columns (`raw_features`), as before — for XGBoost and
  HistGradientBoosting the pipeline passes numeric columns through unchanged, and the selectors
  standardize every column themselves, so the model's features would be the same matrix at the cost of a
  model call; raw columns also exist before the first model does.
- any other schema: the model's own feature space (`ModelSpace`): the fitted pipeline's ColumnTransformer
  output — numeric columns as the model reads them (imputed / scaled as the estimator needs) and each
  text column's n-grams, those (sparse, tens of thousands of columns) reduced with TruncatedSVD to
  `components` dimensions. The SVD is fitted once per selection on a bounded uniform sample of the pool
  (`fit`), then applied chunk by chunk, so memory is bounded by the chunk, not by the pool.
  Categorical columns (ordinal codes or one-hot columns) are left out of the distances when numeric or
  text columns remain: the selectors standardize every column, so a code column spreads arbitrary
  category numbers over a unit scale and a one-hot column of a category of share p puts its rows
  1/√p apart from the rest — k-means and k-center then chase category identity. On churn (4 categorical
  and 15 numeric columns, XGBoost) the hybrid needed 550 labels to target without them, 750 with the codes
  and 750 with a linear model's encoding (one-hot columns), 2 repeats each (docs/benchmarks.md). A table
  of categorical columns alone keeps them.

A feature map is any callable `rows -> (n, d) float32` (rows: a DataFrame with the model's input columns,
or a float matrix for an all-numeric schema). An object with a `fit(sample, seed)` method returning such a
callable is fitted by the engine first (pool.py). The domain receives these objects, never a model's origin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from labelloop.config import TextParams
    from labelloop.model import LabelloopClassifier
    from labelloop.schema import Schema

FeatureMap = Callable[[Any], np.ndarray]

SAMPLE_ROWS = 5_000  # pool rows the SVD (and an unfitted transformer) is fitted on, at most
CHUNK_ROWS = 20_000  # rows transformed at a time: the sparse n-gram matrix of a chunk is the temporary
# Names labelloop.model.build_features gives its transformers: text_<i> per text column; categorical (ordinal
# codes, native categoricals) and onehot for categorical columns.
TEXT_BLOCK_PREFIX = "text_"
CATEGORICAL_BLOCKS = ("categorical", "onehot")


@runtime_checkable
class FittableFeatureMap(Protocol):
    def fit(self, sample: pd.DataFrame | np.ndarray, seed: int) -> FeatureMap: ...


def raw_features(columns: list[str] | None = None) -> FeatureMap:
    """The numeric `columns` (default: all of a frame's) as float32, a float matrix as it is: the all-numeric space."""

    def features(rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        if not isinstance(rows, pd.DataFrame):  # a float matrix is already the space (selectors cast to float32)
            rows = np.asarray(rows)
            return rows if rows.dtype.kind == "f" else rows.astype(np.float64)
        if columns is None:
            return rows.to_numpy(dtype=np.float32)
        missing = [c for c in columns if c not in rows.columns]
        if missing:
            raise ValueError(f"feature columns {missing[:5]} are not in the pool")
        return rows[columns].to_numpy(dtype=np.float32)

    return features


def take(rows: pd.DataFrame | np.ndarray, index: np.ndarray) -> pd.DataFrame | np.ndarray:
    """Rows `index` of a frame (positional) or a matrix."""
    return rows.iloc[index] if isinstance(rows, pd.DataFrame) else np.asarray(rows)[index]


def stack(first: pd.DataFrame | np.ndarray, second: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
    """`first` then `second` (two frames with the same columns, or two matrices)."""
    if isinstance(first, pd.DataFrame):
        return pd.concat([first, second], ignore_index=True)
    return np.vstack([np.asarray(first), np.asarray(second)])


class ModelSpace:
    """A model's feature space, dense and bounded in width: `fit(sample, seed)` returns the feature map.

    `features`: a scikit-learn ColumnTransformer (the pipeline's "features" step), fitted unless
    `fitted=False` (then `fit` fits it on the sample first: the fallback before any model exists);
    `frame`: rows → the transformer's input (the model's canonical types). Output columns of the
    transformers named text_<i> are reduced together by TruncatedSVD; the others are kept, with missing
    values replaced by their mean on the sample.
    """

    def __init__(self, features: Any, frame: Callable[[Any], pd.DataFrame], *, components: int = 64, fitted: bool = True,
                 sample_rows: int = SAMPLE_ROWS, chunk_rows: int = CHUNK_ROWS) -> None:
        if components < 1:
            raise ValueError(f"components must be positive, got {components}")
        self.features = features
        self.frame = frame
        self.components = components
        self.fitted = fitted
        self.sample_rows = sample_rows
        self.chunk_rows = chunk_rows

    @classmethod
    def of_model(cls, model: LabelloopClassifier, components: int = 64, **kwargs: Any) -> ModelSpace:
        """The space of a fitted LabelloopClassifier (its pipeline's "features" step)."""
        pipeline = model.pipeline_
        if pipeline is None:
            raise ValueError("the model is not fitted: its feature space does not exist yet")
        return cls(pipeline.named_steps["features"], model.frame, components=components, **kwargs)

    @classmethod
    def of_schema(cls, schema: Schema, text: TextParams | None = None, components: int = 64, **kwargs: Any) -> ModelSpace:
        """A space built from the schema alone, fitted on the pool sample (no model yet): imputed and scaled
        numeric columns, one-hot categoricals, TF-IDF text — what a linear model's pipeline would see."""
        from labelloop.config import TextParams
        from labelloop.model import build_features
        from labelloop.schema import conform

        transformer = build_features(schema, "logistic_regression", text or TextParams())
        return cls(transformer, lambda rows: conform(rows, schema), components=components, fitted=False, **kwargs)

    def fit(self, sample: pd.DataFrame | np.ndarray, seed: int) -> FittedSpace:
        """Fit on at most `sample_rows` rows of `sample` (a uniform draw, seeded)."""
        n = len(sample)
        whole = sample
        if n > self.sample_rows:
            sample = take(sample, np.sort(np.random.default_rng(seed).choice(n, self.sample_rows, replace=False)))
        frame = self.frame(sample)
        features = self.features
        if not self.fitted:
            from sklearn.base import clone

            features = clone(features).fit(frame)
        matrix = features.transform(frame)
        text, categorical = _blocks(features)
        dense = np.setdiff1d(np.arange(matrix.shape[1]), text)
        if len(text) or len(dense) > len(categorical):  # other columns remain: categories add no geometry
            dense = np.setdiff1d(dense, categorical)
        means = np.zeros(len(dense), dtype=np.float32)
        if len(dense):
            block = _dense(matrix, dense)
            with np.errstate(invalid="ignore"):
                counts = np.isfinite(block).sum(axis=0)
                sums = np.where(np.isfinite(block), block, 0.0).sum(axis=0, dtype=np.float64)
            means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
        svd = None
        if len(text) > self.components:  # narrower text blocks (a tiny early vocabulary) are kept as they are
            svd = _fit_svd(_sparse(matrix, text), self.components, seed)
            if svd is None:  # a one-row sample: nothing to reduce with; the text adds no geometry
                text = np.empty(0, dtype=np.int64)
        fitted = FittedSpace(features, self.frame, dense, means, text, svd, self.chunk_rows)
        if sample is whole:  # the sample is every row: its transform is at hand, keep its output for `fitted(whole)`
            fitted.remember(whole, fitted.reduce(matrix))
        return fitted


class FittedSpace:
    """rows → [kept dense columns (mean-imputed), SVD of the text columns], float32, chunk by chunk."""

    def __init__(self, features: Any, frame: Callable[[Any], pd.DataFrame], dense: np.ndarray, means: np.ndarray,
                 text: np.ndarray, svd: Any, chunk_rows: int) -> None:
        self.features, self.frame, self.dense, self.means = features, frame, dense, means
        self.text, self.svd, self.chunk_rows = text, svd, chunk_rows
        self._known: tuple[Any, np.ndarray] | None = None

    @property
    def width(self) -> int:
        return len(self.dense) + (self.svd.n_components if self.svd is not None else len(self.text))

    def remember(self, rows: Any, output: np.ndarray) -> None:
        """`output` is this map of `rows` (the very object): returned without transforming them again."""
        self._known = (rows, output)

    def reduce(self, matrix: Any) -> np.ndarray:
        """The transformer's output for some rows → their selection-space rows."""
        out = np.empty((matrix.shape[0], self.width), dtype=np.float32)
        if len(self.dense):
            block = _dense(matrix, self.dense)
            missing = ~np.isfinite(block)
            if missing.any():
                block = np.where(missing, self.means[None, :], block)
            out[:, : len(self.dense)] = block
        if len(self.text):
            text = _sparse(matrix, self.text)
            out[:, len(self.dense):] = self.svd.transform(text) if self.svd is not None else text.toarray()
        return out

    def at(self, rows: pd.DataFrame | np.ndarray, index: np.ndarray) -> np.ndarray:
        """This map of rows `index` of `rows` (from the remembered output when `rows` is the fitted sample)."""
        if self._known is not None and self._known[0] is rows:
            return self._known[1][index]
        return self(take(rows, index))

    def __call__(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self._known is not None and self._known[0] is rows:
            return self._known[1]
        n = len(rows)
        out = np.empty((n, self.width), dtype=np.float32)
        for start in range(0, n, self.chunk_rows):
            chunk = take(rows, np.arange(start, min(start + self.chunk_rows, n)))
            out[start : start + len(chunk)] = self.reduce(self.features.transform(self.frame(chunk)))
        return out


def _blocks(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Output columns of the text transformers and of the categorical ones (by their names); none when the
    transformer does not say (not a ColumnTransformer)."""
    indices = getattr(features, "output_indices_", None) or {}

    def columns(names: list[str]) -> np.ndarray:
        parts = [np.arange(indices[n].start, indices[n].stop) for n in names]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    return (columns([n for n in indices if n.startswith(TEXT_BLOCK_PREFIX)]),
            columns([n for n in indices if n in CATEGORICAL_BLOCKS]))


def _dense(matrix: Any, columns: np.ndarray) -> np.ndarray:
    block = matrix[:, columns]
    if hasattr(block, "toarray"):
        block = block.toarray()
    return np.asarray(block, dtype=np.float32)


def _sparse(matrix: Any, columns: np.ndarray):
    from scipy import sparse

    source = sparse.csr_matrix(matrix) if sparse.issparse(matrix) else sparse.csr_matrix(np.asarray(matrix)[:, columns])
    block = (source[:, columns] if sparse.issparse(matrix) else source).astype(np.float32)
    if block.nnz and not np.isfinite(block.data).all():
        block.data = np.where(np.isfinite(block.data), block.data, 0.0).astype(np.float32)
    return block


def _fit_svd(matrix: Any, components: int, seed: int):
    """TruncatedSVD to min(components, columns − 1, rows − 1) dimensions; None when too narrow to reduce."""
    from sklearn.decomposition import TruncatedSVD

    k = min(components, matrix.shape[1] - 1, matrix.shape[0] - 1)
    if k < 1:
        return None
    return TruncatedSVD(n_components=k, algorithm="randomized", n_iter=4, random_state=seed).fit(matrix)


class LazyFeatures:
    """The selection-space rows of `rows`, computed only for the rows a selector indexes.

    The diversity selectors look at the top M = top_m_factor × batch candidates by utility (and the
    hybrid's exploration sample), not at every candidate they are given: mapping only those rows
    spares the text transform of the rest (e.g. the uniform sample and per-group rows the streamed
    scan keeps for the quota and exploration shares).
    """

    def __init__(self, rows: pd.DataFrame | np.ndarray, space: FittedSpace) -> None:
        self.rows, self.space = rows, space
        self.shape = (len(rows), space.width)
        self.ndim = 2
        self.mapped = 0  # rows mapped so far (tests, benchmarks)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = np.arange(self.shape[0])[index] if not isinstance(index, np.ndarray) else index
        if index.dtype == bool:
            index = np.flatnonzero(index)
        self.mapped += len(index)
        out = self.space.at(self.rows, np.asarray(index, dtype=np.int64))
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def lazily(rows: pd.DataFrame | np.ndarray, space: FeatureMap) -> LazyFeatures | np.ndarray:
    """`space(rows)`, deferred to the rows used when the space says how wide it is (a FittedSpace)."""
    if isinstance(space, FittedSpace):
        return LazyFeatures(rows, space)
    return space(rows)
