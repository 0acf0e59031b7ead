"""The cycle record: one line per cycle, as `labelloop cycle` prints it."""

from __future__ import annotations

import dataclasses

from labelloop.domain.cycle import CycleRecord


def test_the_cycle_line_says_what_capture_gave_up():
    record = CycleRecord(cycle=3, labels=250, data_tag="data-v3", champion_version="3", champion_accuracy=0.9,
                         champion_macro_f1=0.8, decision="promote", batch_id="b", new_labels=100,
                         capture_lost="lost 1 unreadable log part: 120 rows, 4,096 bytes (see quarantine/)")
    assert "capture lost 1 unreadable log part: 120 rows" in record.line()
    assert "capture" not in dataclasses.replace(record, capture_lost=None).line()


def test_the_cycle_line_names_the_stop_rules_that_fired():
    record = CycleRecord(cycle=4, labels=300, primary_metric=0.9,
                         stop={"stop": True, "reasons": ["label budget reached: 300 ≥ 300"], "rules": {}})
    assert record.line().endswith("| stop: label budget reached: 300 ≥ 300")
    assert "stop:" not in dataclasses.replace(record, stop={"stop": False, "reasons": [], "rules": {}}).line()


def test_the_cycle_line_names_the_arm_that_drew_the_batch_before_the_audit_estimate():
    record = CycleRecord(cycle=2, labels=260, bandit="arm margin (p 0.27), reward 0.62 (gain +0.0100 on 10 audit)",
                         audit="champion v3 audit acc 0.900 [0.61, 0.99]")
    line = record.line()
    assert "| arm margin (p 0.27), reward 0.62" in line
    assert line.index("arm margin") < line.index("audit acc")
    assert "arm" not in dataclasses.replace(record, bandit=None).line()
