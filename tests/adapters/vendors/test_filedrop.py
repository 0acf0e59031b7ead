"""File-drop vendor against a temp dir: formats, manifest checks, and the import scenarios."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from labelloop.adapters.vendors.base import ExportBatch, VendorError
from labelloop.adapters.vendors.filedrop import FileDropVendor
from labelloop.batches import ReviewQueue
from labelloop.config import ImportParams
from labelloop.stages.importing import GoldTracker, process_import

from .conftest import FEATURES, LABELS, MIXED_COLUMNS, make_batch, make_mixed_batch


def write_labels(drop, batch_id, rows, *, fmt="jsonl", manifest=None, extra_lines=()):
    folder = drop / batch_id
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines)
    else:
        header = ["item_id", "annotator_id", "label"]
        text = ",".join(header) + "\n" + "".join(",".join(str(r[h]) for h in header) + "\n" for r in rows)
        text += "".join(line + "\n" for line in extra_lines)
    (folder / f"labels.{fmt}").write_text(text)
    if manifest is not None:
        (folder / "labels.manifest.json").write_text(json.dumps(manifest))
    return text.encode()


def answer(item, annotator, label):
    return {"item_id": item, "annotator_id": annotator, "label": label}


def run_import(vendor, items, batch_id, state_dir, **params):
    fetched = vendor.fetch_labels(batch_id)
    return fetched, process_import(fetched.annotations, items, LABELS, batch_id=batch_id,
                                   params=ImportParams(**params), state_dir=state_dir)


# ------------------------------------------------------------------------------------------- export
def test_export_writes_tasks_and_manifest_with_only_allowed_columns(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch, _ = make_batch("b1")
    receipt = vendor.export_batch(batch)
    assert receipt.created and receipt.n_items == 6
    tasks_bytes = (tmp_path / "drop" / "b1" / "tasks.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "drop" / "b1" / "manifest.json").read_text())
    assert manifest["row_count"] == 6 and manifest["sha256"] == hashlib.sha256(tasks_bytes).hexdigest()
    assert manifest["label_set"] == LABELS and manifest["format"] == "labelloop-filedrop/1"
    task = json.loads(tasks_bytes.splitlines()[0])
    assert set(task["features"]) == set(FEATURES)  # the allow-list only
    assert "private_note" not in json.dumps(task) and "gold" not in json.dumps(task)
    assert set(task["model_guess"]) == {"label", "score", "model_version"} and "utility" in task
    assert task["model_guess"]["model_version"] == "7" and task["priority"] in range(1, 7)


def test_tasks_carry_the_raw_values_in_schema_order_and_round_trip(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch = make_mixed_batch("b1")
    assert vendor.export_batch(batch).created
    text = (tmp_path / "drop" / "b1" / "tasks.jsonl").read_text(encoding="utf-8")
    assert text.isascii() and len(text.splitlines()) == 3  # U+2028 in a text is escaped: one line per task
    tasks = [json.loads(line) for line in text.splitlines()]
    for task, (_, row) in zip(tasks, batch.items.iterrows(), strict=True):
        assert list(task["features"]) == MIXED_COLUMNS  # the schema's order, the id column included
        for column in MIXED_COLUMNS:
            value = row[column]
            assert task["features"][column] == (None if pd.isna(value) else value), column
    first, second, third = tasks
    assert first["features"]["body"] == batch.items["body"].iloc[0]  # the text itself: newlines, quotes, U+2028
    assert first["features"]["country"] == "DE" and third["features"]["country"] == "Côte d'Ivoire"
    assert second["features"]["amount"] is None and second["features"]["country"] is None  # NaN and None: null
    assert first["model_guess"] == {"label": "cat", "score": 0.55, "model_version": "12"}
    assert third["model_guess"] == {"label": None, "score": None, "model_version": None}
    assert [t["priority"] for t in tasks] == [2, 1, 3]  # utility -0.25, -0.01, -0.5: the highest first
    assert [t["annotators_wanted"] for t in tasks] == [1, 3, 1]
    manifest = json.loads((tmp_path / "drop" / "b1" / "manifest.json").read_text())
    assert manifest["feature_columns"] == MIXED_COLUMNS
    assert [(c["name"], c["role"]) for c in manifest["columns"]] == [
        ("ticket_id", "id"), ("amount", "numeric"), ("country", "categorical"), ("body", "text"), ("x_10", "numeric"),
        ("subject", "text")]
    # Read back through the vendor (checksum checked), and exported again: the same bytes, nothing created.
    assert vendor.tasks("b1")["features"].tolist() == [t["features"] for t in tasks]
    assert not vendor.export_batch(make_mixed_batch("b1")).created


def test_a_column_the_schema_does_not_name_is_refused(tmp_path):
    batch = make_mixed_batch("b1")
    stray = ExportBatch(batch.batch_id, batch.items.assign(secret="x"), batch.label_set, [*batch.feature_columns, "secret"],
                        batch.schema)
    with pytest.raises(VendorError, match="secret"):
        FileDropVendor(str(tmp_path / "drop")).export_batch(stray)
    assert not (tmp_path / "drop" / "b1").exists()


def test_reexport_creates_nothing_and_refuses_other_content(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch, _ = make_batch("b1")
    vendor.export_batch(batch)
    mtime = (tmp_path / "drop" / "b1" / "tasks.jsonl").stat().st_mtime_ns
    again = vendor.export_batch(batch)
    assert not again.created and again.n_items == 6
    assert (tmp_path / "drop" / "b1" / "tasks.jsonl").stat().st_mtime_ns == mtime
    other, _ = make_batch("b1", seed=9)
    with pytest.raises(VendorError, match="other content"):
        vendor.export_batch(other)


def test_export_that_died_before_the_manifest_is_completed_on_rerun(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch, _ = make_batch("b1")
    (tmp_path / "drop" / "b1").mkdir(parents=True)
    (tmp_path / "drop" / "b1" / "tasks.jsonl").write_text('{"half": ')  # crash mid-way
    assert vendor.export_batch(batch).created
    assert len(vendor.tasks("b1")) == 6


def test_tampered_tasks_file_is_detected(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    batch, _ = make_batch("b1")
    vendor.export_batch(batch)
    with open(tmp_path / "drop" / "b1" / "tasks.jsonl", "a") as handle:
        handle.write('{"item_id": "extra"}\n')
    with pytest.raises(VendorError, match="no longer matches"):
        vendor.status("b1")


# -------------------------------------------------------------------------------------------- import
def test_partial_return_then_completion(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    fetched, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert fetched.annotations.empty and outcome.labels.empty and len(outcome.pending) == 6
    ids = items["item_id"].tolist()
    write_labels(drop, "b1", [answer(i, "ann1", "cat") for i in ids[:3]])
    _, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert outcome.labels["item_id"].tolist() == ids[:3] and outcome.pending == ids[3:]
    assert vendor.status("b1").n_completed == 3
    write_labels(drop, "b1", [answer(i, "ann1", "cat") for i in ids])
    _, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert len(outcome.labels) == 6 and outcome.pending == [] and vendor.status("b1").done


def test_csv_return_with_duplicates_unknown_label_and_unknown_item(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    rows = [answer(ids[0], "ann1", "dog"), answer(ids[0], "ann1", "cat"),  # duplicate: last kept
            answer(ids[1], "ann1", "horse"),                                 # unknown label
            answer("not-in-batch", "ann1", "cat"),                           # unknown item
            answer(ids[2], "ann1", "bird")]
    raw = write_labels(drop, "b1", rows, fmt="csv")
    fetched, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert fetched.raw_payload == raw and fetched.payload_name == "labels.csv"
    assert dict(zip(outcome.labels["item_id"], outcome.labels["label"])) == {ids[0]: "cat", ids[2]: "bird"}
    reasons = sorted(outcome.quarantined["reason"])
    assert reasons == sorted(["duplicate answer by this annotator for this item (the last one is kept)",
                              "label is not in the label set", "item_id is not in this batch"])
    # The labels file was archived unchanged, once per distinct content.
    archived = list((drop / "b1" / "archive").iterdir())
    assert len(archived) == 1 and archived[0].read_bytes() == raw


def test_malformed_lines_are_quarantined_with_line_numbers(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    write_labels(drop, "b1", [answer(ids[0], "a", "cat")], extra_lines=['{"item_id": "x", "label":', "[1, 2]",
                 json.dumps({"item_id": ids[1], "annotator_id": "a", "label": "dog", "batch_id": "other"})])
    _, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert outcome.labels["item_id"].tolist() == [ids[0]]
    reasons = outcome.quarantined.sort_values("line")["reason"].tolist()
    assert "line 2: not valid JSON" in reasons[0] and "line 3: expected a JSON object" in reasons[1]
    assert "batch_id 'other' is not this batch" in reasons[2]


def test_malformed_csv_header_and_ragged_rows(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    (drop / "b1" / "labels.csv").write_text("item,who,answer\nx,y,z\n")
    with pytest.raises(VendorError, match="lacks columns"):
        vendor.fetch_labels("b1")
    ids = items["item_id"].tolist()
    (drop / "b1" / "labels.csv").write_text(f"item_id,annotator_id,label\n{ids[0]},a,cat\n{ids[1]},a\n")
    fetched = vendor.fetch_labels("b1")
    assert fetched.annotations["parse_error"].notna().tolist() == [False, True]
    (drop / "b1" / "labels.jsonl").write_text("")
    with pytest.raises(VendorError, match="both labels.jsonl and labels.csv"):
        vendor.fetch_labels("b1")


def test_return_manifest_catches_incomplete_upload(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1")
    vendor.export_batch(batch)
    tasks_sha = json.loads((drop / "b1" / "manifest.json").read_text())["sha256"]
    rows = [answer(i, "a", "cat") for i in items["item_id"]]
    full = "".join(json.dumps(r) + "\n" for r in rows).encode()
    manifest = {"batch_id": "b1", "tasks_sha256": tasks_sha, "row_count": 6, "sha256": hashlib.sha256(full).hexdigest()}
    write_labels(drop, "b1", rows[:4], manifest=manifest)  # upload cut short
    with pytest.raises(VendorError, match="does not match labels.manifest.json"):
        vendor.fetch_labels("b1")
    write_labels(drop, "b1", rows, manifest={**manifest, "tasks_sha256": "0" * 64})
    with pytest.raises(VendorError, match="another version"):
        vendor.fetch_labels("b1")
    write_labels(drop, "b1", rows, manifest=manifest)
    assert len(vendor.fetch_labels("b1").annotations) == 6


def test_annotator_below_gold_threshold_is_excluded_and_items_requeued(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    gold = {f"g{i}": "bird" for i in range(5)}
    batch, items = make_batch("b1", gold=gold)
    vendor.export_batch(batch)
    ids = [i for i in items["item_id"] if not i.startswith("g")]
    rows = [answer(g, "good", "bird") for g in gold] + [answer(g, "spammer", "cat") for g in gold]
    rows += [answer(ids[0], "spammer", "cat"), answer(ids[1], "spammer", "dog"), answer(ids[1], "good", "dog")]
    rows += [answer(i, "good", "cat") for i in ids[2:]]
    write_labels(drop, "b1", rows)
    _, outcome = run_import(vendor, items, "b1", tmp_path / "qc", min_gold_accuracy=0.8, min_gold_answers=5)
    assert outcome.report.excluded_annotators == ["spammer"]
    assert ids[0] not in set(outcome.labels["item_id"]) and ids[1] in set(outcome.labels["item_id"])
    assert not set(gold) & set(outcome.labels["item_id"])  # gold answers are never new labels
    assert ReviewQueue(tmp_path / "qc" / "review_queue.json").pending() == [ids[0]]
    tracker = GoldTracker(tmp_path / "qc" / "gold_tracker.json").summary().set_index("annotator_id")
    assert tracker.loc["spammer", "accuracy"] == 0.0 and tracker.loc["good", "accuracy"] == 1.0


def test_reimport_adds_no_duplicates(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1", wanted=[3, 3, 1, 1, 1, 1], gold={"g0": "cat"})
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    rows = [answer(ids[0], a, "cat") for a in ("x", "y", "z")] + [answer(ids[1], "x", "cat"), answer(ids[1], "y", "dog"),
            answer(ids[1], "z", "bird")] + [answer("g0", "x", "cat")]
    write_labels(drop, "b1", rows)
    _, first = run_import(vendor, items, "b1", tmp_path / "qc")
    _, second = run_import(vendor, items, "b1", tmp_path / "qc")
    pd.testing.assert_frame_equal(first.labels, second.labels)
    assert first.labels["item_id"].tolist() == [ids[0]]
    assert ReviewQueue(tmp_path / "qc" / "review_queue.json").frame()["item_id"].tolist() == [ids[1]]
    assert GoldTracker(tmp_path / "qc" / "gold_tracker.json").summary()["n_gold"].tolist() == [1]
    assert len(list((drop / "b1" / "archive").iterdir())) == 1
    assert first.report.agreement["n_overlap_items"] == 2


def test_unknown_batch_and_bad_batch_ids(tmp_path):
    vendor = FileDropVendor(str(tmp_path / "drop"))
    with pytest.raises(VendorError, match="never exported"):
        vendor.fetch_labels("nope")
    with pytest.raises(VendorError, match="cannot name"):
        vendor.fetch_labels("../etc")


def test_file_url_scheme_works(tmp_path):
    vendor = FileDropVendor(f"file://{tmp_path / 'drop'}")
    batch, _ = make_batch("b1")
    assert vendor.export_batch(batch).created
    assert (tmp_path / "drop" / "b1" / "manifest.json").exists()


def test_look_alike_annotator_ids_in_a_drop_are_one_annotator(tmp_path):
    drop = tmp_path / "drop"
    vendor = FileDropVendor(str(drop))
    batch, items = make_batch("b1", wanted=[2, 1, 1, 1, 1, 1])
    vendor.export_batch(batch)
    ids = items["item_id"].tolist()
    rows = [answer(ids[0], "alice", "cat"), answer(ids[0], "alice\u200b", "cat"),  # one person twice: one vote
            answer(ids[1], "\u2060\u200b", "dog")]                                 # nobody: quarantined, escaped
    write_labels(drop, "b1", rows)
    _, outcome = run_import(vendor, items, "b1", tmp_path / "qc")
    assert outcome.final.set_index("item_id").loc[ids[0], "n_votes"] == 1
    assert outcome.report.agreement["n_overlap_items"] == 0
    reasons = sorted(outcome.quarantined["reason"])
    assert reasons == ["annotator_id '\\u2060\\u200b' is empty once normalised (only invisible or space characters)",
                       "duplicate answer by this annotator for this item (the last one is kept)"]
    assert ids[1] in outcome.pending  # the quarantined answer is no answer: the item waits for a real one
