"""Annotator context in the vendors (no server): the guess before or after the answer, and why the model thinks it."""

from __future__ import annotations

import json
from dataclasses import replace
from xml.etree import ElementTree

import pytest

from labelloop.adapters.vendors.filedrop import FileDropVendor
from labelloop.adapters.vendors.labelstudio import NO_WHY, LabelStudioVendor, batch_has_why, label_config
from labelloop.adapters.vendors.simulated import SimulatedVendor
from labelloop.config import SimulatedVendorParams
from labelloop.core.io import write_parquet

from .conftest import LABELS, make_mixed_batch

WHY = {"label": "cat", "method": "treeshap", "toward": [{"feature": "amount=12.5", "weight": 0.8}],
       "away": [{"feature": "country=DE", "weight": -0.2}]}
WHY_DOG = {"label": "dog", "method": "linear", "toward": [{"feature": "subject: 'parcel'", "weight": 1.1}], "away": []}


def context_batch(batch_id: str = "b1", shown=("before", "after", "never")):
    """The mixed batch with the export's context columns: guess shown before / after the answer / never, and why."""
    batch = make_mixed_batch(batch_id)
    items = batch.items.assign(guess_shown=list(shown), why=[json.dumps(WHY), json.dumps(WHY_DOG), None])
    return replace(batch, items=items)


def test_the_guess_of_a_row_says_when_it_may_be_shown():
    batch = context_batch()
    first, second, third = (batch.guess(i) for i in range(3))
    assert (first.label, first.score, first.model_version, first.shown, first.why) == ("cat", 0.55, "12", "before", WHY)
    assert second.shown == "after" and second.why == WHY_DOG
    assert third is None  # no guess (a gold question without one): nothing to show
    old = make_mixed_batch("b0")  # a batch exported before annotator context: every guess with the item
    assert old.guess(0).shown == "before" and old.guess(0).why is None


def test_file_drop_puts_a_guess_for_after_the_answer_in_its_own_field(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch = context_batch()
    vendor.export_batch(batch)
    tasks = [json.loads(line) for line in (tmp_path / "drop" / "b1" / "tasks.jsonl").read_text().splitlines()]
    before, after, none = tasks
    assert before["model_guess"] == {"label": "cat", "score": 0.55, "model_version": "12"} and before["why"] == WHY
    assert before["after_answer"] is None
    assert after["model_guess"] == {"label": None, "score": None, "model_version": None} and after["why"] is None
    assert after["after_answer"] == {"model_guess": {"label": "dog", "score": 0.61, "model_version": "12"}, "why": WHY_DOG}
    assert none["model_guess"]["label"] is None and none["after_answer"] is None and none["why"] is None
    assert [list(t) for t in tasks] == [list(tasks[0])] * 3  # the same fields in the same order on every task
    manifest = json.loads((tmp_path / "drop" / "b1" / "manifest.json").read_text())
    assert manifest["show_after_answer"] == ["after_answer"]
    # Only what a batch uses appears: everything before, no explanation -> neither `why` nor `after_answer`.
    plain = replace(batch, batch_id="b2", items=batch.items.assign(guess_shown="before", why=None))
    vendor.export_batch(plain)
    [task, *_] = [json.loads(line) for line in (tmp_path / "drop" / "b2" / "tasks.jsonl").read_text().splitlines()]
    assert "why" not in task and "after_answer" not in task
    assert "show_after_answer" not in json.loads((tmp_path / "drop" / "b2" / "manifest.json").read_text())


@pytest.fixture
def label_studio_vendor(tmp_path):
    return LabelStudioVendor("http://127.0.0.1:1", "token", tmp_path / "state")  # no call reaches a server here


def test_label_studio_pre_fills_only_a_guess_shown_before_and_explains_it(label_studio_vendor):
    batch = context_batch()
    before, after, none = label_studio_vendor.task_payloads(batch)
    assert before["predictions"][0]["result"][0]["value"]["choices"] == ["cat"]
    assert before["data"]["why_title"] == "Why the model thinks 'cat' (confidence 0.55)"
    assert before["data"]["why"] == "toward: amount=12.5 (+0.80); away: country=DE (-0.20)"
    # after_answer: Label Studio cannot reveal it later, so it is not sent at all (nor the explanation)
    assert "predictions" not in after and "dog" not in json.dumps(after) and after["data"]["why"] == NO_WHY
    assert "predictions" not in none and none["data"]["why"] == NO_WHY
    assert batch_has_why(batch)
    assert not batch_has_why(replace(batch, items=batch.items.assign(guess_shown="after")))


def test_label_studio_config_has_the_why_block_only_when_asked():
    root = ElementTree.fromstring(label_config(LABELS, ["body"], why=True))
    shown = [(child.tag, child.get("name"), child.get("value")) for child in root]
    assert ("Header", None, "$why_title") in shown and ("Text", "why", "$why") in shown
    assert shown.index(("Text", "why", "$why")) < [c.tag for c in root].index("Choices")
    assert "why" not in label_config(LABELS, ["body"])


def test_the_simulated_crowd_ignores_the_context(tmp_path):
    oracle = tmp_path / "oracle.parquet"
    batch = context_batch()
    write_parquet(oracle, batch.items[["item_id"]].assign(label="bird"))
    vendor = SimulatedVendor(tmp_path / "sim", oracle, SimulatedVendorParams())
    vendor.export_batch(batch)
    assert set(vendor.fetch_labels("b1").annotations["label"]) == {"bird"}
