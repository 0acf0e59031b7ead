"""The import stage on a real workspace: archive, GX validation, quarantine, aggregation, status."""

import json

import pandas as pd

from labelloop.batches import BatchStore, export_batches, select_batch
from labelloop.config import ExportParams, ImportParams, SelectParams
from labelloop.labels import import_labels
from labelloop.vendors import make_vendor
from labelloop.vendors.base import ANNOTATION_COLUMNS, FetchedLabels
from tests.test_batches import _pool


def _exported_batch(ws, size=12, annotators_wanted=1, export=None):
    _pool(ws, n=40)
    meta = select_batch(ws, SelectParams(batch_size=size))
    if annotators_wanted > 1:
        items = BatchStore(ws).items(meta.batch_id).assign(annotators_wanted=annotators_wanted)
        items.to_parquet(ws.batch_dir(meta.batch_id) / "batch.parquet")
    export = export or ExportParams()
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
