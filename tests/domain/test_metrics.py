import numpy as np
import pytest

from labelloop.domain.metrics import expected_calibration_error, holdout_metrics


def test_ece_is_zero_for_perfectly_calibrated_confident_predictions():
    probas = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probas, np.array([0, 1])) == 0.0


def test_ece_of_an_overconfident_model_equals_its_gap():
    # Always 90% sure, right half of the time: one bin, gap 0.4.
    probas = np.tile([0.9, 0.1], (10, 1))
    truth = np.array([0, 1] * 5)
    assert np.isclose(expected_calibration_error(probas, truth), 0.4)


def test_ece_of_a_hand_made_case():
    probas = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin 0.9: accuracy 0.5 vs 0.9 → 0.4·2/4; bin 0.6: accuracy 1 vs 0.6 → 0.4·2/4
    assert expected_calibration_error(probas, labels) == pytest.approx(0.4)


def test_ece_without_rows_is_undefined():
    assert np.isnan(expected_calibration_error(np.empty((0, 2)), np.array([], dtype=int)))


def test_holdout_metrics_per_class_recall_and_accuracy():
    probas = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    metrics, recall = holdout_metrics(probas, np.array(["a", "b", "b", "c"]), ["a", "b", "c"])
    assert metrics["accuracy"] == 0.75
    assert recall == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert metrics["neg_log_loss"] == -metrics["log_loss"]
