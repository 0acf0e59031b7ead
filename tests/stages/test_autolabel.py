"""Auto-labels in a real workspace: the auto batch, the labelled set's label_source, withdrawing, pausing."""

import numpy as np
import pandas as pd
import pytest

from labelloop.adapters import versioning
from labelloop.batches import BatchStore, load_pool
from labelloop.columns import ITEM_ID, LABEL
from labelloop.config import ExportParams
from labelloop.core.io import read_json, read_parquet, write_json, write_parquet
from labelloop.stages import autolabel, dataset
from labelloop.stages.export import plan_export

AUTOLABEL = {"enabled": True, "check_holdout": True, "min_precision": 0.9, "confidence": 0.9, "max_rows": 30,
             "holdback_share": 0.1, "min_checked": 50, "min_checked_per_class": 5}


def _params(ws, **autolabel_overrides):
    return ws.params().with_overrides(autolabel={**AUTOLABEL, **autolabel_overrides}, select={"batch_size": 20})


def _pool(ws, n=300):
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[:n]
    write_parquet(ws.pool_path, traffic)
    return traffic


def _model(ws, shuffle=False):
    """A model that knows the holdout (so the holdout's check items are right), or has its labels shuffled."""
    from labelloop.config import TrainParams
    from labelloop.model import LabelloopClassifier

    holdout = read_parquet(ws.holdout_path)
    labels = holdout[LABEL].astype(str).to_numpy()
    if shuffle:
        labels = np.random.default_rng(0).permutation(labels)
    return LabelloopClassifier.from_params(TrainParams(n_estimators=30, max_depth=4, n_jobs=1), ws.schema()).fit(
        holdout, labels)


def test_auto_labels_join_the_version_marked_auto_and_are_withdrawn(workspace):
    ws = workspace
    _pool(ws)
    seed_before = dataset.load_labeled(ws)
    report = autolabel.run_autolabel(ws, _params(ws), cycle=1, model=_model(ws), champion_version="1")
    assert not report.paused, report.reason
    assert report.n_auto == 30 and report.n_check == 2
    store = BatchStore(ws)
    auto_meta, check_meta = store.get(report.batch_id), store.get(report.check_batch_id)
    assert (auto_meta.status, auto_meta.vendor, auto_meta.cost, auto_meta.labels_bought) == ("auto", "auto", 0.0, 0)
    assert check_meta.status == "selected" and check_meta.strategy == autolabel.CHECK_STRATEGY
    taken = set(store.items(report.batch_id)[ITEM_ID]) | set(store.items(report.check_batch_id)[ITEM_ID])
    assert not taken & set(load_pool(ws)[ITEM_ID].astype(str))
    # A rerun of the cycle's stage finds what it did: no second batch.
    n_batches = len(store.list())
    assert autolabel.run_autolabel(ws, _params(ws), cycle=1, model=_model(ws)).batch_id == report.batch_id
    assert len(store.list()) == n_batches

    version = dataset.update_dataset(ws)
    labeled = dataset.load_labeled(ws)
    auto_rows = labeled[labeled[dataset.LABEL_SOURCE] == "auto"]
    assert version.created and len(auto_rows) == 30 and set(auto_rows["batch_id"]) == {report.batch_id}
    assert set(labeled.loc[labeled["batch_id"] == "seed", dataset.LABEL_SOURCE]) == {"human"}
    assert read_json(ws.card_path)["per_label_source"] == {"auto": 30, "human": len(seed_before)}
    # Never holdout (and gold questions come from the seed rows only; the holdout is what models are evaluated on).
    holdout_ids = set(read_parquet(ws.holdout_path)[ITEM_ID].astype(str))
    assert not set(auto_rows[ITEM_ID].astype(str)) & holdout_ids
    plan = plan_export(ws, ExportParams(gold_share=1.0, context="none"), check_meta, store)
    gold = set(plan.loc[plan["is_gold"].astype(bool), ITEM_ID].astype(str))
    assert gold and gold <= set(seed_before[ITEM_ID].astype(str))

    withdrawn = autolabel.withdraw(ws, cycle=1)
    after = dataset.load_labeled(ws)
    assert withdrawn.created and withdrawn.tag != version.tag and len(after) == len(seed_before)
    assert (after[dataset.LABEL_SOURCE] == "human").all()
    human = seed_before.sort_values(ITEM_ID).reset_index(drop=True)
    kept = after[seed_before.columns].sort_values(ITEM_ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, human, check_dtype=False)  # human labels untouched
    assert versioning.tag_message(ws.registry_dir, withdrawn.tag).startswith("Withdraw auto-labels of auto-c0001")
    # Idempotent: a rerun makes no version, and the dataset stage does not add them back.
    again = autolabel.withdraw(ws, cycle=1)
    assert (again.created, again.tag) == (False, withdrawn.tag)
    assert not dataset.update_dataset(ws).created
    assert len(dataset.load_labeled(ws)) == len(seed_before)


def test_withdraw_needs_a_known_cycle(workspace):
    with pytest.raises(ValueError, match="no auto-labels for cycle 7"):
        autolabel.withdraw(workspace, cycle=7)
    with pytest.raises(ValueError, match="exactly one"):
        autolabel.withdraw(workspace)


def test_no_auto_labels_when_the_checks_are_wrong_and_a_pause_when_precision_drops(workspace):
    ws = workspace
    _pool(ws)
    report = autolabel.run_autolabel(ws, _params(ws), cycle=1, model=_model(ws, shuffle=True), champion_version="1")
    assert report.paused and report.n_auto == 0 and report.batch_id is None
    assert "no class qualifies" in report.reason and not report.precision_low
    # Thresholds were in force; this cycle's checks say the model is now often wrong: paused, and said so.
    write_json(autolabel.state_path(ws), {"in_force": dict.fromkeys(ws.schema().class_names, 0.5)})
    report = autolabel.run_autolabel(ws, _params(ws), cycle=2, model=_model(ws, shuffle=True), champion_version="1")
    assert report.paused and report.precision_low and report.n_auto == 0
    assert "fell below the target" in report.reason
    assert report.metrics()["autolabel_precision_low"] == 1.0
    assert "PAUSED" in autolabel.status_line(ws)


def test_off_by_default(workspace):
    _pool(workspace)
    report = autolabel.run_autolabel(workspace, workspace.params(), cycle=1, model=_model(workspace))
    assert not report.enabled and report.text() == "autolabel: off"
    assert BatchStore(workspace).list() == []


def test_a_rerun_after_a_crash_before_the_report_finishes_the_same_run(workspace):
    ws = workspace
    _pool(ws)
    first = autolabel.run_autolabel(ws, _params(ws), cycle=1, model=_model(ws), champion_version="1")
    assert first.batch_id and first.check_batch_id
    # The crash: the batches are written, neither the report nor the state; the pool still holds their items.
    autolabel.report_path(ws).unlink()
    autolabel.state_path(ws).unlink()
    _pool(ws)
    n_batches = len(BatchStore(ws).list())
    again = autolabel.run_autolabel(ws, _params(ws), cycle=1, model=_model(ws), champion_version="1")
    assert (again.batch_id, again.n_auto, again.check_batch_id) == (first.batch_id, first.n_auto, first.check_batch_id)
    assert len(BatchStore(ws).list()) == n_batches
    assert not set(BatchStore(ws).items(first.batch_id)[ITEM_ID]) & set(load_pool(ws)[ITEM_ID].astype(str))


def test_holdout_checks_the_thresholds_reached_are_spent_for_later_cycles(workspace):
    ws = workspace
    _pool(ws)
    model = _model(ws)
    report = autolabel.run_autolabel(ws, _params(ws), cycle=1, model=model, champion_version="1")
    assert report.n_auto > 0, report.reason
    spent = set(read_json(autolabel.state_path(ws))["spent_holdout"])
    holdout_ids = set(read_parquet(ws.holdout_path)[ITEM_ID].astype(str))
    assert spent and spent <= holdout_ids
    checks = autolabel.check_items(ws, model, _params(ws), spent=frozenset(spent))
    from_holdout = checks[checks["source"] == "holdout"]
    assert set(from_holdout.loc[from_holdout["weight"] == 0, ITEM_ID]) == spent
    assert (from_holdout.loc[~from_holdout[ITEM_ID].isin(spent), "weight"] == 1).all()
