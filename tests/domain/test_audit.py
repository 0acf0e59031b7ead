"""The audit estimate (labelloop/domain/audit.py): unbiased under known non-uniform inclusion probabilities, with
intervals that cover near their nominal level, per class and per segment."""

import numpy as np
import pytest

from labelloop.domain.audit import AuditEstimate, effective_size, estimate, weighted_macro_f1

CLASSES = ["a", "b", "c"]


def _stream(rng, n=20_000):
    """Traffic with a known truth: segment 'hard' (20% of rows, accuracy ~0.55) and 'easy' (~0.95)."""
    hard = rng.random(n) < 0.2
    y_true = rng.choice(CLASSES, n, p=[0.5, 0.3, 0.2])
    correct = rng.random(n) < np.where(hard, 0.55, 0.95)
    wrong = np.array([CLASSES[(CLASSES.index(t) + 1) % 3] for t in y_true])
    y_pred = np.where(correct, y_true, wrong)
    return y_true, y_pred, np.where(hard, "hard", "easy")


def test_weighted_estimate_is_unbiased_and_covers_where_the_unweighted_mean_is_biased():
    rng = np.random.default_rng(7)
    y_true, y_pred, segment = _stream(rng)
    truth = float(np.mean(y_true == y_pred))
    # Hard rows are sampled 6x more often than easy ones (a known, non-uniform inclusion probability).
    probability = np.where(segment == "hard", 0.03, 0.005)
    estimates, naive, covered = [], [], 0
    runs = 300
    for _ in range(runs):
        drawn = rng.random(len(y_true)) < probability
        result = estimate(y_true[drawn], y_pred[drawn], 1 / probability[drawn], CLASSES, confidence=0.9,
                          bootstrap_rounds=20)
        estimates.append(result.accuracy.value)
        naive.append(float(np.mean(y_true[drawn] == y_pred[drawn])))
        covered += result.accuracy.low <= truth <= result.accuracy.high
    # The weighted mean of many estimates is the truth (standard error of the mean ~0.002 here) ...
    assert abs(np.mean(estimates) - truth) < 0.01
    # ... while the unweighted mean over-samples the hard rows and is far off (≈ 0.74 vs 0.87).
    assert abs(np.mean(naive) - truth) > 0.08
    # The 90% interval covers the truth near its nominal rate (Clopper-Pearson on n_eff: a little above).
    assert 0.85 <= covered / runs <= 0.99


def test_equal_weights_give_the_plain_accuracy_and_an_exact_binomial_interval():
    from scipy.stats import beta

    y_true = np.array(["a"] * 8 + ["b"] * 2)
    y_pred = np.array(["a"] * 7 + ["b"] + ["b", "a"])
    result = estimate(y_true, y_pred, np.full(10, 5.0), CLASSES, confidence=0.9)
    assert result.accuracy.value == pytest.approx(0.8)
    assert result.accuracy.n_effective == pytest.approx(10)
    assert result.accuracy.low == pytest.approx(beta.ppf(0.05, 8, 3))
    assert result.accuracy.high == pytest.approx(beta.ppf(0.95, 9, 2))
    assert result.per_class["a"].value == pytest.approx(7 / 8) and result.per_class["b"].value == pytest.approx(0.5)
    assert "c" not in result.per_class  # no audit item of that class
    assert result.macro_f1.low <= result.macro_f1.value <= result.macro_f1.high


def test_macro_f1_and_segments_weight_each_item():
    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "b", "b", "b"])
    # Weight 3 on the miss: as if the traffic held three such rows.
    f1 = weighted_macro_f1(y_true, y_pred, np.array([1.0, 3.0, 1.0, 1.0]))
    # weighted counts: a: tp 1, true 4, pred 1 -> 2/5; b: tp 2, true 2, pred 5 -> 4/7
    assert f1 == pytest.approx((2 / 5 + 4 / 7) / 2)
    result = estimate(y_true, y_pred, [1.0, 3.0, 1.0, 1.0], ["a", "b"], segments=["x", "x", "y", "y"],
                      segment_column="region")
    assert result.accuracy.value == pytest.approx(3 / 6)
    assert result.per_segment["x"].value == pytest.approx(1 / 4) and result.per_segment["y"].value == 1.0
    assert result.segment_column == "region"
    assert effective_size(np.array([1.0, 3.0, 1.0, 1.0])) == pytest.approx(36 / 12)


def test_text_metrics_and_round_trip():
    result = estimate(["a", "b", "a"], ["a", "b", "b"], [2.0, 2.0, 2.0], CLASSES, segments=["s", "s", "t"])
    assert result.text().startswith("audit acc 0.667 [") and "3 items" in result.text()
    metrics = result.metrics()
    assert {"audit_accuracy", "audit_accuracy_low", "audit_accuracy_high", "audit_macro_f1", "audit_n"} <= set(metrics)
    assert metrics["audit_accuracy_low"] <= metrics["audit_accuracy"] <= metrics["audit_accuracy_high"]
    assert "audit_segment_accuracy.t" in metrics and "audit_recall.a" in metrics
    assert AuditEstimate.from_dict(result.to_dict()) == result


@pytest.mark.parametrize(("args", "message"), [
    (([], [], []), "at least one"),
    ((["a"], ["a", "b"], [1.0]), "differ in length"),
    ((["a"], ["a"], [0.0]), "positive finite"),
    ((["a"], ["a"], [float("nan")]), "positive finite"),
])
def test_bad_input_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        estimate(*args, CLASSES)


def test_the_cycle_line_carries_the_audit_estimate():
    from labelloop.domain.cycle import CycleRecord

    text = estimate(["a", "b"], ["a", "b"], [1.0, 1.0], CLASSES).text()
    assert f"| champion v2 {text}" in CycleRecord(cycle=1, labels=10, audit=f"champion v2 {text}").line()
    assert "audit" not in CycleRecord(cycle=1, labels=10).line()
