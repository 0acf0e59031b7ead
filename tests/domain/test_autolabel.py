import numpy as np
import pytest

from labelloop.domain.autolabel import (
    choose_thresholds,
    clopper_pearson_lower,
    draw_holdback,
    pick_auto_rows,
    target_weights,
    weighted_precision,
)

SETTINGS = {"min_precision": 0.98, "confidence_level": 0.95, "min_confidence": 0.9, "min_checked_per_class": 10,
            "min_checked": 100}


def _checks(n_per_class: int, seed: int = 0, knee: float = 0.97, low_precision: float = 0.8):
    """Two classes, confidence uniform in [0.9, 1): above `knee` every prediction is right, below it
    `low_precision` of them are. The precision above a threshold t < knee is known exactly."""
    rng = np.random.default_rng(seed)
    predicted = np.repeat(["a", "b"], n_per_class)
    conf = rng.uniform(0.9, 1.0, len(predicted))
    correct = np.where(conf >= knee, True, rng.random(len(predicted)) < low_precision)
    return predicted, conf, correct


def _true_precision(t: float, knee: float = 0.97, low: float = 0.8) -> float:
    return 1.0 if t >= knee else ((1.0 - knee) + (knee - t) * low) / (1.0 - t)


def test_clopper_pearson_lower_known_values():
    # All right: the bound is alpha ** (1 / n); 150 of 150 at 95% clears 0.98, 100 of 100 does not.
    assert clopper_pearson_lower(150, 150, 0.95) == pytest.approx(0.05 ** (1 / 150))
    assert clopper_pearson_lower(150, 150, 0.95) > 0.98 > clopper_pearson_lower(100, 100, 0.95)
    assert clopper_pearson_lower(0, 10, 0.95) == 0.0
    assert clopper_pearson_lower(5, 0, 0.95) == 0.0


def test_weighted_precision_uses_the_effective_sample_size():
    correct = np.array([True] * 99 + [False])
    estimate, bound = weighted_precision(correct, np.ones(100), 0.95)
    assert estimate == pytest.approx(0.99)
    assert bound == pytest.approx(clopper_pearson_lower(99, 100, 0.95))
    # One item carrying most of the weight: the same estimate on far fewer effective items, a lower bound.
    weights = np.ones(100)
    weights[0] = 50.0
    _, skewed_bound = weighted_precision(np.ones(100, dtype=bool), weights, 0.95)
    _, flat_bound = weighted_precision(np.ones(100, dtype=bool), np.ones(100), 0.95)
    assert skewed_bound < flat_bound
    assert weighted_precision(np.array([], dtype=bool), np.array([]), 0.95) == (None, None)


def test_threshold_is_the_lowest_with_the_known_precision():
    predicted, conf, correct = _checks(3000)
    decision = choose_thresholds(["a", "b"], predicted, conf, correct, **SETTINGS)
    assert not decision.paused
    assert set(decision.thresholds) == {"a", "b"}
    for t in decision.thresholds.values():
        # Precision 0.98 is reached only from t ≈ 0.9667 up (knee 0.97, 0.8 below it).
        assert 0.955 < t < 0.975
        assert _true_precision(t) > 0.97
    assert decision.lower_bound >= 0.98
    # A threshold clearly below the knee band would have failed: its true precision is well under the target.
    assert _true_precision(0.95) < 0.95
    by_class = {c.label: c for c in decision.classes}
    assert by_class["a"].n_above >= 10 and by_class["a"].precision >= 0.98


def test_too_few_checked_items_gives_no_auto_labels():
    predicted, conf, correct = _checks(40)
    decision = choose_thresholds(["a", "b"], predicted, conf, correct, **SETTINGS)
    assert decision.paused and decision.thresholds == {}
    assert "no class qualifies" in decision.reason


def test_a_class_with_too_few_checked_items_gets_no_threshold():
    predicted, conf, correct = _checks(3000)
    rare = np.flatnonzero(predicted == "b")[:5]
    keep = (predicted == "a") | np.isin(np.arange(len(predicted)), rare)
    decision = choose_thresholds(["a", "b"], predicted[keep], conf[keep], correct[keep], **SETTINGS)
    assert set(decision.thresholds) == {"a"}


def test_pauses_when_the_precision_at_the_thresholds_in_force_drops():
    predicted, conf, correct = _checks(3000)
    first = choose_thresholds(["a", "b"], predicted, conf, correct, **SETTINGS)
    # The newest checks: the model got worse; 10% of its confident predictions are now wrong.
    rng = np.random.default_rng(1)
    new_pred, new_conf, _ = _checks(500, seed=2)
    new_correct = rng.random(len(new_pred)) >= 0.1
    all_pred, all_conf = np.r_[predicted, new_pred], np.r_[conf, new_conf]
    all_correct = np.r_[correct, new_correct]
    recent = np.r_[np.zeros(len(predicted), bool), np.ones(len(new_pred), bool)]
    second = choose_thresholds(["a", "b"], all_pred, all_conf, all_correct, **SETTINGS, in_force=first.thresholds,
                               recent=recent)
    assert second.paused and second.thresholds == {}
    assert "fell below the target" in second.reason
    assert second.remeasured["lower_bound"] < 0.98
    # The same newest checks without errors keep it going.
    third = choose_thresholds(["a", "b"], all_pred, all_conf, np.r_[correct, np.ones(len(new_pred), bool)],
                              **SETTINGS, in_force=first.thresholds, recent=recent)
    assert not third.paused and third.thresholds


def test_importance_weights_follow_the_rows_to_be_labelled():
    predicted, conf, correct = _checks(3000)
    plain = choose_thresholds(["a", "b"], predicted, conf, correct, **SETTINGS)
    # The pool's remaining rows all sit just above the knee band's bottom: the check items there count most,
    # which the plain estimate (dominated by the very confident items) does not see.
    target_conf = np.full(2000, 0.955)
    target_pred = np.repeat(["a", "b"], 1000)
    weights = target_weights(predicted, conf, None, target_pred, target_conf)
    assert weights[conf >= 0.99].sum() == 0 and weights[(conf > 0.95) & (conf < 0.97)].sum() > 0
    weighted = choose_thresholds(["a", "b"], predicted, conf, correct, **SETTINGS, target_predicted=target_pred,
                                 target_confidence=target_conf)
    assert weighted.paused or weighted.lower_bound < plain.lower_bound


def test_weights_must_be_non_negative():
    with pytest.raises(ValueError, match="non-negative"):
        choose_thresholds(["a"], ["a"], [0.95], [True], [-1.0], **SETTINGS)


def test_pick_auto_rows_most_confident_first_within_the_cap():
    predicted = np.array(["a", "a", "b", "b", "a"])
    conf = np.array([0.99, 0.95, 0.999, 0.5, 0.97])
    rows = pick_auto_rows(predicted, conf, {"a": 0.96, "b": 0.99}, max_rows=2)
    assert rows.tolist() == [2, 0]
    assert pick_auto_rows(predicted, conf, {"a": 0.96}, 10, eligible=[True, True, True, True, False]).tolist() == [0]
    assert pick_auto_rows(predicted, conf, {}, 10).tolist() == []


def test_draw_holdback_only_confident_eligible_rows():
    conf = np.array([0.5, 0.95, 0.99, 0.91, 0.97])
    rows, weights = draw_holdback(conf, 2, 0.9, seed=0, eligible=[True, True, False, True, True])
    assert len(rows) == 2 and set(rows) <= {1, 3, 4}
    assert np.all(weights == 1)
    assert draw_holdback(conf, 10, 0.999, seed=0)[0].tolist() == []
