import numpy as np
import pytest

from labelloop.domain.calibration import (
    IsotonicCalibrator,
    TemperatureScaler,
    calibration_report,
    fit_calibrator,
)
from labelloop.domain.metrics import expected_calibration_error


def overconfident(rng, n, k):
    """Labels drawn from softmax(z); the model reports softmax(3z): too sure of itself."""
    z = rng.normal(scale=1.5, size=(n, k))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > true.cumsum(axis=1)).sum(axis=1).clip(0, k - 1)
    reported = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    return reported, labels


@pytest.mark.parametrize("kind", ["temperature", "isotonic"])
def test_calibrators_lower_the_ece_of_overconfident_models(kind):
    rng = np.random.default_rng(0)
    probas, labels = overconfident(rng, 2000, 3)
    calibrator = fit_calibrator(kind, probas[:1000], labels[:1000])
    after = calibrator.transform(probas[1000:])
    np.testing.assert_allclose(after.sum(axis=1), 1.0)
    assert expected_calibration_error(after, labels[1000:]) < expected_calibration_error(probas[1000:], labels[1000:]) - 0.05


def test_temperature_keeps_the_ranking_and_validates():
    probas = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    scaled = TemperatureScaler(2.0).transform(probas)
    np.testing.assert_array_equal(scaled.argmax(axis=1), probas.argmax(axis=1))
    with pytest.raises(ValueError):
        fit_calibrator("platt", probas, np.array([0, 2]))
    with pytest.raises(ValueError):
        TemperatureScaler().fit(probas, np.array([0, 3]))
    with pytest.raises(ValueError):
        IsotonicCalibrator().fit(probas, np.array(["a", "b"]))


def test_the_calibration_report_validates_the_labels():
    probas = np.array([[0.9, 0.1], [0.6, 0.4]])
    with pytest.raises(ValueError, match="integer class indices"):
        calibration_report(TemperatureScaler(), probas, np.array(["a", "b"]))
