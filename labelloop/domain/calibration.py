"""Probability calibration before scoring, judged by the expected calibration error (`metrics`' ECE).

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

from labelloop.domain.metrics import expected_calibration_error

CALIBRATIONS = ("temperature", "isotonic")


def _check(probas: np.ndarray) -> np.ndarray:
    probas = np.asarray(probas, dtype=np.float64)
    if probas.ndim != 2 or probas.shape[1] == 0:
        raise ValueError(f"probas must be 2-D (rows × classes), got shape {probas.shape}")
    return probas


def _check_labelled(probas: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probas = _check(probas)
    labels = np.asarray(labels)
    if labels.shape != (len(probas),):
        raise ValueError(f"labels must be one class index per row ({len(probas)}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be integer class indices (columns of probas)")
    if len(labels) and (labels.min() < 0 or labels.max() >= probas.shape[1]):
        raise ValueError(f"labels must be within [0, {probas.shape[1]})")
    return probas, labels


@dataclass
class TemperatureScaler:
    temperature: float = 1.0

    def fit(self, probas: np.ndarray, labels: np.ndarray) -> TemperatureScaler:
        from scipy.optimize import minimize_scalar

        probas, labels = _check_labelled(probas, labels)
        logp = np.log(np.clip(probas, 1e-12, 1.0))

        def nll(log_t: float) -> float:
            z = logp / np.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(axis=1))).mean())

        result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature = float(np.exp(result.x))
        return self

    def transform(self, probas: np.ndarray) -> np.ndarray:
        probas = _check(probas)
        z = np.log(np.clip(probas, 1e-12, 1.0)) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        out = np.exp(z)
        return out / out.sum(axis=1, keepdims=True)


@dataclass
class IsotonicCalibrator:
    models: list = field(default_factory=list)

    def fit(self, probas: np.ndarray, labels: np.ndarray) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        probas, labels = _check_labelled(probas, labels)
        self.models = []
        for k in range(probas.shape[1]):
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            model.fit(probas[:, k], (labels == k).astype(np.float64))
            self.models.append(model)
        return self

    def transform(self, probas: np.ndarray) -> np.ndarray:
        probas = _check(probas)
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
    probas, labels = _check_labelled(probas, labels)
    return {
        "ece_before": expected_calibration_error(probas, labels),
        "ece_after": expected_calibration_error(calibrator.transform(probas), labels),
    }
