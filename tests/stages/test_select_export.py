import numpy as np
import pandas as pd
import pytest

from labelloop.batches import BatchStore, export_batches, load_pool, select_batch
from labelloop.stages.capture import capture
from labelloop.config import CaptureParams, ExportParams, SelectParams
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.adapters.vendors import make_vendor


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
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=10, seed=3))
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
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=5))
    assert set(BatchStore(workspace).items(meta.batch_id).item_id) == expected


def test_rerun_after_crash_before_pool_update_reuses_the_batch(workspace, monkeypatch):
    _pool(workspace)
    import labelloop.batches as batches

    monkeypatch.setattr(batches, "_drop_from_pool", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        select_batch(workspace, SelectParams(batch_size=10))
    monkeypatch.undo()
    meta = select_batch(workspace, SelectParams(batch_size=10))
    assert [m.batch_id for m in BatchStore(workspace).list()] == [meta.batch_id]
    assert len(load_pool(workspace)) == 20


def test_empty_pool_selects_nothing(workspace):
    assert select_batch(workspace, SelectParams()) is None


def test_oversized_batch_shrinks_with_a_warning(workspace):
    _pool(workspace, n=6)
    with pytest.warns(UserWarning, match="shrinks|only"):
        meta = select_batch(workspace, SelectParams(batch_size=50))
    assert meta.n_items == 6


def test_export_is_idempotent_and_sends_only_allow_listed_columns(workspace):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=5))
    schema = workspace.schema()
    params = ExportParams(columns=schema.feature_columns[:2])
    vendor = make_vendor(params, workspace.root)
    assert export_batches(workspace, params, vendor) == [meta.batch_id]
    assert export_batches(workspace, params, vendor) == []
    assert BatchStore(workspace).get(meta.batch_id).status == "exported"


def test_export_refuses_unknown_columns_naming_the_allowed_ones(workspace):
    _pool(workspace)
    select_batch(workspace, SelectParams(batch_size=5))
    params = ExportParams(columns=["ssn"])
    with pytest.raises(ValueError, match="ssn"):
        export_batches(workspace, params, make_vendor(params, workspace.root))


@pytest.mark.parametrize("strategy", ["vote_entropy", "bald", "hybrid", "information_density"])
def test_select_stage_runs_engine_strategies_with_the_workspace_context(workspace, strategy):
    from labelloop.batches import selection_context
    from labelloop.config import TrainParams

    _pool(workspace, n=40)
    params = SelectParams(strategy=strategy, batch_size=8, committee_size=3)
    context = selection_context(workspace, params, TrainParams(n_estimators=10, max_depth=3))
    meta = select_batch(workspace, params, context=context)
    items = BatchStore(workspace).items(meta.batch_id)
    assert meta.n_items == 8 and items.item_id.is_unique and meta.strategy == strategy
    assert len(load_pool(workspace)) == 32


def test_calibrated_selection_reports_ece_before_and_after(workspace):
    from labelloop.batches import selection_context
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    schema = workspace.schema()
    labeled = pd.read_parquet(workspace.labeled_path)
    model = LabelloopClassifier.from_params(TrainParams(n_estimators=10), schema.class_names).fit(labeled[schema.feature_columns], labeled.label)
    _pool(workspace, n=40)
    params = SelectParams(strategy="margin", batch_size=5, calibration="temperature")
    context = selection_context(workspace, params, TrainParams(), model.predict_proba)
    meta = select_batch(workspace, params, rescore=model.predict_proba, context=context)
    assert {"ece_before", "ece_after"} <= set(meta.metrics)


# ------------------------------------------------------------------------------ quality-control export
def _filedrop_export(ws, tmp_path, **export):
    params = ExportParams(vendor="filedrop", filedrop_url=str(tmp_path / "drop"), **export)
    return params, make_vendor(params, ws.root)


def _tasks(tmp_path, batch_id):
    import json

    lines = (tmp_path / "drop" / batch_id / "tasks.jsonl").read_text().splitlines()
    return {t["item_id"]: t for t in map(json.loads, lines)}


def test_export_adds_hidden_gold_from_the_seed_set_and_marks_overlap(workspace, tmp_path):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=10))
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.3, overlap_share=0.5, overlap_annotators=3)
    assert export_batches(workspace, params, vendor) == [meta.batch_id]
    store = BatchStore(workspace)
    plan = store.items(meta.batch_id)
    gold = plan[plan["is_gold"]]
    seed = pd.read_parquet(workspace.labeled_path).set_index("item_id")
    holdout = set(pd.read_parquet(workspace.holdout_path)["item_id"])
    assert len(gold) == 3 and set(gold["item_id"]) <= set(seed.index) and not set(gold["item_id"]) & holdout
    assert (gold.set_index("item_id")["gold_label"] == seed.loc[gold["item_id"], "label"]).all()
    new = plan[~plan["is_gold"]]
    assert len(new) == 10 and (new["annotators_wanted"] == 3).sum() == 5 and (gold["annotators_wanted"] == 3).all()
    tasks = _tasks(tmp_path, meta.batch_id)
    assert set(tasks) == set(plan["item_id"])
    assert {i: t["annotators_wanted"] for i, t in tasks.items()} == dict(zip(plan["item_id"], plan["annotators_wanted"]))
    for item_id in gold["item_id"]:  # the vendor cannot tell a gold question from a real one, nor its answer
        assert not {"gold_label", "is_gold", "label"} & set(tasks[item_id]) and tasks[item_id]["model_guess"]["label"] is None
    updated = store.get(meta.batch_id)
    assert updated.n_items == 10  # select.batch_size counts new items only
    assert updated.quality == {"n_new": 10, "n_gold": 3, "n_review": 0, "n_easy": 0, "n_overlap": 5}
    assert updated.labels_ordered == 13 * 3 - 5 * 2  # 5 single + 5 overlap x3 + 3 gold x3


def test_reexport_reuses_the_plan_no_second_gold_set_no_duplicate_tasks(workspace, tmp_path):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=10))
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.5, overlap_share=0.3)
    export_batches(workspace, params, vendor)
    store = BatchStore(workspace)
    first = store.items(meta.batch_id)
    store.mark(meta.batch_id, status="selected")  # as if killed after the vendor call, before the mark
    assert export_batches(workspace, params, vendor) == [meta.batch_id]
    pd.testing.assert_frame_equal(store.items(meta.batch_id), first)
    assert len(_tasks(tmp_path, meta.batch_id)) == len(first) == 15


def test_export_respects_max_batch_size_and_adds_easy_items_from_the_pool(workspace, tmp_path):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=10))
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.5, easy_share=0.3, max_batch_size=16)
    export_batches(workspace, params, vendor)
    plan = BatchStore(workspace).items(meta.batch_id)
    assert len(plan) == 16 and plan["is_gold"].sum() == 5 and plan["is_easy"].sum() == 1  # room for one easy item
    easy = plan.loc[plan["is_easy"], "item_id"].iloc[0]
    assert easy not in set(load_pool(workspace)["item_id"])  # an easy item leaves the pool like a selected one
    select_batch(workspace, SelectParams(batch_size=10, seed=1))
    too_small, vendor = _filedrop_export(workspace, tmp_path, max_batch_size=9)
    with pytest.raises(ValueError, match="export.max_batch_size=9"):
        export_batches(workspace, too_small, vendor)


def test_select_quarantines_pool_rows_it_cannot_offer_and_selects_from_the_rest(workspace):
    # A pool as an older version could leave it: rows without an item id, an item twice.
    pool = _pool(workspace, n=12)
    damaged = pool.copy()
    damaged["item_id"] = damaged["item_id"].astype(object)
    damaged.loc[[0, 1], "item_id"] = None
    damaged.loc[2, "item_id"] = damaged.loc[3, "item_id"]
    damaged.to_parquet(workspace.pool_path, index=False)
    meta = select_batch(workspace, SelectParams(strategy="margin", batch_size=4))
    items = BatchStore(workspace).items(meta.batch_id)
    assert meta.n_items == 4 and items["item_id"].notna().all() and items["item_id"].is_unique
    quarantined = pd.concat([pd.read_parquet(p) for p in workspace.quarantine_dir.glob("pool-*.parquet")])
    assert sorted(quarantined["prediction_id"]) == sorted(pool.loc[[0, 1, 3], "prediction_id"])  # row 2 came first
    assert quarantined["reason"].str.contains("no item_id|duplicate item_id").all()
    remaining = load_pool(workspace)
    assert len(remaining) + len(items) + 3 == len(pool)  # every row is in the batch, the pool or quarantine
    assert select_batch(workspace, SelectParams(strategy="margin", batch_size=4)).n_items == 4  # and it goes on
