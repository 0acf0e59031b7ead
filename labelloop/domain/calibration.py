"""Probability calibration before scoring, and the expected calibration error (ECE).

Acquisition utilities read the model's probabilities literally, so an over-confident model hides its
uncertain rows. Fit a calibrator on a validation split (never on the rows the model was trained on),
apply it to the pool's probabilities, then score. Two calibrators:

- temperature: one scalar T, p ∝ p^(1/T) (softmax of log p / T), fitted by minimising the NLL;
  keeps the ranking of classes within a row.
- isotonic: one-vs-rest isotonic regression per class, rows renormalised; more flexible, needs more
  validation rows (hundreds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CALIBRATIONS = ("temperature", "isotonic")


def _check(probas: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    probas = np.asarray(probas, dtype=np.float64)
    if probas.ndim != 2 or probas.shape[1] == 0:
        raise ValueError(f"probas must be 2-D (rows × classes), got shape {probas.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(probas),):
            raise ValueError(f"labels must be one class index per row ({len(probas)}), got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError("labels must be integer class indices (columns of probas)")
        if len(labels) and (labels.min() < 0 or labels.max() >= probas.shape[1]):
            raise ValueError(f"labels must be within [0, {probas.shape[1]})")
    return probas, labels


def expected_calibration_error(probas: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE: Σ_bins (|bin|/n)·|accuracy − mean confidence|, equal-width confidence bins."""
    probas, labels = _check(probas, labels)
    if len(probas) == 0:
        return float("nan")
    confidence = probas.max(axis=1)
    correct = (probas.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / len(probas))


@dataclass
class TemperatureScaler:
    temperature: float = 1.0

    def fit(self, probas: np.ndarray, labels: np.ndarray) -> TemperatureScaler:
        from scipy.optimize import minimize_scalar

        probas, labels = _check(probas, labels)
        logp = np.log(np.clip(probas, 1e-12, 1.0))

        def nll(log_t: float) -> float:
            z = logp / np.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(axis=1))).mean())

        result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature = float(np.exp(result.x))
        return self

    def transform(self, probas: np.ndarray) -> np.ndarray:
        probas, _ = _check(probas)
        z = np.log(np.clip(probas, 1e-12, 1.0)) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        out = np.exp(z)
        return out / out.sum(axis=1, keepdims=True)


@dataclass
class IsotonicCalibrator:
    models: list = field(default_factory=list)

    def fit(self, probas: np.ndarray, labels: np.ndarray) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        probas, labels = _check(probas, labels)
        self.models = []
        for k in range(probas.shape[1]):
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            model.fit(probas[:, k], (labels == k).astype(np.float64))
            self.models.append(model)
        return self

    def transform(self, probas: np.ndarray) -> np.ndarray:
        probas, _ = _check(probas)
        if len(self.models) != probas.shape[1]:
            raise ValueError(f"calibrator fitted on {len(self.models)} classes, got {probas.shape[1]}")
        out = np.column_stack([m.predict(probas[:, k]) for k, m in enumerate(self.models)]) if len(probas) else probas.copy()
        out = out + 1e-6  # a class isotonic maps to 0 everywhere must not zero a whole row
        return out / out.sum(axis=1, keepdims=True)


def fit_calibrator(kind: str, probas: np.ndarray, labels: np.ndarray) -> TemperatureScaler | IsotonicCalibrator:
    if kind == "temperature":
        return TemperatureScaler().fit(probas, labels)
    if kind == "isotonic":
        return IsotonicCalibrator().fit(probas, labels)
    raise ValueError(f"unknown calibration {kind!r}; allowed: {', '.join(CALIBRATIONS)}")


def calibration_report(calibrator, probas: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ECE of the validation probabilities before and after calibration (in-sample for the calibrator)."""
    return {
        "ece_before": expected_calibration_error(probas, labels),
        "ece_after": expected_calibration_error(calibrator.transform(probas), labels),
    }
