import numpy as np
import pytest

from labelloop.domain.stop_rules import CycleRecord, StopRules, evaluate_stop_rules


def hist(points, preds=None):
    return [CycleRecord(n, m, None if preds is None else np.array(preds[i])) for i, (n, m) in enumerate(points)]


def test_nothing_fires_early():
    report = evaluate_stop_rules(hist([(50, 0.5), (150, 0.6)]), StopRules(label_budget=1000, target_metric=0.9))
    assert not report.stop and report.reasons == []
    assert set(report.rules) == {"label_budget", "target_metric", "plateau", "stable_predictions"}


def test_budget_and_target():
    rules = StopRules(label_budget=200, target_metric=0.8, plateau_gain_per_100=None, stable_agreement=None)
    report = evaluate_stop_rules(hist([(100, 0.7), (200, 0.81)]), rules)
    assert report.rules["label_budget"]["triggered"] and report.rules["target_metric"]["triggered"]
    assert len(report.reasons) == 2


def test_plateau_needs_k_flat_cycles():
    rules = StopRules(plateau_gain_per_100=0.01, plateau_cycles=2, stable_agreement=None)
    # gains per 100 labels: 0.1, 0.005, 0.002
    points = [(100, 0.5), (200, 0.6), (300, 0.605), (400, 0.607)]
    assert not evaluate_stop_rules(hist(points[:3]), rules).stop
    report = evaluate_stop_rules(hist(points), rules)
    assert report.stop and report.rules["plateau"]["triggered"]
    assert report.rules["plateau"]["recent_gains_per_100"] == pytest.approx([0.005, 0.002])


def test_stabilising_predictions():
    rules = StopRules(plateau_gain_per_100=None, stable_agreement=0.75, stable_cycles=2)
    preds = [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 1], [0, 1, 0, 1]]
    points = [(100, 0.5), (200, 0.6), (300, 0.7), (400, 0.7)]
    report = evaluate_stop_rules(hist(points, preds), rules)
    assert report.rules["stable_predictions"]["recent_agreements"] == [0.75, 1.0]
    assert report.stop
    assert evaluate_stop_rules(hist(points[:3], preds[:3]), rules).stop  # 0.75, 0.75 at threshold 0.75
    assert not evaluate_stop_rules(hist(points[:2], preds[:2]), rules).stop  # only one agreement so far
    rules = StopRules(plateau_gain_per_100=None, stable_agreement=0.9, stable_cycles=2)
    assert not evaluate_stop_rules(hist(points, preds), rules).stop


def test_invalid_rules():
    with pytest.raises(ValueError):
        StopRules(label_budget=0)
    with pytest.raises(ValueError):
        StopRules(stable_agreement=1.5)
