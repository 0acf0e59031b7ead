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
