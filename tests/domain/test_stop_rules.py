import numpy as np
import pytest

from labelloop.domain.cycle import CycleRecord
from labelloop.domain.stop_rules import StopRules, evaluate_stop_rules


def hist(points):
    return [CycleRecord(cycle=i + 1, labels=n, primary_metric=m) for i, (n, m) in enumerate(points)]


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
    report = evaluate_stop_rules(hist(points), rules, [np.array(p) for p in preds])
    assert report.rules["stable_predictions"]["recent_agreements"] == [0.75, 1.0]
    assert report.stop
    assert evaluate_stop_rules(hist(points[:3]), rules, [np.array(p) for p in preds[:3]]).stop  # 0.75, 0.75 at threshold 0.75
    assert not evaluate_stop_rules(hist(points[:2]), rules, [np.array(p) for p in preds[:2]]).stop  # only one agreement so far
    rules = StopRules(plateau_gain_per_100=None, stable_agreement=0.9, stable_cycles=2)
    assert not evaluate_stop_rules(hist(points), rules, [np.array(p) for p in preds]).stop


def test_invalid_rules():
    with pytest.raises(ValueError):
        StopRules(label_budget=0)
    with pytest.raises(ValueError):
        StopRules(stable_agreement=1.5)


def test_a_cycle_that_trained_no_model_has_no_predictions_and_every_cycle_needs_its_metric():
    rules = StopRules(plateau_gain_per_100=None, stable_agreement=0.75, stable_cycles=1)
    points = [(100, 0.5), (200, 0.6), (300, 0.7)]
    # The middle cycle trained no model: the first and last models are compared (agreement 0.75).
    report = evaluate_stop_rules(hist(points), rules, [np.array([0, 1, 1, 0]), None, np.array([0, 1, 0, 0])])
    assert report.rules["stable_predictions"]["recent_agreements"] == [0.75] and report.stop
    with pytest.raises(ValueError, match="one per cycle"):
        evaluate_stop_rules(hist(points), rules, [np.array([0])])
    with pytest.raises(ValueError, match="primary_metric"):
        evaluate_stop_rules([CycleRecord(cycle=1, labels=100)], rules)


def gated(points):
    """Cycles of a gated loop: (labels, champion metric, trained model's metric, decision)."""
    return [CycleRecord(cycle=i + 1, labels=n, primary_metric=champion, trained_metric=trained, decision=decision)
            for i, (n, champion, trained, decision) in enumerate(points)]


def test_plateau_reads_the_trained_models_metric_not_the_champions():
    rules = StopRules(plateau_gain_per_100=0.01, plateau_cycles=2, stable_agreement=None)
    # The champion stays at 0.70 while rejected challengers keep improving (+0.02 per 100 labels): no plateau.
    improving = gated([(100, 0.70, 0.70, "promote"), (200, 0.70, 0.69, "reject"), (300, 0.70, 0.695, "reject"),
                       (400, 0.70, 0.71, "reject"), (500, 0.70, 0.73, "reject")])
    report = evaluate_stop_rules(improving, rules)
    assert not report.rules["plateau"]["triggered"]
    assert report.rules["plateau"]["recent_gains_per_100"] == pytest.approx([0.015, 0.02])
    # The champion climbs (promoted earlier) while each new challenger is no better than the last: a plateau.
    stalled = gated([(100, 0.60, 0.70, "promote"), (200, 0.65, 0.701, "reject"), (300, 0.70, 0.702, "reject")])
    assert evaluate_stop_rules(stalled, rules).rules["plateau"]["triggered"]


def test_a_cycle_that_trained_nothing_is_no_point_of_the_plateau_curve():
    rules = StopRules(plateau_gain_per_100=0.01, plateau_cycles=1, stable_agreement=None)
    history = gated([(100, 0.70, 0.70, "promote"), (100, 0.70, None, "no-new-data"), (200, 0.70, 0.75, "reject")])
    assert evaluate_stop_rules(history, rules).rules["plateau"]["recent_gains_per_100"] == pytest.approx([0.05])
