"""The select stage on a real workspace: the batch, its scores, the pool, reruns after a crash."""

import numpy as np
import pandas as pd
import pytest

from labelloop.batches import BatchStore, load_pool
from labelloop.config import CaptureParams, SelectParams
from labelloop.stages.capture import capture
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.stages.select import select_batch, selection_context


def _pool(ws, n=30, seed=0):
    schema = ws.schema()
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").head(n)
    rng = np.random.default_rng(seed)
    probas = rng.dirichlet(np.ones(len(schema.class_names)), size=n)
    append_predictions(ws, predictions_frame(traffic, probas, schema, "1", traffic.item_id.tolist()))
    capture(ws, CaptureParams(confidence_threshold=1.0))
    return load_pool(ws)


def test_select_writes_a_batch_with_strategy_seed_scores_and_empties_the_pool_of_it(workspace):
    pool = _pool(workspace)
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=10, seed=3, audit_fraction=0))
    items = BatchStore(workspace).items(meta.batch_id)
    assert (meta.strategy, meta.seed, meta.n_items, meta.status) == ("margin", 3, 10, "selected")
    assert items["utility"].is_monotonic_decreasing
    remaining = load_pool(workspace)
    assert len(remaining) == len(pool) - 10
    assert not set(items.item_id) & set(remaining.item_id)


def test_select_picks_the_least_certain_rows_for_margin(workspace):
    pool = _pool(workspace)
    schema = workspace.schema()
    probas = pool[schema.proba_columns].to_numpy()
    part = np.sort(probas, axis=1)
    expected = set(pool.item_id.to_numpy()[np.argsort(part[:, -1] - part[:, -2])[:5]])
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=5, audit_fraction=0))
    assert set(BatchStore(workspace).items(meta.batch_id).item_id) == expected


def test_rerun_after_crash_before_pool_update_reuses_the_batch(workspace, monkeypatch):
    _pool(workspace)
    from labelloop.stages import select

    monkeypatch.setattr(select, "drop_from_pool", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0))
    monkeypatch.undo()
    meta = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0))
    assert [m.batch_id for m in BatchStore(workspace).list()] == [meta.batch_id]
    assert len(load_pool(workspace)) == 20


def test_empty_pool_selects_nothing(workspace):
    assert select_batch(workspace, SelectParams(audit_fraction=0)) is None


def test_oversized_batch_shrinks_with_a_warning(workspace):
    _pool(workspace, n=6)
    with pytest.warns(UserWarning, match="shrinks|only"):
        meta = select_batch(workspace, SelectParams(batch_size=50, audit_fraction=0))
    assert meta.n_items == 6


@pytest.mark.parametrize("strategy", ["vote_entropy", "bald", "hybrid", "information_density"])
def test_select_stage_runs_engine_strategies_with_the_workspace_context(workspace, strategy):
    from labelloop.config import TrainParams

    _pool(workspace, n=40)
    params = SelectParams(strategy=strategy, batch_size=8, committee_size=3, audit_fraction=0)
    context = selection_context(workspace, params, TrainParams(n_estimators=10, max_depth=3))
    meta = select_batch(workspace, params, context=context)
    items = BatchStore(workspace).items(meta.batch_id)
    assert meta.n_items == 8 and items.item_id.is_unique and meta.strategy == strategy
    assert len(load_pool(workspace)) == 32


def test_calibrated_selection_reports_ece_before_and_after(workspace):
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    schema = workspace.schema()
    labeled = pd.read_parquet(workspace.labeled_path)
    model = LabelloopClassifier.from_params(TrainParams(n_estimators=10), schema)
    model.fit(labeled[schema.feature_columns], labeled.label)
    _pool(workspace, n=40)
    params = SelectParams(strategy="margin", batch_size=5, calibration="temperature", audit_fraction=0)
    context = selection_context(workspace, params, TrainParams(), model.predict_proba)
    meta = select_batch(workspace, params, rescore=model.predict_proba, context=context)
    assert {"ece_before", "ece_after"} <= set(meta.metrics)


def test_select_quarantines_pool_rows_it_cannot_offer_and_selects_from_the_rest(workspace):
    # A pool as an older version could leave it: rows without an item id, an item twice.
    pool = _pool(workspace, n=12)
    damaged = pool.copy()
    damaged["item_id"] = damaged["item_id"].astype(object)
    damaged.loc[[0, 1], "item_id"] = None
    damaged.loc[2, "item_id"] = damaged.loc[3, "item_id"]
    damaged.to_parquet(workspace.pool_path, index=False)
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=4, audit_fraction=0))
    items = BatchStore(workspace).items(meta.batch_id)
    assert meta.n_items == 4 and items["item_id"].notna().all() and items["item_id"].is_unique
    quarantined = pd.concat([pd.read_parquet(p) for p in workspace.quarantine_dir.glob("pool-*.parquet")])
    assert sorted(quarantined["prediction_id"]) == sorted(pool.loc[[0, 1, 3], "prediction_id"])  # row 2 came first
    assert quarantined["reason"].str.contains("no item_id|duplicate item_id").all()
    remaining = load_pool(workspace)
    assert len(remaining) + len(items) + 3 == len(pool)  # every row is in the batch, the pool or quarantine
    assert select_batch(workspace, SelectParams(strategy="margin", batch_size=4, audit_fraction=0)).n_items == 4  # and it goes on
