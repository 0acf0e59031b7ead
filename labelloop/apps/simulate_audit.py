"""The audit sample in the simulator (`labelloop simulate --audit-fraction`), where the truth is known.

Each round mirrors the production loop (labelloop/stages/audit.py): the round's live traffic (its window) is the
unlabelled pool; capture keeps a uniform sample of at most `sample_rows` of it, select draws
round(audit_fraction × batch_size) audit items uniformly from those candidates before the strategy picks its batch
from the rest, each audit item weighted 1 / (π_capture × π_select). The round's model — trained before they were
drawn, so never on them — is estimated on them (labelloop/domain/audit.py), and compared with its accuracy on the
whole window's hidden truth; then the audit items join the labelled set with the batch (used to evaluate first,
trained on after). Each curve row gets audit_n, audit_accuracy(_low/_high), live_accuracy and audit_covered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelloop.domain.audit import estimate

CONFIDENCE = 0.9


def audit_items(fraction: float, batch_size: int) -> int:
    """As `select.audit_items`: round(fraction × batch size), at least 1 when the fraction is positive."""
    return 0 if fraction <= 0 else max(1, round(fraction * batch_size))


class AuditRun:
    """The audit sample of one simulated strategy run."""

    def __init__(self, fraction: float, batch_size: int, sample_rows: int, labels: np.ndarray, class_names: list[str],
                 seed: list[int]) -> None:
        self.k = audit_items(fraction, batch_size)
        self.sample_rows = sample_rows
        self.labels = labels
        self.class_names = class_names
        self.seed = seed
        self.drawn = np.empty(0, dtype=np.int64)

    def measure(self, predict, rows, window: np.ndarray, round_: int) -> dict[str, Any]:
        """Draw this round's audit items from `window` (row indices of the live traffic) and estimate the model
        (`predict(rows(index))`) on them; the curve row's audit fields. Nothing when the window is empty."""
        self.drawn = np.empty(0, dtype=np.int64)
        if self.k == 0 or len(window) == 0:
            return {}
        window = np.sort(window)
        rng = np.random.default_rng([*self.seed, round_, 23])
        sampled = min(self.sample_rows, len(window))
        candidates = rng.choice(window, sampled, replace=False)
        k = min(self.k, sampled)
        positions = rng.choice(sampled, k, replace=False)
        self.drawn = np.sort(candidates[positions])
        predicted = np.asarray(predict(rows(window))).astype(str)
        truth = self.labels[window].astype(str)
        live = float(np.mean(predicted == truth))
        at = np.searchsorted(window, self.drawn)
        weight = 1.0 / ((sampled / len(window)) * (k / sampled))
        result = estimate(truth[at], predicted[at], np.full(k, weight), self.class_names, confidence=CONFIDENCE,
                          bootstrap_rounds=50)
        acc = result.accuracy
        return {"audit_n": k, "audit_accuracy": acc.value, "audit_accuracy_low": acc.low, "audit_accuracy_high": acc.high,
                "audit_macro_f1": result.macro_f1.value, "live_accuracy": live,
                "audit_covered": bool(acc.low <= live <= acc.high)}


def coverage(curves) -> dict[str, Any]:
    """Share of rounds whose live accuracy lies in the audit's interval, overall and per strategy (curve rows with
    audit fields only); {} when the run had no audit sample."""
    if "audit_covered" not in curves.columns:
        return {}
    rows = curves[curves["audit_covered"].notna()]
    if rows.empty:
        return {}
    covered = rows["audit_covered"].astype(bool)
    width = (rows["audit_accuracy_high"] - rows["audit_accuracy_low"]).astype(float)
    return {"rounds": len(rows), "coverage": float(covered.mean()), "mean_width": float(width.mean()),
            "mean_error": float((rows["audit_accuracy"] - rows["live_accuracy"]).astype(float).mean()),
            "per_strategy": {str(s): float(g["audit_covered"].astype(bool).mean())
                             for s, g in rows.groupby("strategy", sort=False)}}
