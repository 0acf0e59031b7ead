"""The export stage on a real workspace: allow-listed columns, idempotence, the quality-control plan."""

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters.vendors import make_vendor
from labelloop.batches import BatchStore, ReviewQueue, load_pool
from labelloop.config import ExportParams, SelectParams, TrainParams
from labelloop.core.io import write_parquet
from labelloop.model import LabelloopClassifier
from labelloop.stages.export import columns_to_send, export_batches, export_payload
from labelloop.stages.select import select_batch
from tests.adapters.vendors.conftest import MIXED_COLUMNS, MIXED_SCHEMA, make_mixed_batch
from tests.stages.test_select import _pool


def test_export_is_idempotent_and_sends_only_allow_listed_columns(workspace):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=5, audit_fraction=0))
    schema = workspace.schema()
    params = ExportParams(columns=schema.feature_columns[:2])
    vendor = make_vendor(params, workspace.root)
    assert export_batches(workspace, params, vendor) == [meta.batch_id]
    assert export_batches(workspace, params, vendor) == []
    assert BatchStore(workspace).get(meta.batch_id).status == "exported"


def test_export_refuses_unknown_columns_naming_the_allowed_ones(workspace):
    _pool(workspace)
    select_batch(workspace, SelectParams(batch_size=5, audit_fraction=0))
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
    meta = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0))
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
    keys = {frozenset(t) for t in tasks.values()}
    assert len(keys) == 1  # every task has the same fields: a gold question looks like a real one
    for item_id in gold["item_id"]:  # the vendor cannot tell a gold question from a real one, nor its answer
        assert not {"gold_label", "is_gold", "label"} & set(tasks[item_id])
    updated = store.get(meta.batch_id)
    assert updated.n_items == 10  # select.batch_size counts new items only
    assert updated.quality == {"n_new": 10, "n_gold": 3, "n_review": 0, "n_easy": 0, "n_overlap": 5}
    assert updated.labels_ordered == 13 * 3 - 5 * 2  # 5 single + 5 overlap x3 + 3 gold x3


def test_reexport_reuses_the_plan_no_second_gold_set_no_duplicate_tasks(workspace, tmp_path):
    _pool(workspace)
    meta = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0))
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
    meta = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0))
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.5, easy_share=0.3, max_batch_size=16)
    export_batches(workspace, params, vendor)
    plan = BatchStore(workspace).items(meta.batch_id)
    assert len(plan) == 16 and plan["is_gold"].sum() == 5 and plan["is_easy"].sum() == 1  # room for one easy item
    easy = plan.loc[plan["is_easy"], "item_id"].iloc[0]
    assert easy not in set(load_pool(workspace)["item_id"])  # an easy item leaves the pool like a selected one
    select_batch(workspace, SelectParams(batch_size=10, seed=1, audit_fraction=0))
    too_small, vendor = _filedrop_export(workspace, tmp_path, max_batch_size=9)
    with pytest.raises(ValueError, match="export.max_batch_size=9"):
        export_batches(workspace, too_small, vendor)


# ------------------------------------------------------------------------------- what annotators see
def _logged_pool(ws, n=20, version="1", skip=0):
    """A candidate pool as capture writes it (log rows: features, probabilities, guess, model_version)."""
    schema = ws.schema()
    rows = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[skip:skip + n].reset_index(drop=True)
    probas = np.random.default_rng(0).dirichlet(np.ones(len(schema.class_names)), size=n)
    pool = rows[["item_id", *schema.feature_columns]].copy()
    pool[schema.proba_columns] = probas
    pool["predicted"] = np.asarray(schema.class_names, dtype=object)[probas.argmax(axis=1)]
    pool["confidence"] = probas.max(axis=1)
    pool["model_version"] = version
    write_parquet(ws.pool_path, pool)


def test_each_guess_carries_the_model_version_that_made_it(workspace, tmp_path):
    _logged_pool(workspace, version="1")
    # The first batch's guesses come from champion v5; the second's (no champion) from the production model's v1.
    rescored = select_batch(workspace, SelectParams(batch_size=5, audit_fraction=0), champion_version="5")
    logged = select_batch(workspace, SelectParams(batch_size=5, seed=1, audit_fraction=0))
    params, vendor = _filedrop_export(workspace, tmp_path, gold_share=0.4)
    export_batches(workspace, params, vendor)
    schema = workspace.schema()
    for meta, version in ((rescored, "5"), (logged, "1")):
        tasks = _tasks(tmp_path, meta.batch_id)
        plan = BatchStore(workspace).items(meta.batch_id).set_index("item_id")
        guesses = {i: t["model_guess"] if t["model_guess"]["label"] is not None else t["after_answer"]["model_guess"]
                   for i, t in tasks.items()}  # shown with the item, or only once it is answered
        new = [g for i, g in guesses.items() if not plan.loc[i, "is_gold"]]
        assert len(new) == 5 and {g["model_version"] for g in new} == {version}
        gold = [g for i, g in guesses.items() if plan.loc[i, "is_gold"]]
        # A gold question's guess (from a model fitted without it) carries the batch's version too: nothing singles it out.
        assert len(gold) == 2 and {g["model_version"] for g in gold} == {version}
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


# ------------------------------------------------------------------------------------ annotator context
def _context_export(ws, tmp_path, n=20, load_model=None, skip=0, **export):
    _logged_pool(ws, n=n + 10, version="3", skip=skip)
    meta = select_batch(ws, SelectParams(batch_size=n, audit_fraction=0), champion_version="3")
    params, vendor = _filedrop_export(ws, tmp_path, **export)
    export_batches(ws, params, vendor, load_model=load_model)
    plan = BatchStore(ws).items(meta.batch_id).set_index("item_id")
    return meta, plan, _tasks(tmp_path, meta.batch_id)


def test_gold_questions_split_between_guess_before_and_after_with_as_many_decoys(workspace, tmp_path):
    meta, plan, tasks = _context_export(workspace, tmp_path, gold_share=0.2, gold_guess_share=0.5)  # 4 gold questions
    gold = plan[plan["is_gold"]]
    assert gold["guess_shown"].value_counts().to_dict() == {"before": 2, "after": 2}
    assert plan.loc[~plan["is_gold"], "guess_shown"].value_counts().to_dict() == {"before": 18, "after": 2}  # 2 decoys
    seed = pd.read_parquet(workspace.labeled_path).set_index("item_id")
    held_out = LabelloopClassifier.from_params(workspace.params().train, workspace.schema()).fit(
        seed.drop(index=gold.index), seed.drop(index=gold.index)["label"].to_numpy())
    assert (gold["predicted"] == held_out.predict(gold.reset_index())).all()  # a model that never saw them
    for item_id, row in plan.iterrows():
        task = tasks[item_id]
        if row["guess_shown"] == "before":
            assert task["model_guess"]["label"] == row["predicted"] and task["after_answer"] is None
        else:
            assert task["model_guess"]["label"] is None and task["after_answer"]["model_guess"]["label"] == row["predicted"]
        assert "why" not in task  # context guess: no explanation
    manifest = json.loads((tmp_path / "drop" / meta.batch_id / "manifest.json").read_text())
    assert manifest["show_after_answer"] == ["after_answer"]


def test_after_answer_keeps_the_guess_out_of_the_task_until_answered(workspace, tmp_path):
    _, plan, tasks = _context_export(workspace, tmp_path, show_guess="after_answer")
    assert set(plan["guess_shown"]) == {"after"}
    assert all(t["model_guess"] == {"label": None, "score": None, "model_version": None} for t in tasks.values())
    assert all(t["after_answer"]["model_guess"]["model_version"] == "3" for t in tasks.values())


@pytest.mark.parametrize("export", [{"show_guess": "never"}, {"context": "none"}])
def test_no_guess_leaves_when_it_is_never_shown_or_there_is_no_context(workspace, tmp_path, export):
    _, plan, tasks = _context_export(workspace, tmp_path, gold_share=0.2, **export)
    assert set(plan["guess_shown"]) == {"never"} and plan.loc[~plan["is_gold"], "predicted"].notna().all()  # kept here
    assert all(t["model_guess"] == {"label": None, "score": None, "model_version": None} for t in tasks.values())
    assert not any("after_answer" in t or "why" in t for t in tasks.values())


def test_guess_and_why_explain_each_guess_with_the_model_that_made_it(workspace, tmp_path):
    seed = pd.read_parquet(workspace.labeled_path)
    champion = LabelloopClassifier.from_params(TrainParams(n_estimators=20, max_depth=3), workspace.schema()).fit(
        seed, seed["label"].to_numpy())
    asked = []

    def load(version):
        asked.append(version)
        return champion if version == "3" else None

    _, plan, tasks = _context_export(workspace, tmp_path, load_model=load, context="guess+why", gold_share=0.2,
                                     why_features=2)
    assert asked == ["3"]  # one load per version
    for item_id, row in plan.iterrows():
        why = json.loads(row["why"])
        assert why["method"] == "treeshap" and why["label"] == row["predicted"]
        assert 1 <= len(why["toward"]) + len(why["away"]) <= 4
        assert all(f["feature"].split("=")[0] in workspace.schema().feature_columns for f in why["toward"] + why["away"])
        task = tasks[item_id]
        shown = task["why"] if row["guess_shown"] == "before" else task["after_answer"]["why"]
        assert shown == why
    # A version that cannot be loaded: the explanation says so instead of failing the export.
    _, plan2, _ = _context_export(workspace, tmp_path / "other", n=12, skip=100, load_model=lambda v: None, context="guess+why")
    notes = {json.loads(w)["note"] for w in plan2["why"]}
    assert notes == {"the model that made this guess (version 3) could not be loaded"}


def test_a_label_the_error_scan_doubts_is_asked_again_though_it_is_labelled(workspace, tmp_path):
    _logged_pool(workspace, n=30, version="3")
    first = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0), champion_version="3")
    params, vendor = _filedrop_export(workspace, tmp_path)
    export_batches(workspace, params, vendor)
    doubted = BatchStore(workspace).items(first.batch_id)["item_id"].iloc[0]
    labeled = pd.read_parquet(workspace.labeled_path)
    row = pd.read_parquet(workspace.simulator_dir / "traffic.parquet").set_index("item_id").loc[[doubted]].reset_index()
    given = workspace.schema().class_names[0]
    write_parquet(workspace.labeled_path, pd.concat([labeled, row.assign(label=given, batch_id=first.batch_id, source="filedrop")[
        labeled.columns]], ignore_index=True))  # as if versioned from the first batch
    queue = ReviewQueue(workspace.review_queue_path)
    queue.add(first.batch_id, pd.DataFrame({"item_id": [doubted], "reason": ["label_error"], "given_label": [given]}))
    second = select_batch(workspace, SelectParams(batch_size=10, seed=1, audit_fraction=0), champion_version="3")
    export_batches(workspace, params, vendor)
    plan = BatchStore(workspace).items(second.batch_id).set_index("item_id")
    assert plan.loc[doubted, "is_review"] and plan.loc[doubted, "annotators_wanted"] == 3
    assert ReviewQueue(workspace.review_queue_path).frame().set_index("item_id").loc[doubted, "sent_batch"] == second.batch_id
