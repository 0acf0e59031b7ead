"""Scale-out on Dask: capture + scoring over a partitioned prediction log, retraining with xgboost.dask.

The unit of work is one immutable log part (a parquet file). `scan_partition` does for one part what
capture + select do for the workspace: validate (the same GX rules), keep low-confidence rows,
optionally rescore them with the champion, compute the acquisition utility, and keep the part's
`top_k` best rows (plus its counts). Only those small results travel back; `merge_scans` makes the
global top-k. The same two functions run in one process (`client=None`) or as Dask tasks on a
LocalCluster or an existing scheduler, so both give the same answer by construction, and the
result is independent of how parts are grouped: top-k of per-part top-k is the global top-k.

Order is total and deterministic: utility descending, then `prediction_id` ascending.
No Prefect here (flows/distributed.py wraps these in a flow with prefect-dask's DaskTaskRunner).

The scan takes the workspace `Schema` (categorical, text, id columns and nullability are validated as
capture does; a row whose value does not fit its column is quarantined, never the part; unseen
categories are counted per column). A list of feature column names stands for an all-numeric schema
whose classes are the proba columns' (pools without a workspace). `train_dask` is numeric-only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.columns import PROBA_PREFIX
from labelloop.schema import Schema

ID = "prediction_id"


@dataclass
class PartScan:
    path: str
    rows_read: int
    rows_quarantined: int
    rows_low_confidence: int
    top: pd.DataFrame  # at most top_k rows: ID, utility and the kept columns
    seconds: float = 0.0
    unseen_categories: dict[str, int] = field(default_factory=dict)  # per column, valid rows with an unseen category


@dataclass
class ScanResult:
    parts: int
    rows_read: int
    rows_quarantined: int
    rows_low_confidence: int
    top: pd.DataFrame
    seconds: float
    mode: str
    per_part: list[dict[str, Any]] = field(default_factory=list)
    unseen_categories: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else float("nan")


def list_parts(pool: str | Path) -> list[str]:
    """The parquet parts of a partitioned pool/log directory (any depth, e.g. date=YYYY-MM-DD/part-*.parquet), sorted."""
    root = Path(pool)
    if root.is_file():
        return [str(root)]
    parts = sorted(str(p) for p in root.rglob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no parquet parts under {root}")
    return parts


def as_schema(schema: Schema | Sequence[str], proba_columns: Sequence[str] | None = None) -> Schema:
    """The scan's schema: `schema` itself, or for a list of feature names an all-numeric schema whose
    classes are those of `proba_columns`."""
    if isinstance(schema, Schema):
        return schema
    if proba_columns is None:
        raise ValueError("feature column names need the proba columns too (or pass the workspace Schema)")
    return Schema.numeric(list(schema), [c.removeprefix(PROBA_PREFIX) for c in proba_columns])


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["utility", ID], ascending=[False, True], kind="mergesort").reset_index(drop=True)


def scan_frame(frame: pd.DataFrame, schema: Schema | Sequence[str], proba_columns: Sequence[str] | None = None, *,
               threshold: float, strategy: str = "margin", top_k: int = 100, model=None, validate: bool = True,
               keep_columns: Sequence[str] = ()) -> tuple[int, int, int, pd.DataFrame, dict[str, int]]:
    """(rows read, quarantined, low-confidence, top_k best rows, unseen categories per column) for one frame
    of the prediction log."""
    from labelloop.domain.acquisition import get_strategy

    schema = as_schema(schema, proba_columns)
    probas_columns = schema.proba_columns
    rows = len(frame)
    unseen: dict[str, int] = {}
    if validate:
        from labelloop.adapters.validation import validate_prediction_log

        checked = validate_prediction_log(frame, schema)
        valid, quarantined, unseen = checked.valid, len(checked.quarantined), checked.unseen_categories
    else:
        valid, quarantined = frame.reset_index(drop=True), 0
    low = valid[valid["confidence"].to_numpy() < threshold]
    if model is not None and len(low):
        probas = np.asarray(model.predict_proba(low[schema.feature_columns]), dtype=np.float64)
    else:
        probas = low[probas_columns].to_numpy(dtype=np.float64)
    spec = get_strategy(strategy)
    if spec.needs or not spec.chunkable:
        raise ValueError(f"strategy {strategy!r} needs the whole pool or a committee; distributed scans take per-row "
                         f"strategies (least_confidence, margin, ratio, entropy)")
    utility = np.asarray(spec.fn(probas), dtype=np.float64) if len(low) else np.empty(0)
    out = pd.DataFrame({ID: low[ID].astype(str).to_numpy(), "utility": utility})
    for column in keep_columns:
        out[column] = low[column].to_numpy()
    if model is not None:
        for i, column in enumerate(probas_columns):
            out[column] = probas[:, i]
    out = out[np.isfinite(out["utility"].to_numpy())]
    return rows, quarantined, len(low), _order(out).head(top_k), unseen


def scan_partition(path: str, schema: Schema | Sequence[str], proba_columns: Sequence[str] | None = None, *,
                   threshold: float, strategy: str = "margin", top_k: int = 100, model=None, validate: bool = True,
                   keep_columns: Sequence[str] = ()) -> PartScan:
    """One log part → its counts and its top_k candidates (runs in a Dask worker or in-process)."""
    started = time.perf_counter()
    schema = as_schema(schema, proba_columns)
    columns = list(dict.fromkeys([ID, "ts", "model_version", "predicted", "confidence", *schema.stored_columns,
                                  *schema.proba_columns, *keep_columns]))
    import pyarrow.parquet as pq

    available = set(pq.read_schema(path).names)
    frame = pd.read_parquet(path, columns=[c for c in columns if c in available])
    rows, quarantined, low, top, unseen = scan_frame(frame, schema, threshold=threshold, strategy=strategy, top_k=top_k,
                                                     model=model, validate=validate, keep_columns=keep_columns)
    return PartScan(path, rows, quarantined, low, top, time.perf_counter() - started, unseen)


def merge_scans(scans: Sequence[PartScan], top_k: int, seconds: float, mode: str) -> ScanResult:
    """Global result from per-part results; a prediction logged in two parts counts once (first part wins)."""
    tops = [s.top.assign(_part=i) for i, s in enumerate(scans) if len(s.top)]
    if tops:
        merged = pd.concat(tops, ignore_index=True)
        merged = merged.sort_values("_part", kind="mergesort").drop_duplicates(ID, keep="first").drop(columns="_part")
        top = _order(merged).head(top_k)
    else:
        top = pd.DataFrame(columns=[ID, "utility"])
    unseen: dict[str, int] = {}
    for scan in scans:
        for column, count in scan.unseen_categories.items():
            unseen[column] = unseen.get(column, 0) + count
    return ScanResult(
        parts=len(scans), rows_read=sum(s.rows_read for s in scans), rows_quarantined=sum(s.rows_quarantined for s in scans),
        rows_low_confidence=sum(s.rows_low_confidence for s in scans), top=top, seconds=seconds, mode=mode,
        per_part=[{"path": s.path, "rows": s.rows_read, "seconds": round(s.seconds, 3)} for s in scans],
        unseen_categories=dict(sorted(unseen.items())),
    )


def scan_pool(parts: Sequence[str], schema: Schema | Sequence[str], proba_columns: Sequence[str] | None = None, *,
              threshold: float, strategy: str = "margin", top_k: int = 100, model=None, validate: bool = True,
              keep_columns: Sequence[str] = (), client=None) -> ScanResult:
    """Capture + scoring over every part: in this process (client=None) or as one Dask task per part."""
    schema = as_schema(schema, proba_columns)
    kwargs: dict[str, Any] = dict(threshold=threshold, strategy=strategy, top_k=top_k, validate=validate,
                                  keep_columns=tuple(keep_columns))
    started = time.perf_counter()
    if client is None:
        scans = [scan_partition(p, schema, model=model, **kwargs) for p in parts]
        mode = "single-process"
    else:
        shared = client.scatter(model, broadcast=True) if model is not None else None
        futures = client.map(scan_partition, list(parts), schema=schema, model=shared, pure=False, **kwargs)
        scans = client.gather(futures)
        mode = f"dask ({len(client.scheduler_info().get('workers', {}))} workers)"
    return merge_scans(scans, top_k, time.perf_counter() - started, mode)


@contextmanager
def dask_client(address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str | None = "auto", processes: bool = True) -> Iterator[Any]:
    """A Dask client: to the scheduler at `address`, or to a LocalCluster this context starts and stops."""
    from dask.distributed import Client, LocalCluster

    if address:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                           memory_limit=memory_limit, dashboard_address=None)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# -- retraining on data larger than memory ---------------------------------------------------------

@dataclass
class DaskTrainResult:
    booster: Any  # xgboost.Booster
    class_names: list[str]
    feature_columns: list[str]
    n_rows: int
    seconds: float

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        import xgboost

        matrix = xgboost.DMatrix(features[self.feature_columns].to_numpy(dtype=np.float32), feature_names=self.feature_columns)
        return np.asarray(self.booster.predict(matrix)).reshape(len(features), len(self.class_names))


def train_dask(client, parts: Sequence[str] | str, feature_columns: list[str], class_names: list[str], *,
               label_column: str = "label", n_estimators: int = 200, max_depth: int = 6, learning_rate: float = 0.1,
               subsample: float = 1.0, random_state: int = 0) -> DaskTrainResult:
    """XGBoost trained by `xgboost.dask` over parquet parts read lazily by the workers (never all in one process)."""
    import dask.dataframe as dd
    import xgboost
    from xgboost import dask as dxgb

    started = time.perf_counter()
    frame = dd.read_parquet(list(parts) if not isinstance(parts, str) else parts, columns=[*feature_columns, label_column])
    codes = {c: i for i, c in enumerate(class_names)}
    X = frame[feature_columns].astype("float32")
    y = frame[label_column].astype(str).map(codes, meta=(label_column, "float64"))
    dtrain = dxgb.DaskQuantileDMatrix(client, X, y)
    params = {"objective": "multi:softprob", "num_class": len(class_names), "max_depth": max_depth, "eta": learning_rate,
              "subsample": subsample, "seed": random_state, "tree_method": "hist", "eval_metric": "mlogloss"}
    output = dxgb.train(client, params, dtrain, num_boost_round=n_estimators)
    n_rows = len(y)  # a lazy count by the workers
    booster: xgboost.Booster = output["booster"]
    return DaskTrainResult(booster, list(class_names), list(feature_columns), n_rows, time.perf_counter() - started)
