"""The audit sample on a real workspace: capture's candidates (all traffic, once through a rerun), select's audit
share and weights, the append-only audit set versioned with the data, audit items joining training only after
they evaluated a model, and the cycle's estimate."""

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import tracking, versioning
from labelloop.adapters.vendors import make_vendor
from labelloop.batches import BatchStore, load_pool
from labelloop.config import CaptureParams, ExportParams, ImportParams, SelectParams, TrainParams
from labelloop.core.io import read_json, write_parquet
from labelloop.stages import audit, dataset, gate, train
from labelloop.stages import capture as capture_stage
from labelloop.stages.capture import audit_candidates_path, audit_windows, capture
from labelloop.stages.export import export_batches
from labelloop.stages.importing import import_labels
from labelloop.stages.production import append_predictions, predictions_frame
from labelloop.stages.select import select_batch

FAST = TrainParams(n_estimators=20, max_depth=3)


def _log(ws, n, offset=0, seed=0):
    schema = ws.schema()
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[offset:offset + n]
    probas = np.random.default_rng(seed).dirichlet(np.ones(len(schema.class_names)) * 0.3, size=n)
    append_predictions(ws, predictions_frame(traffic, probas, schema, "1", traffic.item_id.tolist()))
    return traffic


def test_capture_keeps_a_uniform_sample_of_all_traffic_once_through_a_rerun(workspace, monkeypatch):
    traffic = _log(workspace, 60)
    monkeypatch.setattr(capture_stage, "_window_drift", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):  # killed after the candidates file, before the watermark
        capture(workspace, CaptureParams(confidence_threshold=0.6, audit_sample_rows=20))
    assert audit_windows(workspace) == {}  # not a window yet: select cannot draw from it
    monkeypatch.undo()
    capture(workspace, CaptureParams(confidence_threshold=0.6, audit_sample_rows=20))
    [(window, entry)] = audit_windows(workspace).items()
    assert (entry["rows"], entry["sampled"], entry["probability"]) == (60, 20, pytest.approx(1 / 3))
    candidates = pd.read_parquet(audit_candidates_path(workspace, window))
    assert len(candidates) == 20 and candidates.item_id.is_unique
    assert set(candidates.item_id) <= set(traffic.item_id)
    assert candidates.audit_probability.tolist() == pytest.approx([1 / 3] * 20) and (candidates.audit_window == window).all()
    assert (candidates.confidence >= 0.6).any()  # not only the low-confidence rows the pool gets
    capture(workspace, CaptureParams(confidence_threshold=0.6, audit_sample_rows=20))  # nothing new: no window
    assert list(audit_windows(workspace)) == [window]


def _selected(ws, n=60, sample=20, batch=10, fraction=0.3):
    _log(ws, n)
    capture(ws, CaptureParams(confidence_threshold=1.0, audit_sample_rows=sample))
    return select_batch(ws, SelectParams(strategy="margin", batch_size=batch, audit_fraction=fraction))


def test_select_adds_its_audit_share_drawn_uniformly_with_weights_and_closes_the_window(workspace):
    meta = _selected(workspace)
    rows = BatchStore(workspace).selected_items(meta.batch_id)
    audit_rows = rows[rows.is_audit.astype(bool)]
    assert len(rows) == meta.n_items == 13 and meta.metrics["audit_items"] == 3 and rows.item_id.is_unique
    assert len(audit_rows) == 3
    # π = (20 sampled of 60 rows) × (3 drawn of 20 candidates) = 1/20
    assert audit_rows.audit_weight.tolist() == pytest.approx([20.0] * 3)
    assert rows.loc[~rows.is_audit.astype(bool), "audit_weight"].isna().all()
    assert not set(rows.item_id) & set(load_pool(workspace).item_id)  # audit items left the pool too
    window = next(iter(audit_windows(workspace)))
    assert read_json(audit.draws_path(workspace)) == {window: meta.batch_id}
    # A later batch draws nothing from a window already drawn from; a new window opens a new draw.
    _log(workspace, 30, offset=60, seed=1)
    capture(workspace, CaptureParams(confidence_threshold=1.0, audit_sample_rows=20))
    later = select_batch(workspace, SelectParams(strategy="margin", batch_size=5, audit_fraction=0.2))
    later_rows = BatchStore(workspace).selected_items(later.batch_id)
    drawn = later_rows[later_rows.is_audit.astype(bool)]
    assert len(drawn) == 1 and drawn.audit_window.iloc[0] != window
    assert drawn.audit_weight.iloc[0] == pytest.approx(1 / ((20 / 30) * (1 / 20)))


def test_audit_fraction_zero_selects_no_audit_item_and_validation_is_strict():
    from labelloop.config import ConfigError, Params, parse_params

    assert SelectParams(audit_fraction=0).audit_items == 0 and SelectParams(batch_size=100, audit_fraction=0).audit_items == 0
    assert SelectParams(batch_size=100).audit_items == 10  # the default: select.audit_fraction 0.1
    assert SelectParams(batch_size=100, audit_fraction=0.1).audit_items == 10
    assert SelectParams(batch_size=3, audit_fraction=0.01).audit_items == 1
    for bad in (-0.1, 1.5, "lots"):
        with pytest.raises(ConfigError, match="select.audit_fraction"):
            parse_params({"select": {"audit_fraction": bad}})
    with pytest.raises(ConfigError, match="audit items"):
        Params().with_overrides(select={"batch_size": 500, "audit_fraction": 0.1})


def _import_all(ws):
    vendor = make_vendor(ExportParams(), ws.root)
    export_batches(ws, ExportParams(), vendor)
    import_labels(ws, ImportParams(), vendor)


def test_audit_set_is_append_only_versioned_and_joins_training_only_after_evaluating(workspace):
    meta = _selected(workspace)
    _import_all(workspace)
    items = BatchStore(workspace).selected_items(meta.batch_id)
    audit_ids = set(items.loc[items.is_audit.astype(bool), "item_id"].astype(str))
    version = dataset.update_dataset(workspace)
    audit_set = pd.read_parquet(workspace.audit_path)
    assert list(audit_set.columns) == audit.audit_columns(workspace)
    assert set(audit_set.item_id) == audit_ids and (audit_set.batch_id == meta.batch_id).all()
    assert audit_set.audit_weight.dtype == float and audit_set.audited_at.str.endswith("+00:00").all()
    labelled = set(pd.read_parquet(workspace.labeled_path).item_id.astype(str))
    assert not audit_ids & labelled and version.n_new == 10  # withheld until they evaluate a model
    assert versioning.version_of(workspace.registry_dir, workspace.audit_path) == version.tag  # versioned with it
    # A vendor's correction of an audit item and a rerun change nothing in the audit set (append-only).
    final_path = workspace.final_labels_dir / f"{meta.batch_id}.parquet"
    final = pd.read_parquet(final_path)
    changed = final.item_id.astype(str).isin(audit_ids)
    final.loc[changed, "label"] = final.loc[changed, "label"].map(lambda v: "x" + str(v))
    write_parquet(final_path, final)
    assert audit.append_audit_items(workspace) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(workspace.audit_path), audit_set)
    # Once evaluated, the audit items join the labelled set in the next version.
    write_parquet(final_path, final.assign(label=final.label.str.removeprefix("x")))
    audit.mark_evaluated(workspace, audit_ids, cycle=1)
    joined = dataset.update_dataset(workspace)
    assert joined.created and audit_ids <= set(pd.read_parquet(workspace.labeled_path).item_id.astype(str))
    assert len(pd.read_parquet(workspace.audit_path)) == 3  # still once each


def test_the_cycle_estimate_uses_only_audit_items_a_model_did_not_train_on(workspace):
    first = train.train_challenger(workspace, FAST)
    gate.promote(workspace, FAST.model_name, first.version)
    meta = _selected(workspace, n=90, sample=40, batch=10, fraction=0.8)
    _import_all(workspace)
    dataset.update_dataset(workspace)
    [champion] = audit.audit_cycle(workspace, FAST.model_name, cycle=1)
    assert champion.role == "champion" and champion.estimate is not None and champion.estimate.n == 8
    assert champion.n_trained_on == 0
    runs = tracking.client(workspace)
    run_id = runs.get_model_version(FAST.model_name, first.version).run_id
    history = runs.get_metric_history(run_id, "audit_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(champion.estimate.accuracy.value))]
    assert "audit set: 8 items" in audit.audit_status_line(workspace)
    # Evaluated: the next version trains on them, and that model has no audit item left to be judged on.
    dataset.update_dataset(workspace)
    second = train.train_challenger(workspace, FAST)
    results = audit.audit_cycle(workspace, FAST.model_name, cycle=2, challenger=second.version)
    by_role = {r.role: r for r in results}
    assert by_role["champion"].estimate.n == 8
    assert by_role["challenger"].estimate is None and by_role["challenger"].n_trained_on == 8
    assert "no audit item it did not train on" in audit.audit_text(results)
    assert [line["cycle"] for line in audit.load_report(workspace)] == [1, 2]
    assert meta.batch_id in set(pd.read_parquet(workspace.audit_path).batch_id)


def test_a_select_killed_after_recording_its_draw_draws_the_same_audit_items_on_rerun(workspace, monkeypatch):
    from labelloop.stages import select as select_stage

    _log(workspace, 60)
    capture(workspace, CaptureParams(confidence_threshold=1.0, audit_sample_rows=20))
    params = SelectParams(strategy="margin", batch_size=10, audit_fraction=0.3)
    attempted = []

    def killed(path, frame):
        attempted.append(frame)
        raise RuntimeError("killed")

    monkeypatch.setattr(select_stage, "write_parquet", killed)
    with pytest.raises(RuntimeError):  # the draw is recorded, the batch not written
        select_batch(workspace, params)
    monkeypatch.undo()
    [(window, batch_id)] = read_json(audit.draws_path(workspace)).items()
    meta = select_batch(workspace, params)
    assert meta.batch_id == batch_id  # the same batch: its windows are still open to it
    rows = BatchStore(workspace).selected_items(meta.batch_id)
    drawn = set(rows.loc[rows.is_audit.astype(bool), "item_id"])
    assert len(drawn) == 3 and drawn == set(attempted[0].loc[attempted[0].is_audit.astype(bool), "item_id"])
    assert read_json(audit.draws_path(workspace)) == {window: batch_id}


def test_audit_items_leave_for_a_file_drop_vendor_like_any_item_with_gold_and_overlap(workspace, tmp_path):
    import json

    meta = _selected(workspace)
    params = ExportParams(vendor="filedrop", filedrop_url=str(tmp_path / "drop"), gold_share=0.3, overlap_share=0.5)
    export_batches(workspace, params, make_vendor(params, workspace.root))
    lines = (tmp_path / "drop" / meta.batch_id / "tasks.jsonl").read_text().splitlines()
    tasks = {t["item_id"]: t for t in map(json.loads, lines)}
    rows = BatchStore(workspace).selected_items(meta.batch_id)
    assert set(rows.item_id.astype(str)) <= set(tasks)  # audit items too
    leaked = {k for t in tasks.values() for k in t if k.startswith("audit") or k == "is_audit"}
    assert not leaked  # annotators cannot tell an audit item
