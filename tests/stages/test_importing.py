"""The import stage on a real workspace: archive, GX validation, quarantine, aggregation, status."""

import json

import pandas as pd
import pytest

from labelloop.adapters.vendors import make_vendor
from labelloop.adapters.vendors.base import ANNOTATION_COLUMNS, FetchedLabels
from labelloop.batches import BatchStore, ReviewQueue
from labelloop.config import ExportParams, ImportParams, SelectParams
from labelloop.domain.quality import gold_answers
from labelloop.stages.export import export_batches
from labelloop.stages.importing import GoldTracker, import_labels, process_import, scan_label_errors
from labelloop.stages.select import select_batch
from tests.stages.test_select import _pool


def _exported_batch(ws, size=12, annotators_wanted=1, export=None, pool=40):
    _pool(ws, n=pool)
    meta = select_batch(ws, SelectParams(batch_size=size, audit_fraction=0))
    export = export or ExportParams()
    if annotators_wanted > 1:  # every item is an overlap item
        export = export.model_copy(update={"overlap_share": 1.0, "overlap_annotators": annotators_wanted})
    vendor = make_vendor(export, ws.root)
    export_batches(ws, export, vendor)
    return meta.batch_id, vendor


class _Replay:
    """A vendor returning a fixed payload (what a real vendor sent, replayed)."""

    def __init__(self, batch_id, rows):
        self.batch_id, self.rows = batch_id, rows

    def fetch_labels(self, batch_id):
        frame = pd.DataFrame(self.rows, columns=ANNOTATION_COLUMNS)
        return FetchedLabels(batch_id, frame, frame.to_json(orient="records", lines=True).encode(), "labels.jsonl")


def test_import_archives_raw_payload_aggregates_and_marks_the_batch(workspace):
    batch_id, vendor = _exported_batch(workspace)
    [report] = import_labels(workspace, ImportParams(), vendor)
    assert (report.n_items, report.n_labelled, report.status) == (12, 12, "imported")
    raw = list((workspace.raw_labels_dir / batch_id).iterdir())
    assert len(raw) == 1 and raw[0].name.endswith("labels.jsonl")
    assert BatchStore(workspace).get(batch_id).status == "imported"
    assert import_labels(workspace, ImportParams(), vendor) == []  # nothing left to import


def test_dawid_skene_is_used_when_configured(workspace):
    export = ExportParams(simulated={"annotators": 3, "error_rate": 0.2, "seed": 1})
    batch_id, vendor = _exported_batch(workspace, annotators_wanted=3, export=export)
    [report] = import_labels(workspace, ImportParams(aggregation="dawid_skene", min_agreement=0.0), vendor)
    final = BatchStore(workspace).final_labels(batch_id)
    assert report.n_answers == 36
    assert set(final["method"]) == {"dawid_skene"} and (final["n_votes"] == 3).all()


def test_bad_answers_are_quarantined_with_the_failed_expectation_and_the_rest_kept(workspace):
    batch_id, _ = _exported_batch(workspace, size=3)
    items = BatchStore(workspace).items(batch_id).item_id.tolist()
    label = workspace.schema().class_names[0]
    rows = [(items[0], "ann1", label, "1"), ("not-in-batch", "ann1", label, "2"), (items[1], "ann1", "zebra", "3"),
            (items[2], "ann1", None, "4"), (items[0], "ann1", label, "5")]
    [report] = import_labels(workspace, ImportParams(), _Replay(batch_id, rows))
    assert report.n_labelled == 1 and report.status == "partial"
    [quarantine] = list(workspace.quarantine_dir.glob(f"labels-{batch_id}-*.jsonl"))
    reasons = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert len(reasons) == 4 and all(r["reason"] for r in reasons)
    assert {r["annotation_id"] for r in reasons} == {"1", "2", "3", "4"}  # an annotator's last answer counts


def test_gold_overlap_exclusion_requeue_and_resend_outside_the_budget_with_cost(workspace):
    from labelloop.config import dump_params
    from labelloop.core.io import write_text

    # Two simulated annotators: sim-0 is right, sim-1 is wrong 95% of the time.
    export = ExportParams(price_per_label=0.5, gold_share=0.5, overlap_share=0.2, overlap_annotators=2,
                          simulated={"annotators": 2, "error_rates": [0.0, 0.95], "seed": 3})
    write_text(workspace.params_path, dump_params(workspace.params().with_overrides(export=export)))
    qc = ImportParams(min_gold_accuracy=0.8, min_gold_answers=5)
    _pool(workspace, n=40)
    store = BatchStore(workspace)
    vendor = make_vendor(export, workspace.root)
    first = select_batch(workspace, SelectParams(batch_size=10, audit_fraction=0)).batch_id
    export_batches(workspace, export, vendor)
    plan = store.items(first)
    answers = vendor.fetch_labels(first).annotations
    per_item = answers.groupby("item_id")["annotator_id"].nunique()
    assert (per_item.reindex(plan["item_id"]).to_numpy() == plan["annotators_wanted"].to_numpy()).all()  # overlap answered by N
    [_] = import_labels(workspace, qc, vendor)  # one report
    meta = store.get(first)
    assert meta.labels_bought == len(answers) == meta.labels_ordered == 10 + 2 + 5 * 2
    assert meta.cost == 0.5 * meta.labels_bought
    assert GoldTracker(workspace.quality_dir / "gold_tracker.json").excluded(0.8) == ["sim-1"]
    final = store.final_labels(first)
    only_sim1 = set(per_item[per_item == 1].index) & set(answers.loc[answers["annotator_id"] == "sim-1", "item_id"])
    assert only_sim1 and not only_sim1 & set(final["item_id"])  # excluded answers never become labels
    queue = ReviewQueue(workspace.review_queue_path)
    assert only_sim1 <= set(queue.pending())

    second = select_batch(workspace, SelectParams(batch_size=10, seed=1, audit_fraction=0)).batch_id
    export_batches(workspace, export, vendor)
    plan2 = store.items(second)
    resent = set(plan2.loc[plan2["is_review"], "item_id"])
    assert only_sim1 <= resent and (plan2.loc[plan2["is_review"], "annotators_wanted"] == 2).all()
    assert store.get(second).n_items == 10 and len(plan2) == 10 + 5 + len(resent)  # re-sends are outside the budget
    assert store.get(second).quality["n_review"] == len(resent)
    store.mark(second, status="selected")  # killed after the vendor call: the queue already says "sent"
    export_batches(workspace, export, vendor)
    pd.testing.assert_frame_equal(store.items(second), plan2)  # the rerun still sends the review items
    import_labels(workspace, qc, vendor)
    assert only_sim1 <= set(store.final_labels(second)["item_id"])  # sim-0's answer settles them
    assert not only_sim1 & set(ReviewQueue(queue.path).pending())  # resolved once accepted


# ------------------------------------------------------------------------- gold tracker and QC pass
def _answers(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


def test_gold_tracker_accumulates_is_idempotent_and_excludes(tmp_path):
    gold = pd.Series({"g1": "1", "g2": "2", "g3": "1"})
    batch1 = _answers([("g1", "good", "1"), ("g2", "good", "2"), ("g3", "good", "1"),
                      ("g1", "bad", "2"), ("g2", "bad", "2"), ("g3", "bad", "2"), ("x", "bad", "1")])
    tracker = GoldTracker(tmp_path / "gold.json")
    tracker.record("b1", gold_answers(batch1, gold))
    tracker.record("b1", gold_answers(batch1, gold))  # re-run import: no double count
    summary = tracker.summary().set_index("annotator_id")
    assert summary.loc["good", "n_gold"] == 3 and summary.loc["bad", "n_correct"] == 1
    assert tracker.excluded(threshold=0.7, min_answers=5) == []  # too few answers to judge yet
    tracker.record("b2", gold_answers(batch1.replace({"b1": "b2"}), gold))
    reloaded = GoldTracker(tmp_path / "gold.json")  # persisted across batches / processes
    assert reloaded.summary().set_index("annotator_id").loc["bad", "n_gold"] == 6
    assert reloaded.excluded(threshold=0.7, min_answers=5) == ["bad"]


def test_gold_tracker_rejects_foreign_file(tmp_path):
    path = tmp_path / "gold.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a gold tracker"):
        GoldTracker(path)


def test_gold_records_written_before_normalisation_merge_into_one_annotator(tmp_path):
    path = tmp_path / "gold_tracker.json"
    path.write_text(json.dumps({"batches": {"b0": {"alice\u200b": [3, 0], "bob": [1, 1]}}}))
    tracker = GoldTracker(path)
    tracker.record("b1", pd.DataFrame({"annotator_id": ["alice"], "n_gold": [2], "n_correct": [0]}))
    summary = tracker.summary().set_index("annotator_id")
    assert summary.loc["alice", "n_gold"] == 5 and list(summary.index) == ["alice", "bob"]
    assert tracker.excluded(0.5, min_answers=5) == ["alice"]


def test_process_import_end_to_end_is_idempotent(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c", "g1"], "is_gold": [False, False, False, True],
                          "gold_label": [None, None, None, "dog"]})
    data = pd.DataFrame({
        "item_id": ["a", "a", "b", "g1", "g1", "zzz", "b"],
        "annotator_id": ["u1", "u2", "u1", "u1", "u2", "u1", "u2"],
        "label": ["cat", "cat", "dog", "dog", "dog", "cat", "bird"],
        "annotation_id": list("1234567"),
    })
    probas = pd.DataFrame({"item_id": ["a", "b", "c"], "proba_cat": [0.01, 0.5, 0.5], "proba_dog": [0.99, 0.5, 0.5]})
    params = ImportParams(contradiction_confidence=0.95)
    first = process_import(data, items, ["cat", "dog"], batch_id="b1", params=params, state_dir=tmp_path, probas=probas)
    second = process_import(data, items, ["cat", "dog"], batch_id="b1", params=params, state_dir=tmp_path, probas=probas)
    pd.testing.assert_frame_equal(first.labels, second.labels)
    assert list(first.labels["item_id"]) == ["b"]  # a: model contradicts; g1: gold
    assert set(first.quarantined["reason"]) == {"item_id is not in this batch", "label is not in the label set"}
    assert first.pending == ["c"]
    queue = ReviewQueue(tmp_path / "review_queue.json")
    assert queue.pending() == ["a"] and len(queue.frame()) == 1
    assert GoldTracker(tmp_path / "gold_tracker.json").summary()["n_gold"].tolist() == [1, 1]


def test_look_alike_annotator_ids_are_one_voter_in_votes_gold_and_agreement(tmp_path):
    """`alice` and `alice\\u200b` are one person: one vote, one gold record, no agreement with herself."""
    items = pd.DataFrame({"item_id": ["a", "b", "g1", "g2", "g3", "g4"], "is_gold": [False, False, True, True, True, True],
                          "gold_label": [None, None, "dog", "dog", "dog", "dog"]})
    data = pd.DataFrame({
        "item_id": ["a", "a", "b", "b", "g1", "g2", "g3", "g4"],
        "annotator_id": ["alice", "alice\u200b", "carol", "ｃａｒｏｌ\ufeff", "spam", "spam\u200b", " spam", "spam\u2060"],
        "label": ["cat", "cat", "dog", "dog", "cat", "cat", "cat", "cat"],
    })
    params = ImportParams(min_gold_accuracy=0.5, min_gold_answers=4)
    outcome = process_import(data, items, ["cat", "dog"], batch_id="b1", params=params, state_dir=tmp_path)
    assert outcome.final.set_index("item_id").loc[["a", "b"], "n_votes"].tolist() == [1, 1]
    assert outcome.report.agreement["n_overlap_items"] == 0  # nobody agreed with themself
    gold = GoldTracker(tmp_path / "gold_tracker.json").summary()
    assert gold[["annotator_id", "n_gold"]].values.tolist() == [["spam", 4]]
    assert outcome.report.excluded_annotators == ["spam"]  # 4 wrong gold answers by one person


# ------------------------------------------------------------------------------- annotator context
def test_gold_accuracy_with_and_without_the_guess_is_reported_and_kept_per_batch(workspace):
    export = ExportParams(gold_share=0.5, gold_guess_share=0.5, simulated={"annotators": 3, "error_rate": 0.3, "seed": 2})
    batch_id, vendor = _exported_batch(workspace, size=12, export=export)
    plan = BatchStore(workspace).items(batch_id)
    gold = plan[plan["is_gold"]]
    assert len(gold) == 6 and set(gold["guess_shown"]) == {"before", "after"}
    [report] = import_labels(workspace, ImportParams(), vendor)
    effect = report.guess_effect
    with_guess, without = effect["batch"]["with_guess"], effect["batch"]["without_guess"]
    answers = BatchStore(workspace).get(batch_id)
    assert with_guess["answers"] + without["answers"] == 6 * 3 and answers.quality["n_gold"] == 6
    assert with_guess["answers"] == 3 * int((gold["guess_shown"] == "before").sum())
    assert 0 <= with_guess["accuracy"] <= 1 and effect["all_batches"]["with_guess"] == with_guess
    tracker = json.loads((workspace.quality_dir / GoldTracker.FILE_NAME).read_text())
    assert list(tracker["guess"]) == [batch_id] and set(tracker["batches"]) == {batch_id}
    assert GoldTracker(workspace.quality_dir / GoldTracker.FILE_NAME).guess_summary()["with_guess"] == with_guess


# ------------------------------------------------------------------------------------ label-error repair
def test_the_repair_path_flag_review_queue_corrected_answer_new_data_version(workspace):
    from labelloop.stages.dataset import update_dataset

    oracle = pd.read_parquet(workspace.oracle_path).astype({"item_id": str}).set_index("item_id")["label"].astype(str)
    noisy = ExportParams(simulated={"annotators": 1, "error_rate": 0.4, "seed": 3})
    first, vendor = _exported_batch(workspace, size=40, export=noisy)
    scan = ImportParams(recheck_days=0, error_scan={"enabled": True, "min_rows": 20, "folds": 3, "max_flags": 8,
                                                     "n_estimators": 20})
    [report] = import_labels(workspace, scan, vendor)
    summary = report.error_scan
    assert summary["status"] == "done" and summary["n_labelled"] == 90 and 1 <= summary["n_queued"] <= 8
    queued = ReviewQueue(workspace.review_queue_path).frame().set_index("item_id")
    assert set(queued["reason"]) == {"label_error"} and set(queued["source_batch"]) == {first}
    final = BatchStore(workspace).final_labels(first).set_index("item_id")["label"]
    assert (queued["given_label"] == final[queued.index]).all()  # the label it doubts, as the batch gave it
    wrong = [i for i in queued.index if oracle[i] != final[i]]
    assert len(wrong) >= len(queued) / 2, summary  # most flags are real errors (40% noise)
    assert import_labels(workspace, scan, vendor) == [] and len(ReviewQueue(workspace.review_queue_path).frame()) == len(queued)
    v2 = update_dataset(workspace)  # the doubted labels are versioned as they are until someone answers again

    # The next export asks the flagged items again (3 annotators), a careful crowd answers, the import counts it.
    careful = ExportParams(simulated={"annotators": 3, "error_rate": 0.0, "seed": 3})
    second, vendor2 = _exported_batch(workspace, size=5, export=careful, pool=60)
    plan = BatchStore(workspace).items(second).set_index("item_id")
    assert set(queued.index) <= set(plan.index[plan["is_review"]]) and (plan.loc[queued.index, "annotators_wanted"] == 3).all()
    [again] = import_labels(workspace, ImportParams(recheck_days=0), vendor2)
    assert (again.n_reasked, again.n_changed) == (len(queued), len(wrong))
    assert set(ReviewQueue(workspace.review_queue_path).frame()["status"]) == {"resolved"}

    v3 = update_dataset(workspace)  # the corrected answers are relabels in a new data version
    assert v3.tag != v2.tag
    relabels = {r["item_id"]: (r["old_label"], r["new_label"], r["batch_id"]) for r in v3.relabels}
    assert relabels == {i: (final[i], oracle[i], second) for i in wrong}
    labeled = pd.read_parquet(workspace.labeled_path).set_index("item_id")
    assert (labeled.loc[wrong, "label"] == oracle[wrong]).all()


def test_the_error_scan_waits_for_enough_rows_and_never_rescans_the_same_set(workspace):
    _, vendor = _exported_batch(workspace, size=12)
    params = ImportParams(error_scan={"enabled": True, "min_rows": 500})
    [report] = import_labels(workspace, params, vendor)
    assert report.error_scan["status"] == "skipped" and "min_rows=500" in report.error_scan["reason"]
    assert scan_label_errors(workspace, params.error_scan, workspace.params().train) is None  # same labelled set
    assert ImportParams().error_scan.enabled is False  # off by default
