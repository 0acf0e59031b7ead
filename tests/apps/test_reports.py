"""Cycle reports: what the labels cost and what each point of holdout accuracy cost."""

from __future__ import annotations

import pandas as pd
import pytest

from labelloop.apps.reports import label_spend
from labelloop.batches import BatchMeta, BatchStore
from labelloop.domain.cycle import CycleRecord
from labelloop.history import append_history


def _batch(n: int, cost: float) -> BatchMeta:
    return BatchMeta(batch_id=f"batch-{n:04d}-abcdef", key=f"k{n}", status="imported", strategy="margin", selector="topk",
                     seed=0, params={}, n_items=10, created_at="2026-11-21T00:00:00Z", cost=cost)


def test_cost_per_point_of_holdout_gain_since_the_seed_model(workspace):
    append_history(workspace, CycleRecord(cycle=0, labels=50, data_tag="data-v1", champion_version="1", champion_accuracy=0.70,
                                          champion_macro_f1=0.6, decision="promote", batch_id=None, new_labels=0))
    store = BatchStore(workspace)
    store.put(_batch(1, 12.5))
    store.put(_batch(2, 7.5))
    total, per_point = label_spend(workspace, 0.75)
    assert total == 20.0 and per_point == pytest.approx(20.0 / 5.0)
    assert label_spend(workspace, 0.70) == (20.0, None)  # no gain: nothing to divide by
    line = CycleRecord(cycle=1, labels=70, data_tag="data-v2", champion_version="2", champion_accuracy=0.75,
                       champion_macro_f1=0.7, decision="promote", batch_id=None, new_labels=20, cost=total,
                       cost_per_point=per_point).line()
    assert "cost 20.00 (4.00/pt)" in line


def test_batch_report_prices_every_answer_ordered():
    from labelloop.apps.reports import batch_markdown

    meta = _batch(3, 0.0)
    items = pd.DataFrame({"predicted": ["a", "b", "a"], "utility": [0.3, 0.2, 0.1]})
    assert "| estimated cost | 5.00 |" in batch_markdown(meta, items, 0.5)  # before the plan: the 10 new items
    meta.labels_ordered = 24  # overlap and gold answers are paid too
    report = batch_markdown(meta, items, 0.5)
    assert "| labels ordered | 24 |" in report and "| estimated cost | 12.00 |" in report



def test_import_markdown_shows_the_error_scan_and_the_guess_effect():
    from types import SimpleNamespace

    from labelloop.apps.reports import import_markdown

    side = {"answers": 20, "correct": 18, "accuracy": 0.9, "on_wrong_guess": 4, "followed_wrong_guess": 0.25}
    report = SimpleNamespace(batch_id="batch-0003", n_items=10, n_answers=20, n_labelled=10, n_quarantined=0,
                             status="imported", agreement=0.9, refused=None, n_reasked=3, n_changed=2,
                             error_scan={"n_rows": 400, "n_flagged": 9, "n_queued": 5, "folds": 5, "seconds": 1.2},
                             guess_effect={"all_batches": {"with_guess": side, "without_guess": side | {"accuracy": None}}})
    text = import_markdown([report])
    assert "- batch-0003: 3 re-asked, 2 changed" in text
    assert "400 rows, 9 flagged, 5 queued" in text
    assert "guess shown before answering: 0.900 (20 answers); answers following a wrong guess: 0.25" in text
    assert "- guess not shown: -" in text


def _history():
    return [CycleRecord(cycle=0, labels=50, champion_version="1", champion_accuracy=0.70, champion_macro_f1=0.6,
                        decision="promote", trained_version="1", trained_metric=0.70),
            CycleRecord(cycle=1, labels=150, champion_version="2", champion_accuracy=0.76, champion_macro_f1=0.7,
                        decision="promote", trained_version="2", trained_metric=0.76, cost=10.0),
            CycleRecord(cycle=2, labels=250, champion_version="2", champion_accuracy=0.76, champion_macro_f1=0.7,
                        decision="reject", trained_version="3", trained_metric=0.77, cost=20.0)]


def test_the_learning_curve_shows_gate_decisions_labels_spent_and_the_audit_interval():
    from labelloop.apps.reports import learning_curve_figure

    figure = learning_curve_figure(_history(), {2: (0.74, 0.70, 0.78)})
    ax = figure.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("promoted" in t for t in legend) and any("rejected" in t for t in legend)
    assert any("audit" in t and "90%" in t for t in legend)
    assert ax.get_xlabel() == "labels spent (cost 20.00)"
    rejected = next(c for c in ax.collections if c.get_label().startswith("trained model, rejected"))
    assert rejected.get_offsets().tolist() == [[250.0, 0.77]]  # the challenger's metric, not the champion's
    without = learning_curve_figure(_history(), {})
    assert not any("audit" in t.get_text() for t in without.axes[0].get_legend().get_texts())


def test_plots_are_written_where_the_workspace_keeps_reports(workspace):
    from labelloop.apps.reports import plot_learning_curve, plot_segments
    from labelloop.stages.monitor import record_segments

    for record in _history():
        append_history(workspace, record)
    assert plot_learning_curve(workspace).stat().st_size > 1000
    assert plot_segments(workspace) is None  # no segment monitored yet
    segment = {"column": "region", "segment": "eu", "labels": 10, "holdout_rows": 40, "holdout_accuracy": 0.8,
               "audit": {"value": 0.7, "low": 0.6, "high": 0.8, "n": 50, "n_effective": 50.0}, "reference_share": 0.5,
               "window_share": 0.9, "drifted": True, "underperforming": False}
    for cycle in (0, 1):
        record_segments(workspace, {"cycle": cycle, "segments": [segment]})
    png = plot_segments(workspace)
    assert png is not None and png.name == "segments.png" and png.stat().st_size > 1000


def test_the_cycle_summary_shows_drift_and_segments():
    from labelloop.apps.reports import cycle_markdown

    segment = {"column": "region", "segment": "us", "labels": 30, "holdout_rows": 40, "holdout_accuracy": 0.65,
               "audit": None, "reference_share": None, "window_share": None, "drifted": False, "underperforming": True}
    text = cycle_markdown(_history()[-1], monitor_line={"cycle": 2, "drift": "drift 1/3 drifted (y)", "drift_window": "w1",
                                                        "segments": [segment]})
    assert "### Drift and segments" in text and "drift 1/3 drifted (y) (window `w1`" in text
    assert "| `region` | us | 30 | 0.650 (40) | - | - | under-performing |" in text
    assert "### Drift and segments" not in cycle_markdown(_history()[-1])
