"""Label Studio vendor against the real server started by infra/labelstudio.sh (no mocks).

Annotations are posted through the API as annotators' work would be: one user per annotator, each
answer an annotation `completed_by` that user.
"""

from __future__ import annotations

import json
import uuid
from xml.etree import ElementTree

import pandas as pd
import pytest

from labelloop.adapters.vendors.base import VendorError
from labelloop.adapters.vendors.labelstudio import (
    FROM_NAME,
    TO_NAME,
    VIEW_TITLE,
    LabelStudioVendor,
    label_config,
    project_title,
)
from labelloop.batches import ReviewQueue
from labelloop.config import ImportParams
from labelloop.stages.importing import GoldTracker, process_import

from .conftest import FEATURES, LABELS, make_batch, make_mixed_batch

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


@pytest.fixture(scope="module")
def client(label_studio):
    return label_studio.client()


@pytest.fixture(scope="module")
def users(client):
    """annotator name -> Label Studio user id (created once; reused if the server already has them)."""
    wanted = ["ann-a", "ann-b", "ann-c", "spammer"]
    known = {u.email: u.id for u in client.users.list()}
    ids = {}
    for name in wanted:
        email = f"{name}@labelloop.test"
        if email not in known:
            known[email] = client.users.create(email=email, username=name, first_name=name).id
        ids[name] = known[email]
    return ids


@pytest.fixture
def vendor(label_studio, tmp_path):
    return LabelStudioVendor(label_studio.url, label_studio.token, tmp_path / "ls-state")


def new_batch_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def annotate(client, vendor, batch_id, user_id, item_id, label=None, *, result=None, cancelled=False):
    state = json.loads((vendor.state_dir / f"{batch_id}.json").read_text())
    task_id = state["tasks"].get(item_id, item_id)
    if result is None:
        result = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]
    return client.annotations.create(id=int(task_id), result=result, completed_by=user_id, was_cancelled=cancelled)


def run_import(vendor, items, batch_id, state_dir, **params):
    fetched = vendor.fetch_labels(batch_id)
    return fetched, process_import(fetched.annotations, items, LABELS, batch_id=batch_id,
                                   params=ImportParams(**params), state_dir=state_dir)


def test_label_config_is_generated_from_the_label_set():
    labels = ["cat", 'say "hi"', "a&b", "x'y"]
    root = ElementTree.fromstring(label_config(labels))
    assert [c.get("value") for c in root.iter("Choice")] == labels
    assert root.find("Choices").get("toName") == root.find("Text").get("name")
    with pytest.raises(VendorError):
        label_config([])


def test_missing_token_is_one_clear_error(tmp_path):
    with pytest.raises(VendorError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioVendor("http://127.0.0.1:1", "", tmp_path)


def test_export_tasks_carry_item_features_prediction_and_utility(client, vendor):
    batch_id = new_batch_id()
    batch, items = make_batch(batch_id)
    receipt = vendor.export_batch(batch)
    assert receipt.created and receipt.n_items == 6
    project = client.projects.get(id=int(receipt.vendor_ref))
    assert project.title == project_title(batch_id)
    assert all(f'<Choice value="{c}"/>' in project.label_config for c in LABELS)
    tasks = list(client.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == 6
    by_item = {t.data["item_id"]: t for t in tasks}
    row = items.iloc[0]
    task = by_item[row["item_id"]]
    assert [(r["column"], r["value"]) for r in task.data["table"]] == [(f, row[f]) for f in FEATURES]
    assert "private_note" not in json.dumps(task.data) and "gold" not in json.dumps(task.data)
    assert task.data["utility"] == pytest.approx(row["utility"])
    predictions = list(client.predictions.list(task=task.id))
    assert len(predictions) == 1 and predictions[0].score == pytest.approx(row["confidence"])
    assert predictions[0].result[0]["value"]["choices"] == [row["predicted"]]


def test_mixed_item_numeric_utility_and_prediction_with_the_model_version(client, vendor, label_studio):
    batch = make_mixed_batch(new_batch_id())
    receipt = vendor.export_batch(batch)
    project = client.projects.get(id=int(receipt.vendor_ref))
    # The server took the generated config (it validates each task's data against it on import).
    assert [t.get("name") for t in ElementTree.fromstring(project.label_config).iter("Text")] == [TO_NAME, "text_0", "text_1"]
    assert project.model_version == "12"  # the version Label Studio pre-fills answers from
    tasks = {t.data["item_id"]: t for t in client.tasks.list(project=project.id, fields="all")}
    first = tasks[batch.items["item_id"].iloc[0]]
    assert isinstance(first.data["utility"], float) and first.data["utility"] == pytest.approx(-0.25)
    assert first.data["priority"] == 2 and first.data["text_0"] == batch.items["body"].iloc[0]
    predictions = list(client.predictions.list(task=first.id))
    assert [(p.model_version, p.result[0]["value"]["choices"]) for p in predictions] == [("12", ["cat"])]
    # The Data Manager tab orders by priority, showing utility and priority as numbers; a rerun adds no second tab.
    vendor.export_batch(batch)
    views = [v for v in client.views.list(project=project.id) if (v.data or {}).get("title") == VIEW_TITLE]
    assert len(views) == 1 and views[0].data["ordering"] == ["tasks:data.priority"]
    assert views[0].data["columnsDisplayType"]["tasks:data.utility"] == "Number"
    # Listed through that tab, the server returns the tasks most useful first.
    ordered = [t.data["item_id"] for t in client.tasks.list(project=project.id, view=views[0].id, fields="all")]
    by_utility = batch.items.sort_values("utility", ascending=False)["item_id"].tolist()
    assert ordered == by_utility


def test_annotator_context_the_server_takes_the_why_block_and_pre_fills_only_guesses_shown_before(client, vendor):
    from .test_context import context_batch

    batch = context_batch(new_batch_id())
    receipt = vendor.export_batch(batch)
    project = client.projects.get(id=int(receipt.vendor_ref))
    assert [t.get("name") for t in ElementTree.fromstring(project.label_config).iter("Text")][-1] == "why"
    tasks = {t.data["item_id"]: t for t in client.tasks.list(project=project.id, fields="all")}
    before, after, never = (tasks[i] for i in batch.items["item_id"])
    assert before.data["why_title"].startswith("Why the model thinks 'cat'") and "amount=12.5" in before.data["why"]
    assert [p.result[0]["value"]["choices"] for p in client.predictions.list(task=before.id)] == [["cat"]]
    assert list(client.predictions.list(task=after.id)) == [] and "dog" not in json.dumps(after.data)
    assert list(client.predictions.list(task=never.id)) == []


def test_reexport_creates_no_duplicate_tasks_and_resumes_a_half_done_export(client, vendor):
    batch_id = new_batch_id()
    batch, items = make_batch(batch_id, n=8)
    # A previous export died after creating the project and importing half of the tasks.
    payloads = vendor.task_payloads(batch)
    project = client.projects.create(title=project_title(batch_id), label_config=label_config(LABELS))
    client.projects.import_tasks(id=project.id, request=payloads[:4], return_task_ids=True)
    receipt = vendor.export_batch(batch)
    assert receipt.created and receipt.vendor_ref == str(project.id)
    again = vendor.export_batch(batch)
    assert not again.created
    tasks = list(client.tasks.list(project=project.id, fields="all"))
    assert sorted(t.data["item_id"] for t in tasks) == sorted(items["item_id"])  # 8 tasks, none twice
    # A fresh state dir (e.g. another machine) still finds the project instead of making a second one.
    other = LabelStudioVendor(vendor.url, vendor._api_key, vendor.state_dir.parent / "other-state")
    assert not other.export_batch(batch).created
    assert len([p for p in client.projects.list(title=project_title(batch_id)) if p.title == project_title(batch_id)]) == 1


def test_partial_return_leaves_unfinished_tasks_for_the_next_import(client, vendor, users, tmp_path):
    batch_id = new_batch_id()
    batch, items = make_batch(batch_id, wanted=[2, 1, 1, 1, 1, 1])
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    annotate(client, vendor, batch_id, users["ann-a"], ids[0], "cat")  # overlap item: 1 of 2 answers
    annotate(client, vendor, batch_id, users["ann-a"], ids[1], "dog")
    annotate(client, vendor, batch_id, users["ann-b"], ids[2], "dog", cancelled=True)  # skipped: no answer
    fetched, outcome = run_import(vendor, items, batch_id, tmp_path / "qc")
    assert outcome.labels["item_id"].tolist() == [ids[1]]
    assert set(outcome.pending) == set(ids) - {ids[1]}
    assert vendor.status(batch_id).n_completed == 1
    assert json.loads(fetched.raw_payload)  # the raw export, as received
    annotate(client, vendor, batch_id, users["ann-b"], ids[0], "cat")
    for item in ids[2:]:
        annotate(client, vendor, batch_id, users["ann-c"], item, "bird")
    _, outcome = run_import(vendor, items, batch_id, tmp_path / "qc")
    assert len(outcome.labels) == 6 and outcome.pending == []
    row = outcome.labels.set_index("item_id").loc[ids[0]]
    assert row["label"] == "cat" and row["n_votes"] == 2 and row["agreement"] == 1.0
    assert vendor.status(batch_id).done
    annotators = set(vendor.fetch_labels(batch_id).annotations["annotator_id"])
    assert annotators == {"ann-a@labelloop.test", "ann-b@labelloop.test", "ann-c@labelloop.test"}


def test_duplicate_unknown_label_unknown_item_and_malformed_annotations(client, vendor, users, tmp_path):
    batch_id = new_batch_id()
    batch, items = make_batch(batch_id)
    receipt = vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    annotate(client, vendor, batch_id, users["ann-a"], ids[0], "dog")
    annotate(client, vendor, batch_id, users["ann-a"], ids[0], "cat")  # same annotator again: duplicate
    annotate(client, vendor, batch_id, users["ann-a"], ids[1], "horse")  # not in the label set
    annotate(client, vendor, batch_id, users["ann-a"], ids[2], result=[])  # submitted with no choice
    annotate(client, vendor, batch_id, users["ann-a"], ids[3], "bird")
    # Someone added a task by hand in the Label Studio UI: its item is not part of the batch.
    stray_task = {"data": {"item_id": "stray-item", "table": [], "utility": 0}}
    stray = client.projects.import_tasks(id=int(receipt.vendor_ref), request=[stray_task], return_task_ids=True).task_ids[0]
    annotate(client, vendor, batch_id, users["ann-a"], stray, "cat")
    _, outcome = run_import(vendor, items, batch_id, tmp_path / "qc")
    assert dict(zip(outcome.labels["item_id"], outcome.labels["label"])) == {ids[0]: "cat", ids[3]: "bird"}
    reasons = outcome.quarantined.set_index("item_id")["reason"]
    assert reasons[ids[1]] == "label is not in the label set"
    assert reasons["stray-item"] == "item_id is not in this batch"
    assert "has no choice" in reasons[ids[2]]
    assert "duplicate" in reasons[ids[0]]


def test_annotator_below_gold_threshold_and_reimport(client, vendor, users, tmp_path):
    batch_id = new_batch_id()
    gold = {f"{batch_id}-g{i}": "bird" for i in range(5)}
    batch, items = make_batch(batch_id, n=4, gold=gold)
    vendor.export_batch(batch)
    ids = [i for i in items["item_id"] if i not in gold]
    for g in gold:
        annotate(client, vendor, batch_id, users["ann-a"], g, "bird")
        annotate(client, vendor, batch_id, users["spammer"], g, "cat")
    annotate(client, vendor, batch_id, users["spammer"], ids[0], "cat")
    annotate(client, vendor, batch_id, users["spammer"], ids[1], "dog")
    annotate(client, vendor, batch_id, users["ann-b"], ids[1], "dog")
    annotate(client, vendor, batch_id, users["ann-b"], ids[2], "cat")
    params = {"min_gold_accuracy": 0.8, "min_gold_answers": 5}
    _, first = run_import(vendor, items, batch_id, tmp_path / "qc", **params)
    assert first.report.excluded_annotators == ["spammer@labelloop.test"]
    assert set(first.labels["item_id"]) == {ids[1], ids[2]}
    assert ReviewQueue(tmp_path / "qc" / "review_queue.json").pending() == [ids[0]]
    _, second = run_import(vendor, items, batch_id, tmp_path / "qc", **params)  # re-import: nothing doubles
    pd.testing.assert_frame_equal(first.labels, second.labels)
    summary = GoldTracker(tmp_path / "qc" / "gold_tracker.json").summary().set_index("annotator_id")
    assert summary.loc["spammer@labelloop.test", "n_gold"] == 5
    assert len(ReviewQueue(tmp_path / "qc" / "review_queue.json").frame()) == 1


def test_unreachable_server_and_unknown_batch(vendor, tmp_path, label_studio):
    with pytest.raises(VendorError, match="never exported"):
        vendor.fetch_labels("never-exported")
    dead = LabelStudioVendor("http://127.0.0.1:9", label_studio.token, tmp_path / "dead")
    batch, _ = make_batch(new_batch_id())
    with pytest.raises(VendorError, match="failed"):
        dead.export_batch(batch)
    assert not any((tmp_path / "dead").glob("*.json"))  # durable state unchanged
