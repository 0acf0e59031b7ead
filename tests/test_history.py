"""The cycle history of a workspace (`reports/cycles.json`)."""

from __future__ import annotations

from labelloop.domain.cycle import CycleRecord
from labelloop.history import append_history, history_path, load_history
from labelloop.workspace import Workspace


def test_appended_cycles_read_back_oldest_first_with_every_field(tmp_path):
    ws = Workspace.at(tmp_path)
    assert load_history(ws) == []  # no history yet
    first = CycleRecord(cycle=0, labels=50, data_tag="data-v1", champion_version="1", champion_accuracy=0.7,
                        champion_macro_f1=0.6, decision="promote")
    second = CycleRecord(cycle=1, labels=150, data_tag="data-v2", champion_version="2", decision="promote", batch_id="b1",
                         new_labels=100, cost=12.5, primary_metric=0.8, stop={"stop": False, "reasons": [], "rules": {}})
    append_history(ws, first)
    append_history(ws, second)
    assert load_history(ws) == [first, second]
    assert history_path(ws) == ws.reports_dir / "cycles.json"
