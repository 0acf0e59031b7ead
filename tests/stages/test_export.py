"""The export stage on a real workspace: allow-listed columns, idempotence, the quality-control plan."""

import json

import pandas as pd
import pytest

from labelloop.adapters.vendors import make_vendor
from labelloop.batches import BatchStore, load_pool
from labelloop.config import ExportParams, SelectParams
from labelloop.stages.export import export_batches
from labelloop.stages.select import select_batch
from tests.stages.test_select import _pool


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


# ------------------------------------------------------------------------------ quality-control export
def _filedrop_export(ws, tmp_path, **export):
    params = ExportParams(vendor="filedrop", filedrop_url=str(tmp_path / "drop"), **export)
    return params, make_vendor(params, ws.root)


def _tasks(tmp_path, batch_id):
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
