"""Stop rules over a real workspace: the fixed stop set, the rules over the cycle history, halting."""

from __future__ import annotations

import pandas as pd
import pytest

from labelloop.stages import gate as stopping
from labelloop.config import GateParams, StopParams
from labelloop.core.io import write_parquet
from labelloop.stages.production import append_predictions
from labelloop.apps.reports import CycleRecord, append_history


def _log_part(ws, start: int, stop: int) -> None:
    traffic = pd.read_parquet(ws.simulator_dir / "traffic.parquet").iloc[start:stop]
    frame = traffic[ws.schema().feature_columns].copy()
    frame.insert(0, "prediction_id", traffic["item_id"].astype(str).to_numpy())
    frame.insert(1, "ts", pd.Timestamp("2026-11-21", tz="UTC"))
    append_predictions(ws, frame, part_name=f"part-test-{start:09d}.parquet")


def _record(cycle: int, labels: int, accuracy: float) -> CycleRecord:
    return CycleRecord(cycle=cycle, labels=labels, data_tag=f"data-v{cycle + 1}", champion_version=str(cycle + 1),
                       champion_accuracy=accuracy, champion_macro_f1=accuracy, decision="promote", batch_id=None,
                       new_labels=100)


def _predictions(ws, cycle: int, predicted: list[str]) -> None:
    write_parquet(stopping.predictions_path(ws, cycle),
                  pd.DataFrame({"prediction_id": [f"p{i}" for i in range(len(predicted))], "predicted": predicted}))


def test_the_stop_set_is_drawn_once_from_the_log_and_kept(workspace):
    assert stopping.stop_set(workspace, 50).empty  # no log yet: nothing drawn, nothing written
    assert not stopping.stop_set_path(workspace).exists()
    _log_part(workspace, 0, 300)
    first = stopping.stop_set(workspace, 50)
    logged = set(pd.read_parquet(workspace.simulator_dir / "traffic.parquet").item_id.iloc[:300])
    assert len(first) == 50 and first.prediction_id.is_unique and set(first.prediction_id) <= logged
    _log_part(workspace, 300, 600)  # more traffic later does not move the stop set
    pd.testing.assert_frame_equal(stopping.stop_set(workspace, 50), first)


def test_rules_over_the_workspace_history_report_plateau_and_stable_predictions(workspace):
    gate = GateParams(stop=StopParams(plateau_gain_per_100=0.002, plateau_cycles=2, stable_agreement=0.9, stable_cycles=2))
    append_history(workspace, _record(0, 50, 0.50))  # the seed model: not a cycle of the loop
    for cycle, labels, acc in [(1, 150, 0.80), (2, 250, 0.8010), (3, 350, 0.8015)]:
        append_history(workspace, _record(cycle, labels, acc))
    same = ["a"] * 19 + ["b"]
    for cycle in (1, 2):
        _predictions(workspace, cycle, same)
    current = _record(4, 450, 0.8020)
    _predictions(workspace, 4, ["a"] * 20)  # 95% agreement with cycle 2's model (cycle 3 trained none)

    report = stopping.evaluate(workspace, current, gate)
    assert report.stop
    assert report.rules["plateau"]["triggered"] and report.rules["plateau"]["recent_gains_per_100"] == pytest.approx([0.0005, 0.0005])
    assert report.rules["stable_predictions"]["recent_agreements"] == pytest.approx([1.0, 0.95])
    assert report.rules["stable_predictions"]["triggered"]
    assert not report.rules["label_budget"]["enabled"]

    # A clear jump in the metric ends the plateau; stricter agreement ends stability.
    jump = _record(4, 450, 0.85)
    strict = GateParams(stop=StopParams(plateau_gain_per_100=0.002, plateau_cycles=2, stable_agreement=0.99, stable_cycles=2))
    assert not stopping.evaluate(workspace, jump, strict).stop


def test_halt_obeys_the_current_rules(workspace):
    for cycle, labels, acc in [(0, 50, 0.5), (1, 150, 0.8), (2, 250, 0.85)]:
        append_history(workspace, _record(cycle, labels, acc))
    budget = StopParams(label_budget=200, plateau_gain_per_100=None, stable_agreement=None, halt=True)
    report = stopping.halted(workspace, GateParams(stop=budget))
    assert report is not None and report.reasons == ["label budget reached: 250 ≥ 200"]
    assert stopping.halted(workspace, GateParams(stop=budget.model_copy(update={"halt": False}))) is None  # report only
    assert stopping.halted(workspace, GateParams(stop=budget.model_copy(update={"label_budget": 1000}))) is None  # budget raised


def test_the_stop_set_is_drawn_past_unreadable_parts_and_integer_ids(workspace):
    # A producer with an integer prediction_id beside text ids, and a part still being written: the
    # stop set used to fail the cycle's stop-rule step (ArrowTypeError / unreadable part) every cycle.
    _log_part(workspace, 0, 30)
    traffic = pd.read_parquet(workspace.simulator_dir / "traffic.parquet").iloc[30:50]
    frame = traffic[workspace.schema().feature_columns].copy()
    frame.insert(0, "prediction_id", range(9_000_000, 9_000_020))
    frame.insert(1, "ts", pd.Timestamp("2026-11-21", tz="UTC"))
    append_predictions(workspace, frame, part_name="part-test-int-ids.parquet")
    partial = next(workspace.predictions_dir.glob("date=*/")) / "part-test-zz-partial.parquet"
    partial.write_bytes(b"PAR1 still being written")
    chosen = stopping.stop_set(workspace, size=1000)
    assert len(chosen) == 50 and chosen["prediction_id"].is_unique
    assert "9000000" in set(chosen["prediction_id"])
