"""Scoring a candidate pool (a DataFrame or a parquet file in the prediction-log format) into a batch.

Per-row (chunkable) strategies stream the file in chunks and keep only a bounded candidate set: the
best `keep_factor × batch` rows by utility, a uniform random sample of the same size (for
exploration), and the best `batch` rows of each group (for per-class / per-segment quotas). Memory is
bounded by the chunk plus that set, not by the pool. Strategies whose utilities depend on the whole
pool (information density, expected error reduction) load the needed columns at once.

Committee strategies need a labelled set: pass `context=SelectionContext(...)`; the committee is
trained once and applied chunk by chunk (batched inference on all cores).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelloop.domain.acquisition.registry import StrategySpec, choose, get_selector, get_strategy, resolve_selector, score
from labelloop.domain.acquisition.selectors import HYBRID, BatchShrunkWarning
from labelloop.domain.acquisition.space import (
    SAMPLE_ROWS,
    FeatureMap,
    FittableFeatureMap,
    LazyFeatures,
    ModelSpace,
    lazily,
    raw_features,
)

if TYPE_CHECKING:
    from labelloop.config import HybridParams, TrainParams
    from labelloop.schema import Schema

PROBA_PREFIX = "proba_"

# Prediction-log columns that are never model features.
NON_FEATURE_COLUMNS = {"prediction_id", "ts", "model_version", "predicted", "confidence", "date", "label", "item_id"}


def proba_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c.startswith(PROBA_PREFIX)]


def class_names_from_columns(columns: list[str]) -> list[str]:
    return [c[len(PROBA_PREFIX):] for c in proba_columns(columns)]


def default_feature_columns(
    columns: list[str], extra_excluded: tuple[str, ...] = (), numeric: set[str] | None = None
) -> list[str]:
    """Feature columns of a prediction log: everything but ids, probas and bookkeeping (numeric only if told which are)."""
    excluded = set(proba_columns(columns)) | NON_FEATURE_COLUMNS | set(extra_excluded)
    return [c for c in columns if c not in excluded and not c.startswith("_") and (numeric is None or c in numeric)]


def _numeric_frame_columns(frame: pd.DataFrame) -> set[str]:
    return {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}


def _numeric_schema_columns(schema) -> set[str]:
    import pyarrow as pa

    return {f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}


@dataclass
class SelectionContext:
    """What a selection may need beyond the pool itself (all optional).

    - labelled_rows / labelled_labels: the labelled set as the model reads it (committee strategies,
      expected error reduction, coreset's initial centres): a frame with the schema's feature columns, or
      a float matrix when there is no schema (all-numeric). Labels are class names.
    - class_names: the workspace's label set (default: the pool's proba_<class> columns).
    - schema: the workspace schema (labelloop.schema.Schema): which pool columns the model reads and their
      roles. None: the pool's numeric columns, read as a float matrix (prediction logs of a numeric model).
    - feature_map: the selection space (space.py): a callable rows → dense float32 matrix, or an object
      whose `fit(sample, seed)` returns one (fitted once per selection on a bounded sample of the pool),
      e.g. `ModelSpace.of_model(champion)`. None: the raw numeric columns for an all-numeric schema, else
      `ModelSpace.of_schema` (the schema's features fitted on the pool sample).
    - train_params: `train`'s settings (estimator and its parameters) for committee members and expected
      error reduction; committee_size members.
    - calibration: None, "temperature" or "isotonic", fitted on validation_probas / validation_labels
      (class names) before scoring; the ECE before and after is reported in Selection.metrics.
    - group_column: the pool column whose values get quotas in the hybrid selector (default: the
      predicted class).
    - hybrid: the hybrid selector's settings (`select.hybrid` of params.yaml), used whenever it runs;
      None = its defaults.
    - group_boost: quota weights per group_column value, an input of the selectors that declare it (the hybrid:
      a drifted or under-performing segment, from the segment monitor, gets more of the quota); empty = none.
    - strategy_params / selector_params: parameters of the strategy / the selector that runs (e.g. beta,
      explore_fraction; selector_params win over `hybrid`); a name it does not declare is an error.
    """

    labelled_rows: pd.DataFrame | np.ndarray | None = None
    labelled_labels: np.ndarray | None = None
    class_names: list[str] | None = None
    train_params: TrainParams | None = None
    schema: Schema | None = None
    feature_map: Any = None
    committee_size: int = 5
    committee_seed: int = 0
    calibration: str | None = None
    validation_probas: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    group_column: str | None = None
    hybrid: HybridParams | None = None
    group_boost: dict[str, float] = field(default_factory=dict)
    strategy_params: dict[str, Any] = field(default_factory=dict)
    selector_params: dict[str, Any] = field(default_factory=dict)

    def params_of_selector(self, selector: str) -> dict[str, Any]:
        """The parameters the selector that runs gets: the `hybrid` settings for the hybrid selector, then selector_params."""
        settings = self.hybrid.model_dump() if selector == "hybrid" and self.hybrid is not None else {}
        return {**settings, **self.selector_params}


@dataclass
class Selection:
    item_ids: list[str]
    utilities: np.ndarray  # of the selected rows, in batch order
    strategy: str
    selector: str
    seed: int
    n_candidates: int
    rows: pd.DataFrame  # the selected pool rows, in batch order
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. ece_before / ece_after


# ------------------------------------------------------------------------------------------------
# Array-level engine (also used by the simulator)
# ------------------------------------------------------------------------------------------------


class _Prepared:
    """Things built once per selection: calibrator, committee members, the fitted selection space."""

    def __init__(self, strategy: str, context: SelectionContext | None, class_names: list[str], seed: int = 0) -> None:
        self.strategy = strategy
        self.spec = get_strategy(strategy)
        self.context = context or SelectionContext()
        self.spec.check(f"strategy {strategy!r}", self.context.strategy_params)  # before any committee is trained
        self.class_names = list(self.context.class_names or class_names)
        self.seed = seed
        self.calibrator = None
        self.metrics: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.members: list | None = None
        self.space: FeatureMap | None = None
        self._labelled_features: np.ndarray | None = None
        ctx = self.context
        self.schema = ctx.schema
        # Without a schema the model reads float matrices (the pool's numeric columns, in order).
        self.labelled_rows = ctx.labelled_rows
        if self.schema is None and ctx.labelled_rows is not None:
            from labelloop.domain.acquisition.committee import numeric_schema

            self.labelled_rows = np.asarray(ctx.labelled_rows, dtype=np.float64)
            self.schema = numeric_schema(self.labelled_rows, self.class_names)
        if ctx.calibration is not None:
            started = time.perf_counter()
            from labelloop.domain.calibration import calibration_report, fit_calibrator

            if ctx.validation_probas is None or ctx.validation_labels is None:
                raise ValueError("calibration needs validation_probas and validation_labels in the context")
            labels = _label_indices(ctx.validation_labels, self.class_names)
            self.calibrator = fit_calibrator(ctx.calibration, ctx.validation_probas, labels)
            self.metrics.update(calibration_report(self.calibrator, np.asarray(ctx.validation_probas, float), labels))
            self.seconds["calibration"] = time.perf_counter() - started
        if "committee" in self.spec.needs or "labelled" in self.spec.needs:
            if ctx.labelled_rows is None or ctx.labelled_labels is None:
                raise ValueError(
                    f"strategy {strategy!r} needs the labelled set: pass context=SelectionContext("
                    "labelled_rows=..., labelled_labels=..., train_params=...)"
                )
            if "committee" in self.spec.needs:
                from labelloop.domain.acquisition.committee import train_committee

                started = time.perf_counter()
                self.members = train_committee(
                    self.labelled_rows, ctx.labelled_labels, self.schema or self.class_names,
                    size=ctx.committee_size, seed=ctx.committee_seed, train_params=ctx.train_params,
                )
                self.seconds["committee_train"] = time.perf_counter() - started

    @property
    def needs_rows(self) -> bool:
        """Whether scoring reads the rows as the model does (a committee predicts, a strategy refits)."""
        return self.members is not None or "rows" in self.spec.needs

    def fit_space(self, sample: pd.DataFrame | np.ndarray, columns: list[str] | None = None) -> FeatureMap:
        """The selection space, fitted (once) on `sample` (rows of the pool) if it needs fitting."""
        if self.space is None:
            started = time.perf_counter()
            self.space = _fitted_space(self.context, self.schema, sample, columns, self.seed)
            self.seconds["space_fit"] = time.perf_counter() - started
        return self.space

    def labelled_features(self) -> np.ndarray | None:
        """The labelled rows in the selection space (after `fit_space`); None without a labelled set."""
        if self._labelled_features is None and self.labelled_rows is not None and self.space is not None:
            self._labelled_features = self.space(self.labelled_rows)
        return self._labelled_features

    def probas(self, probas: np.ndarray) -> np.ndarray:
        if self.calibrator is not None and len(probas):
            return self.calibrator.transform(np.asarray(probas, dtype=np.float64))
        return _float_probas(probas)

    def utilities(self, probas: np.ndarray, features: np.ndarray | None, rng: np.random.Generator,
                  rows: pd.DataFrame | np.ndarray | None = None) -> np.ndarray:
        if "features" in self.spec.needs and features is None:
            raise ValueError(f"strategy {self.strategy!r} needs feature columns")
        if self.needs_rows and rows is None:
            raise ValueError(f"strategy {self.strategy!r} needs the pool rows the model reads (rows=)")
        committee = None
        if self.members is not None:
            from labelloop.domain.acquisition.committee import committee_probas

            started = time.perf_counter()
            committee = committee_probas(self.members, rows)
            self.seconds["committee_predict"] = self.seconds.get("committee_predict", 0.0) + time.perf_counter() - started
        ctx = self.context
        labelled_features = self.labelled_features() if "labelled_features" in self.spec.keywords else None
        return score(
            self.strategy, self.probas(probas), ctx.strategy_params, rng=rng, features=features, rows=rows,
            committee=committee, labelled_features=labelled_features, labelled_rows=self.labelled_rows,
            labelled_labels=ctx.labelled_labels, class_names=self.class_names, schema=self.schema,
            train_params=ctx.train_params,
        )


def _fitted_space(context: SelectionContext, schema: Schema | None, sample: pd.DataFrame | np.ndarray,
                  columns: list[str] | None, seed: int) -> FeatureMap:
    """The context's feature map (fitted on `sample` if it needs fitting), or the default for the schema."""
    feature_map = context.feature_map
    if feature_map is None:
        if schema is None or schema.all_numeric or not isinstance(sample, pd.DataFrame):
            return raw_features(columns if columns is not None else (schema.feature_columns if schema is not None else None))
        text = getattr(context.train_params, "text", None)
        feature_map = ModelSpace.of_schema(schema, text, components=getattr(text, "selection_components", 64))
    if isinstance(feature_map, FittableFeatureMap):
        return feature_map.fit(sample, seed)
    return feature_map


def _reads_labelled_features(spec: StrategySpec, selector: str, selector_params: dict[str, Any]) -> bool:
    """Whether the strategy or the selector that runs reads the labelled rows in the selection space.

    Mapping the labelled set costs a transform of it; the hybrid declares the input but reads it only
    with diversity="coreset" (k-center from the labelled rows).
    """
    if "labelled_features" in spec.keywords:
        return True
    if selector == "hybrid":
        return selector_params.get("diversity", HYBRID.diversity) == "coreset"
    return "labelled_features" in get_selector(selector).keywords


def _float_probas(probas: np.ndarray) -> np.ndarray:
    """Probas as a float array; float32 stays float32 (the strategies upcast block by block, no n×k copy)."""
    probas = np.asarray(probas)
    return probas if probas.dtype.kind == "f" else probas.astype(np.float64)


def _label_indices(labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.asarray(labels).astype(str)
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"validation labels {unknown[:5]} are not in the label set {class_names}")
    return np.array([index[v] for v in labels], dtype=np.int64)


def select_indices(
    probas: np.ndarray,
    batch_size: int,
    *,
    strategy: str,
    selector: str | None = None,
    seed: int = 0,
    features: np.ndarray | None = None,
    rows: pd.DataFrame | np.ndarray | None = None,
    groups: np.ndarray | None = None,
    context: SelectionContext | None = None,
    class_names: list[str] | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Arrays in, (chosen row indices best first, all utilities, seconds) out. Groups default to argmax.

    `rows`: the candidates as the model reads them (committees, expected error reduction; a frame with the
    schema's feature columns, or a float matrix); `features`: the candidates in the selection space. Give
    either: a missing `features` is `rows` through the context's feature map (fitted on these rows), a
    missing `rows` is `features` (all-numeric, no feature map). `metrics`, if given, receives the
    calibration report (ece_before / ece_after).
    """
    rng = np.random.default_rng(seed)
    probas = _float_probas(probas)
    names = class_names or [str(i) for i in range(probas.shape[1])]
    started = time.perf_counter()
    prepared = _Prepared(strategy, context, names, seed)
    selector = resolve_selector(strategy, selector)
    sel_spec = get_selector(selector)
    if rows is None:
        rows = features
    selector_params = prepared.context.params_of_selector(selector)
    wants_features = "features" in prepared.spec.needs or "features" in sel_spec.needs
    wants_labelled = _reads_labelled_features(prepared.spec, selector, selector_params)
    selector_features: np.ndarray | LazyFeatures | None = features
    if (wants_features or wants_labelled) and rows is not None and len(probas):
        space = prepared.fit_space(rows)  # the default for raw matrices: the matrix itself
        if features is None and wants_features:
            # A strategy reads every row's features; a selector only its top candidates' (mapped when indexed).
            if "features" in prepared.spec.needs:
                features = selector_features = space(rows)
            else:
                selector_features = lazily(rows, space)
    utilities = prepared.utilities(probas, features, rng, rows) if len(probas) else np.empty(0)
    scored = time.perf_counter()
    if groups is None and len(probas) and "groups" in sel_spec.needs:
        groups = np.argmax(probas, axis=1)  # only the quota selector reads groups: skip the O(n·k) pass otherwise
    ctx = prepared.context
    sel_needs = sel_spec.needs
    labelled_groups = _labelled_class_indices(ctx, names, selector_params) if {"groups", "labelled"} <= sel_needs else None
    chosen = choose(
        selector, utilities, batch_size, selector_params, rng=rng, features=selector_features, groups=groups,
        labelled_features=prepared.labelled_features() if wants_labelled else None,
        labelled_groups=labelled_groups, group_boost=ctx.group_boost or None,
    ) if len(probas) else _empty_batch(batch_size)
    done = time.perf_counter()
    seconds = {"score": scored - started, "select": done - scored, **prepared.seconds}
    if metrics is not None:
        metrics.update(prepared.metrics)
    return chosen, utilities, seconds


def _labelled_class_indices(context: SelectionContext, class_names: list[str], params: dict[str, Any]) -> np.ndarray | None:
    """The labelled rows' class indices (the coding of the default argmax groups); -1 for unknown labels.

    None unless a hybrid option in the selector's `params` reads them (`quota_balance="labelled"`,
    `exploit_weighting="inverse_labelled"`), and None when the groups are a pool column (`group_column`):
    the labelled rows have no value for it here.
    """
    wanted = params.get("quota_balance") == "labelled" or params.get("exploit_weighting") == "inverse_labelled"
    if not wanted or context.group_column is not None or context.labelled_labels is None:
        return None
    names = np.asarray(class_names, dtype=str)
    labels = np.asarray(context.labelled_labels).astype(str)
    if len(names) == 0 or len(labels) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(names)
    pos = np.clip(np.searchsorted(names[order], labels), 0, len(names) - 1)
    return np.where(names[order][pos] == labels, order[pos], -1).astype(np.int64)


def _empty_batch(batch_size: int) -> np.ndarray:
    warnings.warn(f"no candidates for a batch of {batch_size}; the batch is empty", BatchShrunkWarning, stacklevel=3)
    return np.empty(0, dtype=np.int64)


# ------------------------------------------------------------------------------------------------
# Frames and parquet files
# ------------------------------------------------------------------------------------------------


def _groups_of(frame: pd.DataFrame, group_column: str | None, probas: np.ndarray) -> np.ndarray:
    if group_column is not None:
        if group_column not in frame.columns:
            raise ValueError(f"group column {group_column!r} is not in the pool; columns: {list(frame.columns)[:20]}")
        return frame[group_column].astype(str).to_numpy()
    return np.argmax(probas, axis=1) if len(probas) else np.empty(0, dtype=np.int64)


def _features_of(frame: pd.DataFrame, feature_columns: list[str]) -> np.ndarray:
    missing = [c for c in feature_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature columns {missing[:5]} are not in the pool")
    return frame[feature_columns].to_numpy(dtype=np.float32)


def _model_rows(frame: pd.DataFrame, schema: Schema | None, feature_columns: list[str]) -> pd.DataFrame | np.ndarray:
    """The pool rows as the model reads them: the schema's feature columns, or (no schema) a float matrix."""
    if schema is None:
        return _features_of(frame, feature_columns)
    missing = [c for c in schema.feature_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the pool lacks the schema's feature columns {missing[:5]}")
    return frame[schema.feature_columns]


def _feature_columns(columns: list[str], schema: Schema | None, group_column: str | None, numeric: set[str]) -> list[str]:
    if schema is not None:
        return schema.feature_columns
    return default_feature_columns(columns, (group_column,) if group_column else (), numeric)


def _space_needs_sample(context: SelectionContext | None, schema: Schema | None) -> bool:
    """Whether the selection space is fitted on the pool (a fittable map, or the schema's default for mixed data)."""
    feature_map = context.feature_map if context is not None else None
    if feature_map is not None:
        return isinstance(feature_map, FittableFeatureMap)
    return schema is not None and not schema.all_numeric


def select_from_frame(
    pool: pd.DataFrame,
    *,
    strategy: str,
    selector: str | None = "topk",
    batch_size: int,
    seed: int,
    feature_columns: list[str] | None = None,
    id_column: str = "prediction_id",
    context: SelectionContext | None = None,
) -> Selection:
    """Score and select over an in-memory pool. A preset strategy (e.g. `hybrid`) implies its selector.

    With `context.schema` the model's rows are the schema's feature columns (any role) and the selection
    space is `context.feature_map`; without, the pool's numeric columns (or `feature_columns`).
    """
    columns = list(pool.columns)
    if not proba_columns(columns):
        raise ValueError(f"a pool needs proba_<class> columns; found {columns[:10]}")
    if id_column not in columns:
        raise ValueError(f"a pool needs a {id_column!r} column; found {columns[:10]}")
    schema = context.schema if context is not None else None
    if feature_columns is None:
        feature_columns = _feature_columns(columns, schema, context.group_column if context else None,
                                           _numeric_frame_columns(pool))
    resolved = resolve_selector(strategy, selector)
    probas = _float_probas(pool[proba_columns(columns)].to_numpy())
    spec, sel_spec = get_strategy(strategy), get_selector(resolved)
    selector_params = (context or SelectionContext()).params_of_selector(resolved)
    needs_rows = bool({"features", "rows", "committee", "labelled"} & spec.needs) or "features" in sel_spec.needs or (
        _reads_labelled_features(spec, resolved, selector_params))
    rows = _model_rows(pool, schema, feature_columns) if needs_rows and (feature_columns or schema) else None
    groups = _groups_of(pool, context.group_column if context else None, probas)
    metrics: dict[str, float] = {}
    chosen, utilities, seconds = select_indices(
        probas, batch_size, strategy=strategy, selector=resolved, seed=seed, rows=rows,
        groups=groups, context=context, class_names=class_names_from_columns(columns), metrics=metrics,
    )
    selected = pool.iloc[chosen].reset_index(drop=True)
    return Selection(
        item_ids=selected[id_column].astype(str).tolist(),
        utilities=utilities[chosen] if len(chosen) else np.empty(0),
        strategy=strategy,
        selector=resolved,
        seed=seed,
        n_candidates=len(pool),
        seconds=seconds,
        rows=selected,
        metrics=metrics,
    )


def _prune(frame: pd.DataFrame, keep: int, per_group: int, keep_random: bool, keep_groups: bool) -> pd.DataFrame:
    """Rows among: top `keep` by _utility; `keep` smallest _rand; top `per_group` by _utility per _group."""
    n = len(frame)
    if n <= keep:
        return frame
    u = frame["_utility"].to_numpy()
    mask = np.zeros(n, dtype=bool)
    mask[np.argpartition(-u, keep - 1)[:keep]] = True
    if keep_random:
        mask[np.argpartition(frame["_rand"].to_numpy(), keep - 1)[:keep]] = True
    if keep_groups:
        g = frame["_group"].to_numpy()
        order = np.lexsort((-u, g))
        sg = g[order]
        starts = np.flatnonzero(np.r_[True, sg[1:] != sg[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        mask[order[rank < per_group]] = True
    return frame.loc[mask]


def _reservoir(sample: pd.DataFrame | None, chunk: pd.DataFrame, keys: np.ndarray, size: int) -> pd.DataFrame:
    """The `size` rows with the smallest `_key` among `sample` and `chunk` (a uniform sample of the stream)."""
    chunk = chunk.assign(_key=keys)
    merged = chunk if sample is None else pd.concat([sample, chunk], ignore_index=True)
    if len(merged) <= size:
        return merged
    return merged.iloc[np.argpartition(merged["_key"].to_numpy(), size - 1)[:size]].reset_index(drop=True)


def select_from_parquet(
    path: str | Path,
    *,
    strategy: str,
    selector: str | None = "topk",
    batch_size: int,
    seed: int,
    feature_columns: list[str] | None = None,
    chunk_size: int = 200_000,
    keep_factor: int = 10,
    id_column: str = "prediction_id",
    context: SelectionContext | None = None,
) -> Selection:
    """Stream a parquet pool in chunks (bounded memory for per-row strategies), then select.

    Kept while streaming: the candidate set (top `keep_factor × batch` by utility, a uniform sample for
    exploration, the best rows per group) and, when the selection space is fitted on the pool (text or
    categorical columns), a uniform sample of the pool's rows of at most the space's `sample_rows`. The
    space is fitted on that sample once, then applied to the candidate set in chunks.
    """
    # pre_buffer=False: with the default (True) iter_batches buffers the whole file's column chunks, so the
    # peak grew with the pool (2.6 GiB at 10M rows); without it, a row group at a time (~0.6 GiB).
    parquet = pq.ParquetFile(path, pre_buffer=False)
    columns = parquet.schema_arrow.names
    if id_column not in columns or not proba_columns(columns):
        raise ValueError(f"{path}: a pool needs a {id_column!r} column and proba_<class> columns; found {columns[:10]}...")
    group_column = context.group_column if context else None
    if group_column is not None and group_column not in columns:
        raise ValueError(f"{path}: group column {group_column!r} is not in the pool")
    schema = context.schema if context is not None else None
    if feature_columns is None:
        feature_columns = _feature_columns(columns, schema, group_column, _numeric_schema_columns(parquet.schema_arrow))
    spec = get_strategy(strategy)
    resolved = resolve_selector(strategy, selector)
    if not spec.chunkable:
        frame = pq.read_table(path).to_pandas()
        return select_from_frame(
            frame, strategy=strategy, selector=resolved, batch_size=batch_size, seed=seed,
            feature_columns=feature_columns, id_column=id_column, context=context,
        )
    sel_spec = get_selector(resolved)
    class_names = class_names_from_columns(columns)
    pcols = proba_columns(columns)
    rng = np.random.default_rng(seed)
    stream_rng = np.random.default_rng([seed, 1])
    sample_rng = np.random.default_rng([seed, 2])  # its own stream: the other draws are as without a sample
    started = time.perf_counter()
    prepared = _Prepared(strategy, context, class_names, seed)
    selector_params = prepared.context.params_of_selector(resolved)
    keep = max(batch_size * keep_factor, batch_size)
    keep_random = "groups" in sel_spec.needs  # the hybrid explores: keep a uniform sample too
    keep_groups = "groups" in sel_spec.needs
    wants_labelled = _reads_labelled_features(spec, resolved, selector_params)
    selector_space = ("features" in sel_spec.needs or wants_labelled) and bool(feature_columns or schema)
    sample_size = int(getattr(prepared.context.feature_map, "sample_rows", SAMPLE_ROWS))
    keep_sample = selector_space and _space_needs_sample(context, schema)
    model_columns = schema.feature_columns if schema is not None else feature_columns
    sample: pd.DataFrame | None = None
    kept: pd.DataFrame | None = None
    n_rows = 0
    for record_batch in parquet.iter_batches(batch_size=chunk_size):
        chunk = record_batch.to_pandas()
        n_rows += len(chunk)
        probas = _float_probas(chunk[pcols].to_numpy())
        rows = _model_rows(chunk, schema, feature_columns) if prepared.needs_rows or "features" in spec.needs else None
        feats = prepared.fit_space(rows)(rows) if "features" in spec.needs and rows is not None else None
        utilities = prepared.utilities(probas, feats, rng, rows)
        if keep_sample:
            sample = _reservoir(sample, chunk[model_columns], sample_rng.random(len(chunk)), sample_size)
        finite = np.isfinite(utilities)
        chunk = chunk.loc[finite]
        chunk["_utility"] = utilities[finite]
        chunk["_rand"] = stream_rng.random(len(chunk))
        chunk["_group"] = _groups_of(chunk, group_column, prepared.probas(probas[finite]))
        chunk = _prune(chunk, keep, batch_size, keep_random, keep_groups)
        if kept is None:
            kept = chunk
        else:
            kept = _prune(pd.concat([kept, chunk], ignore_index=True), keep, batch_size, keep_random, keep_groups)
    scored = time.perf_counter()
    if kept is None or len(kept) == 0:
        chosen = _empty_batch(batch_size)
        kept = pd.DataFrame(columns=[*columns, "_utility", "_rand", "_group"])
    else:
        kept = kept.reset_index(drop=True)
        if len(kept) < batch_size:
            warnings.warn(f"only {len(kept)} eligible candidates for a batch of {batch_size}", BatchShrunkWarning, stacklevel=2)
        explore_pool = None
        if keep_random:
            rand = kept["_rand"].to_numpy()
            explore_pool = np.zeros(len(kept), dtype=bool)
            explore_pool[np.argsort(rand)[:keep]] = True
        features = None
        if selector_space:
            kept_rows = _model_rows(kept, schema, feature_columns)
            space = prepared.fit_space(sample.drop(columns="_key") if sample is not None else kept_rows)
            features = lazily(kept_rows, space) if "features" in sel_spec.needs else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BatchShrunkWarning)
            chosen = choose(
                resolved, kept["_utility"].to_numpy(), batch_size, selector_params, rng=rng,
                features=features,
                groups=kept["_group"].to_numpy(),
                labelled_features=prepared.labelled_features() if wants_labelled else None,
                labelled_groups=_labelled_class_indices(prepared.context, class_names, selector_params),
                explore_pool=explore_pool, group_boost=prepared.context.group_boost or None,
            )
    done = time.perf_counter()
    utilities = kept["_utility"].to_numpy()[chosen] if len(chosen) else np.empty(0)
    selected = kept.iloc[chosen].drop(columns=["_utility", "_rand", "_group"]).reset_index(drop=True)
    return Selection(
        item_ids=selected[id_column].astype(str).tolist(),
        utilities=utilities,
        strategy=strategy,
        selector=resolved,
        seed=seed,
        n_candidates=n_rows,
        seconds={"score": scored - started, "select": done - scored, **prepared.seconds},
        rows=selected,
        metrics=dict(prepared.metrics),
    )


# ------------------------------------------------------------------------------------------------
# `labelloop select --pool FILE ...`
# ------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak resident memory (MiB) of this process while the block runs.

    On Linux the kernel's high-water mark is reset on entry (/proc/self/clear_refs) and read on exit;
    elsewhere a sampling thread polls the resident size every 5 ms.
    """

    def __enter__(self) -> PeakMemory:
        self.peak_mib = float("nan")
        self._reset = False
        self._stop = threading.Event()
        self._sampled = 0
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._reset = True
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self._reset:
            self.peak_mib = _vm_hwm_bytes() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._sampled, _rss_bytes()) / 2**20


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _rss_bytes()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def select_pool_to_file(
    pool_path: str | Path,
    out_path: str | Path,
    strategy: str,
    batch_size: int,
    selector: str | None = "topk",
    seed: int = 0,
    *,
    chunk_size: int = 200_000,
    keep_factor: int = 10,
    feature_columns: list[str] | None = None,
    id_column: str = "prediction_id",
    context: SelectionContext | None = None,
) -> dict[str, Any]:
    """Select a batch from any parquet pool and write it (atomically) to `out_path`.

    The batch keeps the pool's columns plus `acquisition_score`, `rank`, `strategy`, `selector`, `seed`.
    Returns seconds, peak_memory_mib, n_candidates, n_selected and the per-step timings.
    """
    from labelloop.core.io import write_parquet

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not Path(pool_path).exists():
        raise ValueError(f"pool file {pool_path} does not exist")
    started = time.perf_counter()
    with PeakMemory() as memory:
        selection = select_from_parquet(
            pool_path, strategy=strategy, selector=selector, batch_size=batch_size, seed=seed,
            feature_columns=feature_columns, chunk_size=chunk_size, keep_factor=keep_factor,
            id_column=id_column, context=context,
        )
        batch = selection.rows.copy()
        batch["acquisition_score"] = selection.utilities
        batch["rank"] = np.arange(len(batch), dtype=np.int64)
        batch["strategy"] = strategy
        batch["selector"] = selection.selector
        batch["seed"] = seed
        write_parquet(out_path, batch)
    return {
        "seconds": time.perf_counter() - started,
        "peak_memory_mib": memory.peak_mib,
        "n_candidates": selection.n_candidates,
        "n_selected": len(batch),
        "strategy": strategy,
        "selector": selection.selector,
        "timings": selection.seconds,
        "metrics": selection.metrics,
    }
