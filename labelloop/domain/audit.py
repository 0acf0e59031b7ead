"""Unbiased estimates of a model's quality on live traffic from the audit sample (pure: arrays in, numbers out).

Audit items are drawn at random from all captured traffic with a known inclusion probability π per item
(capture keeps a uniform sample of each window, select draws uniformly from the candidates of the open
windows; labelloop/stages/audit.py). Weighting each item by w = 1/π (Horvitz-Thompson) makes a weighted mean
over the sample an unbiased estimate of the mean over the traffic; dividing by Σw instead of the population
size (the self-normalised, Hájek form used here) costs a bias of order 1/n and removes the variance the
unknown population size would add. Items drawn with a smaller π stand for more traffic.

- accuracy: Σ w·[pred = true] / Σ w; its interval is Clopper-Pearson's exact binomial interval on the
  effective counts (Kish's effective sample size n_eff = (Σw)² / Σw², successes = accuracy × n_eff), which
  is exact for equal weights and conservative at small n, where a normal interval under-covers.
- macro-F1: per-class F1 from the weighted confusion counts, averaged over the classes present in the
  sample (truth or prediction, as scikit-learn does); its interval is a weighted bootstrap's percentiles.
- per class (true class: the weighted recall) and per segment (weighted accuracy), each with its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import ArrayLike

BOOTSTRAP_ROUNDS = 400


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    n: int  # audit items behind it
    n_effective: float  # Kish's effective sample size of their weights

    def text(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class AuditEstimate:
    accuracy: Interval
    macro_f1: Interval
    confidence: float
    per_class: dict[str, Interval] = field(default_factory=dict)  # true class -> weighted recall
    per_segment: dict[str, Interval] = field(default_factory=dict)  # segment -> weighted accuracy
    segment_column: str | None = None

    @property
    def n(self) -> int:
        return self.accuracy.n

    def text(self) -> str:
        """One line, e.g. 'audit acc 0.871 [0.802, 0.921] macro-F1 0.85 [0.78, 0.90] (90%, 120 items, n_eff 98.4)'."""
        return (f"audit acc {self.accuracy.text()} macro-F1 {self.macro_f1.value:.3f} "
                f"[{self.macro_f1.low:.3f}, {self.macro_f1.high:.3f}] ({self.confidence:.0%}, {self.n} items, "
                f"n_eff {self.accuracy.n_effective:.1f})")

    def metrics(self, prefix: str = "audit_") -> dict[str, float]:
        """Flat metrics for MLflow: audit_accuracy(_low/_high), audit_macro_f1(_low/_high), audit_n, audit_n_effective,
        audit_recall.<class>, audit_segment_accuracy.<segment> (names kept to MLflow's allowed characters)."""
        out = {f"{prefix}n": float(self.n), f"{prefix}n_effective": float(self.accuracy.n_effective)}
        for name, interval in (("accuracy", self.accuracy), ("macro_f1", self.macro_f1)):
            out |= {f"{prefix}{name}": interval.value, f"{prefix}{name}_low": interval.low,
                    f"{prefix}{name}_high": interval.high}
        out |= {f"{prefix}recall.{_metric_key(k)}": v.value for k, v in self.per_class.items()}
        out |= {f"{prefix}segment_accuracy.{_metric_key(k)}": v.value for k, v in self.per_segment.items()}
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AuditEstimate:
        return cls(Interval(**data["accuracy"]), Interval(**data["macro_f1"]), float(data["confidence"]),
                   {k: Interval(**v) for k, v in data.get("per_class", {}).items()},
                   {k: Interval(**v) for k, v in data.get("per_segment", {}).items()}, data.get("segment_column"))


def _metric_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(name))[:200]


def effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw² (n for equal weights, less the more unequal they are)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    return float(total * total / np.square(weights).sum()) if len(weights) else 0.0


def weighted_proportion(hits: np.ndarray, weights: np.ndarray, confidence: float) -> Interval:
    """The self-normalised weighted share of `hits` with Clopper-Pearson's interval on the effective counts."""
    from scipy.stats import beta

    hits = np.asarray(hits, dtype=bool)
    weights = np.asarray(weights, dtype=np.float64)
    if not len(hits):
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0.0)
    value = float(weights[hits].sum() / weights.sum())
    n_eff = effective_size(weights)
    successes = value * n_eff
    alpha = 1.0 - confidence
    low = 0.0 if successes <= 0 else float(beta.ppf(alpha / 2, successes, n_eff - successes + 1))
    high = 1.0 if successes >= n_eff else float(beta.ppf(1 - alpha / 2, successes + 1, n_eff - successes))
    return Interval(value, min(low, value), max(high, value), len(hits), n_eff)


def weighted_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> float:
    """Macro-F1 from weighted confusion counts over the classes present in `y_true` or `y_pred`."""
    classes = np.union1d(y_true, y_pred)
    scores = []
    for value in classes:
        true_c, pred_c = y_true == value, y_pred == value
        tp = weights[true_c & pred_c].sum()
        denominator = weights[true_c].sum() + weights[pred_c].sum()
        scores.append(0.0 if denominator == 0 else 2 * tp / denominator)
    return float(np.mean(scores)) if scores else float("nan")


def _bootstrap_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, confidence: float,
                        rounds: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = np.empty(rounds)
    for r in range(rounds):
        rows = rng.integers(0, n, n)
        values[r] = weighted_macro_f1(y_true[rows], y_pred[rows], weights[rows])
    alpha = 1.0 - confidence
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def estimate(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike, class_names: Sequence[str],
             segments: ArrayLike | None = None, confidence: float = 0.9, *, segment_column: str | None = None,
             bootstrap_rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> AuditEstimate:
    """The importance-weighted accuracy and macro-F1 of predictions `y_pred` on audit items with true labels
    `y_true` and weights 1/π, with `confidence` intervals, per true class (recall, for every name in
    `class_names` present in `y_true`) and per segment (`segments`: one value per item, e.g. the
    `select.group_column` value). Raises ValueError on empty or mismatched input or a weight that is not a
    positive finite number."""
    truth = np.asarray([str(v) for v in np.asarray(y_true, dtype=object).ravel()], dtype=object)
    predicted = np.asarray([str(v) for v in np.asarray(y_pred, dtype=object).ravel()], dtype=object)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if not len(truth):
        raise ValueError("an audit estimate needs at least one audit item")
    if len(predicted) != len(truth) or len(w) != len(truth):
        raise ValueError(f"y_true, y_pred and weights differ in length: {len(truth)}, {len(predicted)}, {len(w)}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("audit weights must be positive finite numbers (1 / inclusion probability)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    hits = np.asarray(truth == predicted, dtype=bool)
    accuracy = weighted_proportion(hits, w, confidence)
    f1 = weighted_macro_f1(truth, predicted, w)
    low, high = _bootstrap_macro_f1(truth, predicted, w, confidence, bootstrap_rounds, seed)
    macro_f1 = Interval(f1, min(low, f1), max(high, f1), len(truth), accuracy.n_effective)
    per_class = {}
    for name in class_names:
        rows = np.asarray(truth == str(name), dtype=bool)
        if rows.any():
            per_class[str(name)] = weighted_proportion(hits[rows], w[rows], confidence)
    per_segment: dict[str, Interval] = {}
    if segments is not None:
        values = np.asarray(["" if v is None else str(v) for v in np.asarray(segments, dtype=object).ravel()], dtype=object)
        if len(values) != len(truth):
            raise ValueError(f"segments has {len(values)} values for {len(truth)} audit items")
        for value in sorted(set(values.tolist())):
            rows = np.asarray(values == value, dtype=bool)
            per_segment[str(value)] = weighted_proportion(hits[rows], w[rows], confidence)
    return AuditEstimate(accuracy, macro_f1, float(confidence), per_class, per_segment, segment_column)
