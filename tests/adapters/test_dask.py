"""Dask scale-out equals the single-process result: capture + scoring over a partitioned log, and xgboost.dask training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import dask as distributed
from labelloop.adapters.validation import validate_prediction_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_FEATURES, CLASSES, PARTS, ROWS = 8, ["a", "b", "c", "d"], 6, 1500
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
PROBAS = [f"proba_{c}" for c in CLASSES]


def _part(rng: np.random.Generator, start: int, day: str) -> pd.DataFrame:
    x = rng.normal(size=(ROWS, N_FEATURES))
    truth = np.asarray(CLASSES)[(x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0).astype(int)]
    p = rng.dirichlet(np.ones(len(CLASSES)) * 0.6, ROWS)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "prediction_id", [f"p{start + i:07d}" for i in range(ROWS)])
    frame.insert(1, "ts", pd.Timestamp(day, tz="UTC"))
    frame.insert(2, "model_version", "1")
    for i, column in enumerate(PROBAS):
        frame[column] = p[:, i]
    frame["predicted"] = np.asarray(CLASSES)[p.argmax(axis=1)]
    frame["confidence"] = p.max(axis=1)
    frame["label"] = truth
    # Rows the validator must quarantine: a missing feature, probabilities that do not sum to 1.
    frame.loc[3, "f2"] = np.nan
    frame.loc[7, PROBAS[0]] = 0.99
    # Exact ties in utility across parts: the order must still be total (id breaks ties).
    frame.loc[11, PROBAS] = [0.5, 0.5, 0.0, 0.0]
    frame.loc[11, "confidence"] = 0.5
    return frame


@pytest.fixture(scope="module")
def partitioned_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    rng = np.random.default_rng(7)
    frames = []
    for i in range(PARTS):
        day = f"2026-03-0{1 + i // 2}"
        frame = _part(rng, i * ROWS, day)
        path = root / f"date={day}" / f"part-{i:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        frames.append(frame)
    return root, pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def model(partitioned_log):
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    _, whole = partitioned_log
    train = whole.sample(2000, random_state=0)
    params = TrainParams(n_estimators=20, max_depth=3, n_jobs=1)
    return LabelloopClassifier.from_params(params, distributed.as_schema(FEATURES, PROBAS)).fit(train[FEATURES], train["label"])


@pytest.fixture(scope="module")
def client():
    with distributed.dask_client(n_workers=2, threads_per_worker=1, memory_limit="2GiB") as dask_client:
        yield dask_client


def reference(whole: pd.DataFrame, threshold: float, top_k: int, model=None) -> tuple[int, int, pd.DataFrame]:
    """Single-process pandas, written independently of scan_partition: validate all, filter, score, sort."""
    from labelloop.domain.acquisition.strategies import margin

    checked = validate_prediction_log(whole, distributed.as_schema(FEATURES, PROBAS))
    valid, bad = checked.valid, checked.quarantined
    low = valid[valid["confidence"] < threshold]
    probas = model.predict_proba(low[FEATURES]) if model is not None else low[PROBAS].to_numpy()
    out = pd.DataFrame({"prediction_id": low["prediction_id"].astype(str).to_numpy(), "utility": margin(probas)})
    out = out.sort_values(["utility", "prediction_id"], ascending=[False, True], kind="mergesort").head(top_k)
    return len(bad), len(low), out.reset_index(drop=True)


@pytest.mark.parametrize("rescore", [False, True], ids=["logged-probas", "champion-rescore"])
def test_dask_capture_and_scoring_equal_single_process(partitioned_log, model, client, rescore):
    root, whole = partitioned_log
    parts = distributed.list_parts(root)
    assert len(parts) == PARTS
    kwargs = dict(threshold=0.8, strategy="margin", top_k=50, model=model if rescore else None)
    single = distributed.scan_pool(parts, FEATURES, PROBAS, **kwargs)
    on_dask = distributed.scan_pool(parts, FEATURES, PROBAS, client=client, **kwargs)
    assert on_dask.mode.startswith("dask (2 workers")

    n_bad, n_low, expected = reference(whole, 0.8, 50, model if rescore else None)
    for result in (single, on_dask):
        assert (result.rows_read, result.rows_quarantined, result.rows_low_confidence) == (len(whole), n_bad, n_low)
        assert result.top["prediction_id"].tolist() == expected["prediction_id"].tolist()
        np.testing.assert_allclose(result.top["utility"].to_numpy(), expected["utility"].to_numpy(), rtol=0, atol=1e-12)
    assert n_bad == 2 * PARTS
    pd.testing.assert_frame_equal(single.top, on_dask.top)


def test_scale_out_flow_on_dask_task_runner_equals_single_process(prefect_api, partitioned_log):
    from labelloop.flows.distributed import scale_out_scan_flow

    root, _ = partitioned_log
    parts = distributed.list_parts(root)
    single = distributed.scan_pool(parts, FEATURES, PROBAS, threshold=0.8, strategy="margin", top_k=40)
    result = scale_out_scan_flow(str(root), threshold=0.8, strategy="margin", batch_size=40, n_workers=2)
    assert (result["rows_read"], result["rows_quarantined"], result["rows_low_confidence"]) == (
        single.rows_read, single.rows_quarantined, single.rows_low_confidence)
    assert result["top_ids"] == single.top["prediction_id"].tolist()
    np.testing.assert_allclose(result["top_utilities"], single.top["utility"].to_numpy(), rtol=0, atol=1e-12)


def test_a_mixed_type_log_is_scanned_against_the_schema_on_dask_as_in_process(tmp_path, client):
    """Categorical, text, id and nullable columns: a string in a numeric feature or a null where the schema
    forbids one quarantines that row only; unseen categories are counted per column, not quarantined."""
    from labelloop.schema import ColumnSpec, Schema

    schema = Schema([ColumnSpec("ticket_id", "id", "string"), ColumnSpec("amount", "numeric", "float64", nullable=True),
                     ColumnSpec("country", "categorical", "string", categories=["de", "fr"]),
                     ColumnSpec("body", "text", "string", max_length=30)], ["a", "b"])
    parts = []
    for k in range(3):
        n = 20
        p = np.linspace(0.5, 0.99, n)
        frame = pd.DataFrame({
            "prediction_id": [f"m{k}-{i:02d}" for i in range(n)], "ts": pd.Timestamp("2026-03-01", tz="UTC"),
            "model_version": "1", "ticket_id": [f"t{k}{i}" for i in range(n)],
            "amount": [str(float(i)) if i % 7 else "n/a" for i in range(n)],  # a numeric column logged as text
            "country": ["de", "fr", "it", None] * 5, "body": [f"text {i}" if i != 5 else None for i in range(n)],
            "proba_a": p, "proba_b": 1 - p, "predicted": "a", "confidence": p,
        })
        frame.loc[3, "amount"] = None  # nullable: kept
        path = tmp_path / f"part-{k}.parquet"
        frame.to_parquet(path, index=False)
        parts.append(str(path))
    single = distributed.scan_pool(parts, schema, threshold=0.9, top_k=10)
    on_dask = distributed.scan_pool(parts, schema, threshold=0.9, top_k=10, client=client)
    # Per part: amount 'n/a' at rows 0, 7, 14; country null at 3, 7, 11, 15, 19; body null at 5.
    assert single.rows_read == 60 and single.rows_quarantined == 3 * 8
    assert single.unseen_categories == {"country": 3 * 4}  # "it" at 2, 6, 10, 18 (14 is quarantined)
    assert (on_dask.rows_quarantined, on_dask.unseen_categories) == (single.rows_quarantined, single.unseen_categories)
    pd.testing.assert_frame_equal(single.top, on_dask.top)


def test_xgboost_dask_training_matches_single_process_quality(partitioned_log, client):
    from xgboost import XGBClassifier

    root, _ = partitioned_log
    parts = distributed.list_parts(root)
    trained = distributed.train_dask(client, parts[:-1], FEATURES, CLASSES, n_estimators=30, max_depth=3)
    holdout = pd.read_parquet(parts[-1])
    train = pd.concat([pd.read_parquet(p) for p in parts[:-1]], ignore_index=True)
    assert trained.n_rows == len(train)
    dask_pred = np.asarray(CLASSES)[trained.predict_proba(holdout).argmax(axis=1)]
    codes = {c: i for i, c in enumerate(CLASSES)}
    local = XGBClassifier(n_estimators=30, max_depth=3, learning_rate=0.1, tree_method="hist", n_jobs=1)
    local.fit(train[FEATURES].to_numpy(np.float32), train["label"].map(codes))
    local_pred = np.asarray(CLASSES)[local.predict(holdout[FEATURES].to_numpy(np.float32))]
    dask_acc = float((dask_pred == holdout["label"]).mean())
    local_acc = float((local_pred == holdout["label"]).mean())
    assert dask_acc > 0.9, dask_acc  # the classes are a simple function of two features
    assert abs(dask_acc - local_acc) <= 0.02, (dask_acc, local_acc)
    assert (dask_pred == local_pred).mean() >= 0.97
