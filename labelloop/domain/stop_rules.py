"""Stop rules, evaluated after every cycle and reported (the loop decides what to do with them).

- label_budget: stop once this many labels are spent.
- target_metric: stop once the holdout metric reaches this value.
- plateau: stop when the gain per 100 labels stayed below `plateau_gain_per_100` over each of the
  last `plateau_cycles` cycles.
- stable predictions: stop when consecutive models agree on at least `stable_agreement` of an
  unlabeled stop set, `stable_cycles` times in a row (Bloodgood & Vijay-Shanker's stabilising predictions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
class CycleRecord:
    n_labels: int
    metric: float
    stop_set_predictions: np.ndarray | None = None  # the cycle's model on the fixed unlabeled stop set


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


def evaluate_stop_rules(history: list[CycleRecord], rules: StopRules) -> StopReport:
    """Evaluate every rule on the cycles so far (oldest first); each rule reports its value and whether it fired."""
    report: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    if not history:
        return StopReport(False, [], {})
    last = history[-1]

    fired = rules.label_budget is not None and last.n_labels >= rules.label_budget
    report["label_budget"] = {"enabled": rules.label_budget is not None, "value": last.n_labels, "threshold": rules.label_budget, "triggered": fired}
    if fired:
        reasons.append(f"label budget reached: {last.n_labels} ≥ {rules.label_budget}")

    fired = rules.target_metric is not None and last.metric >= rules.target_metric
    report["target_metric"] = {"enabled": rules.target_metric is not None, "value": last.metric, "threshold": rules.target_metric, "triggered": fired}
    if fired:
        reasons.append(f"target metric reached: {last.metric:.4f} ≥ {rules.target_metric}")

    gains = [
        (b.metric - a.metric) / (b.n_labels - a.n_labels) * 100.0
        for a, b in zip(history[:-1], history[1:])
        if b.n_labels > a.n_labels
    ]
    recent = gains[-rules.plateau_cycles :]
    fired = (
        rules.plateau_gain_per_100 is not None
        and len(recent) >= rules.plateau_cycles
        and all(g < rules.plateau_gain_per_100 for g in recent)
    )
    report["plateau"] = {
        "enabled": rules.plateau_gain_per_100 is not None,
        "value": recent[-1] if recent else None,
        "recent_gains_per_100": recent,
        "threshold": rules.plateau_gain_per_100,
        "triggered": fired,
    }
    if fired:
        reasons.append(f"plateau: gain per 100 labels < {rules.plateau_gain_per_100} over the last {rules.plateau_cycles} cycles")

    preds = [h.stop_set_predictions for h in history if h.stop_set_predictions is not None]
    agreements = [agreement(a, b) for a, b in zip(preds[:-1], preds[1:])]
    recent = agreements[-rules.stable_cycles :]
    fired = (
        rules.stable_agreement is not None
        and len(recent) >= rules.stable_cycles
        and all(a >= rules.stable_agreement for a in recent)
    )
    report["stable_predictions"] = {
        "enabled": rules.stable_agreement is not None,
        "value": recent[-1] if recent else None,
        "recent_agreements": recent,
        "threshold": rules.stable_agreement,
        "triggered": fired,
    }
    if fired:
        reasons.append(f"predictions stable: agreement ≥ {rules.stable_agreement} over the last {rules.stable_cycles} cycles")
    return StopReport(bool(reasons), reasons, report)
