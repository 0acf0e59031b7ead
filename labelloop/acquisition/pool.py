"""Scoring a candidate pool (a DataFrame or a parquet file in the prediction-log format) into a batch.

Per-row strategies stream the file in chunks and keep only the running best candidates, so memory
is bounded by the chunk size plus the kept candidates, not by the pool.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelloop.acquisition.registry import get_selector, get_strategy
from labelloop.acquisition.selectors import BatchShrunkWarning

PROBA_PREFIX = "proba_"


def proba_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c.startswith(PROBA_PREFIX)]


def class_names_from_columns(columns: list[str]) -> list[str]:
    return [c[len(PROBA_PREFIX):] for c in proba_columns(columns)]


@dataclass
class Selection:
    item_ids: list[str]
    utilities: np.ndarray  # of the selected rows, in batch order
    strategy: str
    selector: str
    seed: int
    n_candidates: int
    seconds: dict[str, float] = field(default_factory=dict)
    rows: pd.DataFrame | None = None  # the selected pool rows, in batch order


def _utilities(frame: pd.DataFrame, strategy: str, rng: np.random.Generator, feature_columns: list[str]) -> np.ndarray:
    spec = get_strategy(strategy)
    probas = frame[proba_columns(list(frame.columns))].to_numpy(dtype=np.float64)
    kwargs: dict[str, object] = {"rng": rng}
    if "features" in spec.needs:
        kwargs["features"] = frame[feature_columns].to_numpy(dtype=np.float64)
    if "committee" in spec.needs:
        raise ValueError(f"strategy {strategy!r} needs a committee; score it through the select stage, not a bare pool")
    return spec.fn(probas, **kwargs)


def select_from_frame(
    pool: pd.DataFrame,
    *,
    strategy: str,
    selector: str,
    batch_size: int,
    seed: int,
    feature_columns: list[str],
    id_column: str = "prediction_id",
) -> Selection:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    utilities = _utilities(pool, strategy, rng, feature_columns) if len(pool) else np.empty(0)
    scored = time.perf_counter()
    spec = get_selector(selector)
    kwargs: dict[str, object] = {"rng": rng}
    if "features" in spec.needs:
        kwargs["features"] = pool[feature_columns].to_numpy(dtype=np.float64)
    if len(pool) == 0:
        warnings.warn(f"no candidates for a batch of {batch_size}; the batch is empty", BatchShrunkWarning, stacklevel=2)
        chosen = np.empty(0, dtype=np.int64)
    else:
        chosen = spec.fn(utilities, batch_size, **kwargs)
    done = time.perf_counter()
    rows = pool.iloc[chosen].reset_index(drop=True)
    return Selection(
        item_ids=rows[id_column].astype(str).tolist(),
        utilities=utilities[chosen],
        strategy=strategy,
        selector=selector,
        seed=seed,
        n_candidates=len(pool),
        seconds={"score": scored - started, "select": done - scored},
        rows=rows,
    )


def select_from_parquet(
    path: str | Path,
    *,
    strategy: str,
    selector: str,
    batch_size: int,
    seed: int,
    feature_columns: list[str] | None = None,
    chunk_size: int = 200_000,
    keep_factor: int = 10,
    id_column: str = "prediction_id",
) -> Selection:
    """Stream a parquet pool in chunks; keep each chunk's best `keep_factor × batch_size` rows, then select."""
    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if id_column not in columns or not proba_columns(columns):
        raise ValueError(f"{path}: a pool needs a {id_column!r} column and proba_<class> columns; found {columns[:10]}...")
    if feature_columns is None:
        feature_columns = [c for c in columns if c not in set(proba_columns(columns)) | NON_FEATURE_COLUMNS]
    spec = get_strategy(strategy)
    rng = np.random.default_rng(seed)
    keep = max(batch_size * keep_factor, batch_size)
    kept: list[pd.DataFrame] = []
    n_rows = 0
    started = time.perf_counter()
    for record_batch in parquet.iter_batches(batch_size=chunk_size):
        chunk = record_batch.to_pandas()
        n_rows += len(chunk)
        if not spec.chunkable:
            kept.append(chunk)
            continue
        utilities = _utilities(chunk, strategy, rng, feature_columns)
        finite = np.flatnonzero(np.isfinite(utilities))
        if len(finite) > keep:
            finite = finite[np.argpartition(-utilities[finite], keep - 1)[:keep]]
        best = chunk.iloc[finite].copy()
        best["_utility"] = utilities[finite]
        kept.append(best)
    scored = time.perf_counter()
    candidates = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=columns)
    if spec.chunkable and len(candidates):
        utilities = candidates.pop("_utility").to_numpy()
        selector_spec = get_selector(selector)
        kwargs: dict[str, object] = {"rng": np.random.default_rng(seed)}
        if "features" in selector_spec.needs:
            kwargs["features"] = candidates[feature_columns].to_numpy(dtype=np.float64)
        if n_rows < batch_size:
            warnings.warn(f"only {n_rows} candidates for a batch of {batch_size}", BatchShrunkWarning, stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BatchShrunkWarning)
            chosen = selector_spec.fn(utilities, batch_size, **kwargs)
        rows = candidates.iloc[chosen].reset_index(drop=True)
        selection = Selection(
            item_ids=rows[id_column].astype(str).tolist(),
            utilities=utilities[chosen],
            strategy=strategy,
            selector=selector,
            seed=seed,
            n_candidates=n_rows,
            rows=rows,
        )
    else:
        candidates = candidates.drop(columns=["_utility"], errors="ignore")
        selection = select_from_frame(
            candidates, strategy=strategy, selector=selector, batch_size=batch_size, seed=seed,
            feature_columns=feature_columns, id_column=id_column,
        )
    done = time.perf_counter()
    selection.seconds = {"score": scored - started, "select": done - scored}
    return selection


# Prediction-log columns that are never model features.
NON_FEATURE_COLUMNS = {"prediction_id", "ts", "model_version", "predicted", "confidence", "date", "label", "item_id"}
