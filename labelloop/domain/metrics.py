"""Holdout metrics shared by training, the gate, the simulator, calibration and the serving checks."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probas: np.ndarray, y_true_index: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: Σ_bins (|bin|/n)·|accuracy − mean confidence|, equal-width confidence bins;
    `y_true_index` holds each row's true class as a column of `probas`. NaN without rows."""
    probas = np.asarray(probas, dtype=np.float64)
    if len(probas) == 0:
        return float("nan")
    confidence = probas.max(axis=1)
    correct = (probas.argmax(axis=1) == np.asarray(y_true_index)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def holdout_metrics(probas: np.ndarray, y_true: np.ndarray, class_names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, per-class recall) for probabilities over `class_names`."""
    # scikit-learn on use: importing it (~2 s) must not tax every command that only imports the stages' modules
    from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

    y_true = np.asarray(y_true).astype(str)
    index = {c: i for i, c in enumerate(class_names)}
    y_index = np.array([index[v] for v in y_true])
    predicted = probas.argmax(axis=1)
    clipped = np.clip(probas, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    loss = float(log_loss(y_index, clipped, labels=list(range(len(class_names)))))
    labels = list(range(len(class_names)))
    recalls = recall_score(y_index, predicted, labels=labels, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_index, predicted)),
        "macro_f1": float(f1_score(y_index, predicted, labels=labels, average="macro", zero_division=0)),
        "log_loss": loss,
        "neg_log_loss": -loss,
        "ece": expected_calibration_error(probas, y_index),
    }
    return metrics, {c: float(r) for c, r in zip(class_names, recalls, strict=True)}
