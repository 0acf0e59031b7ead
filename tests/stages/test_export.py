"""The export stage on a real workspace: allow-listed columns, idempotence, the quality-control plan."""

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.vendors import make_vendor
from labelloop.batches import BatchStore, load_pool
from labelloop.config import ExportParams, SelectParams
from labelloop.core.io import write_parquet
from labelloop.stages.export import columns_to_send, export_batches, export_payload
from labelloop.stages.select import select_batch
from tests.adapters.vendors.conftest import MIXED_COLUMNS, MIXED_SCHEMA, make_mixed_batch
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


# ------------------------------------------------------------------------------- what annotators see
def _logged_pool(ws, n=20, version="1"):
    """A candidate pool as capture writes it (log rows: features, probabilities, guess, model_version)."""
    schema = ws.schema()
    rows = pd.read_parquet(ws.simulator_dir / "traffic.parquet").head(n).reset_index(drop=True)
    probas = np.random.default_rng(0).dirichlet(np.ones(len(schema.class_names)), size=n)
    pool = rows[["item_id", *schema.feature_columns]].copy()
    pool[schema.proba_columns] = probas
    pool["predicted"] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
    pool["confidence"] = probas.max(axis=1)
    pool["model_version"] = version
    write_parquet(ws.pool_path, pool)


def test_each_guess_carries_the_model_version_that_made_it(workspace, tmp_path):
    _logged_pool(workspace, version="1")
    rescored = select_batch(workspace, SelectParams(batch_size=5), champion_version="5")  # guesses by champion v5
    logged = select_batch(workspace, SelectParams(batch_size=5, seed=1))  # no champion: the production model's v1
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.4)
    export_batches(workspace, params, vendor)
    schema = workspace.schema()
    for meta, version in ((rescored, "5"), (logged, "1")):
        tasks = _tasks(tmp_path, meta.batch_id)
        plan = BatchStore(workspace).items(meta.batch_id).set_index("item_id")
        new = [t for i, t in tasks.items() if not plan.loc[i, "is_gold"]]
        assert len(new) == 5 and {t["model_guess"]["model_version"] for t in new} == {version}
        gold = [t for i, t in tasks.items() if plan.loc[i, "is_gold"]]
        assert len(gold) == 2 and all(t["model_guess"] == {"label": None, "score": None, "model_version": None} for t in gold)
        assert all(list(t["features"]) == schema.stored_columns for t in tasks.values())  # the schema's order
        assert sorted(t["priority"] for t in tasks.values()) == list(range(1, 8))


def test_columns_sent_are_ids_and_features_in_schema_order_or_those_allowed():
    assert columns_to_send(MIXED_SCHEMA, None) == MIXED_COLUMNS  # the ignored column never leaves
    assert columns_to_send(MIXED_SCHEMA, ["subject", "ticket_id", "amount"]) == ["ticket_id", "amount", "subject"]
    with pytest.raises(ValueError, match=r"\['internal_note', 'ssn'\].*allowed: id and feature columns"):
        columns_to_send(MIXED_SCHEMA, ["ssn", "internal_note", "body"])


def test_an_id_column_only_gold_questions_carry_is_not_sent():
    batch = make_mixed_batch("b1")
    plan = batch.items.assign(is_gold=[False, False, True])
    assert list(export_payload(plan, MIXED_COLUMNS, MIXED_SCHEMA).columns)[:7] == ["item_id", *MIXED_COLUMNS]
    logged_without_ids = plan.assign(ticket_id=[None, None, "T-9"])  # the log has no ids; the seed set has
    sent = export_payload(logged_without_ids, MIXED_COLUMNS, MIXED_SCHEMA)
    assert "ticket_id" not in sent.columns and sent.columns[1:6].tolist() == MIXED_COLUMNS[1:]
    assert "ticket_id" not in export_payload(plan.drop(columns="ticket_id"), MIXED_COLUMNS, MIXED_SCHEMA).columns
    with pytest.raises(ValueError, match=r"lacks feature columns \['body'\]"):
        export_payload(plan.drop(columns="body"), MIXED_COLUMNS, MIXED_SCHEMA)
    old_plan = plan.drop(columns="model_version")  # a plan written before versions were recorded
    assert export_payload(old_plan, MIXED_COLUMNS, MIXED_SCHEMA)["model_version"].isna().all()
