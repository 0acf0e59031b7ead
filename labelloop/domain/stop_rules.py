"""Stop rules, evaluated after every cycle and reported (the loop decides what to do with them).

- label_budget: stop once this many labels are spent.
- target_metric: stop once the holdout metric reaches this value.
- plateau: stop when the gain per 100 labels stayed below `plateau_gain_per_100` over each of the
  last `plateau_cycles` cycles. The gain is the trained model's (each cycle's challenger, promoted or not,
  `CycleRecord.trained_metric`), not the champion's: a run of rejected challengers that keep improving is
  no plateau, and a champion kept while its challengers stall is one. A record without a trained metric
  (the simulator, a history written before it was recorded) falls back to its `primary_metric`; a cycle
  that trained nothing (no-new-data) is no point of the curve.
- stable predictions: stop when consecutive models agree on at least `stable_agreement` of an
  unlabeled stop set, `stable_cycles` times in a row (Bloodgood & Vijay-Shanker's stabilising predictions).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelloop.domain.cycle import CycleRecord


@dataclass
class StopRules:
    label_budget: int | None = None
    target_metric: float | None = None
    plateau_gain_per_100: float | None = 0.002
    plateau_cycles: int = 3
    stable_agreement: float | None = 0.99
    stable_cycles: int = 2

    def __post_init__(self) -> None:
        if self.label_budget is not None and self.label_budget <= 0:
            raise ValueError(f"label_budget must be positive, got {self.label_budget}")
        if self.plateau_cycles < 1 or self.stable_cycles < 1:
            raise ValueError("plateau_cycles and stable_cycles must be at least 1")
        if self.stable_agreement is not None and not (0 < self.stable_agreement <= 1):
            raise ValueError(f"stable_agreement must be within (0, 1], got {self.stable_agreement}")


@dataclass
class StopReport:
    stop: bool
    reasons: list[str]
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stop": self.stop, "reasons": list(self.reasons), "rules": self.rules}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"stop-set predictions differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if len(a) else float("nan")


def plateau_metric(record: CycleRecord) -> float | None:
    """The metric the plateau rule reads for a cycle: its trained model's; without one recorded, the cycle's
    `primary_metric` (the simulator's model, an older history's champion); None for a cycle that trained nothing."""
    if record.trained_metric is not None:
        return record.trained_metric
    if record.decision == "no-new-data":
        return None
    return record.primary_metric


def evaluate_stop_rules(history: list[CycleRecord], rules: StopRules,
                        stop_set_predictions: Sequence[np.ndarray | None] = ()) -> StopReport:
    """Evaluate every rule on the cycles so far (oldest first, each with its `primary_metric`); each rule
    reports its value and whether it fired. `stop_set_predictions`, one per cycle of `history` (None for a
    cycle that trained no model), are each cycle's model's predictions on the fixed unlabelled stop set."""
    report: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    if not history:
        return StopReport(False, [], {})
    if len(stop_set_predictions) not in (0, len(history)):
        raise ValueError(f"{len(stop_set_predictions)} stop-set predictions for {len(history)} cycles; "
                         "give one per cycle (None: none)")
    points = [(record.labels, record.primary_metric) for record in history if record.primary_metric is not None]
    if len(points) != len(history):
        raise ValueError("every cycle the stop rules read needs its primary_metric")
    n_labels, metric = points[-1]
    trained = [(record.labels, m) for record in history if (m := plateau_metric(record)) is not None]

    fired = rules.label_budget is not None and n_labels >= rules.label_budget
    report["label_budget"] = {"enabled": rules.label_budget is not None, "value": n_labels, "threshold": rules.label_budget,
                              "triggered": fired}
    if fired:
        reasons.append(f"label budget reached: {n_labels} ≥ {rules.label_budget}")

    fired = rules.target_metric is not None and metric >= rules.target_metric
    report["target_metric"] = {"enabled": rules.target_metric is not None, "value": metric, "threshold": rules.target_metric,
                               "triggered": fired}
    if fired:
        reasons.append(f"target metric reached: {metric:.4f} ≥ {rules.target_metric}")

    gains = [
        (b_metric - a_metric) / (b_labels - a_labels) * 100.0
        for (a_labels, a_metric), (b_labels, b_metric) in itertools.pairwise(trained)
        if b_labels > a_labels
    ]
    report["plateau"] = _streak(gains, rules.plateau_gain_per_100, rules.plateau_cycles, operator.lt, "recent_gains_per_100")
    if report["plateau"]["triggered"]:
        reasons.append(f"plateau: gain per 100 labels < {rules.plateau_gain_per_100} over the last {rules.plateau_cycles} cycles")

    preds = [p for p in stop_set_predictions if p is not None]
    agreements = [agreement(a, b) for a, b in itertools.pairwise(preds)]
    report["stable_predictions"] = _streak(agreements, rules.stable_agreement, rules.stable_cycles, operator.ge,
                                           "recent_agreements")
    if report["stable_predictions"]["triggered"]:
        reasons.append(f"predictions stable: agreement ≥ {rules.stable_agreement} over the last {rules.stable_cycles} cycles")
    return StopReport(bool(reasons), reasons, report)


def _streak(values: list[float], threshold: float | None, cycles: int, holds: Callable[[float, float], bool],
            recent_key: str) -> dict[str, Any]:
    """A rule that fires once each of the last `cycles` values holds against `threshold` (off without one)."""
    recent = values[-cycles:]
    fired = threshold is not None and len(recent) >= cycles and all(holds(value, threshold) for value in recent)
    return {"enabled": threshold is not None, "value": recent[-1] if recent else None, recent_key: recent,
            "threshold": threshold, "triggered": fired}
