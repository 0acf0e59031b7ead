"""The record of one cycle of the loop: kept in the cycle history, read by the stop rules and the reports.

A cycle of the simulator (`labelloop simulate`) is the same record with only what a simulated round
knows: its number, its labels and the metric the stop rules watch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CycleRecord:
    cycle: int
    labels: int  # labels in the data version the cycle ended on
    data_tag: str | None = None
    champion_version: str | None = None
    champion_accuracy: float | None = None
    champion_macro_f1: float | None = None
    decision: str = "none"  # the gate's: promote | reject | no-new-data; none without a gate (the simulator)
    batch_id: str | None = None
    new_labels: int = 0
    cost: float = 0.0  # spent on labels so far (every batch's labels_bought x export.price_per_label)
    cost_per_point: float | None = None  # cost per percentage point of holdout accuracy gained since the seed model
    primary_metric: float | None = None  # the champion's gate.primary_metric (label budget, target metric)
    # The model trained on this cycle's data version (the challenger, promoted or not) and its gate.primary_metric:
    # what the plateau rule watches, so rejected challengers that keep improving do not read as a plateau.
    trained_version: str | None = None
    trained_metric: float | None = None
    stop: dict | None = None  # the stop rules' report after this cycle (StopReport.to_dict())
    capture_lost: str | None = None  # unreadable log parts capture gave up on this cycle, with their rows
    bandit: str | None = None  # select.strategy auto: the arm that drew the cycle's batch, its reward once measured
    audit: str | None = None  # the champion's (and challenger's) audit estimate on live traffic (labelloop/stages/audit.py)
    drift: str | None = None  # the capture window this cycle saw against the training data (labelloop/stages/monitor.py)
    segments: str | None = None  # monitored segments, the drifted and under-performing ones named
    autolabel: str | None = None  # the cycle's auto-labels or why they paused (labelloop/stages/autolabel.py)

    def line(self) -> str:
        acc = "-" if self.champion_accuracy is None else f"{self.champion_accuracy:.4f}"
        f1 = "-" if self.champion_macro_f1 is None else f"{self.champion_macro_f1:.4f}"
        return (f"cycle {self.cycle:>2} | labels {self.labels:>5} | champion v{self.champion_version} "
                f"acc {acc} macro-F1 {f1} | gate {self.decision:<8} | data {self.data_tag}"
                + (f" | cost {self.cost:.2f}" + (f" ({self.cost_per_point:.2f}/pt)" if self.cost_per_point is not None else "")
                   if self.cost else "")
                + (f" | stop: {'; '.join(self.stop['reasons'])}" if self.stop and self.stop.get("stop") else "")
                + (f" | capture {self.capture_lost}" if self.capture_lost else "")
                + (f" | {self.bandit}" if self.bandit else "")
                + (f" | {self.audit}" if self.audit else "")
                + (f" | {self.drift}" if self.drift else "")
                + (f" | {self.segments}" if self.segments else "")
                + (f" | {self.autolabel}" if self.autolabel else ""))
