import pytest

from labelloop.config import GateParams
from labelloop.domain.gate import ModelMetrics, decide


def _m(version, accuracy, recall=None, ece=0.05, new_labels=100, holdout="h1"):
    return ModelMetrics(version, {"accuracy": accuracy, "macro_f1": accuracy - 0.02, "ece": ece, "neg_log_loss": -0.5},
                        recall or {"a": 0.9, "b": 0.8}, holdout, new_labels)


def test_first_model_is_promoted_with_a_reason():
    decision = decide(_m("1", 0.7), None, GateParams())
    assert decision.promote and "no champion" in decision.reasons[0]


def test_gain_at_least_min_delta_promotes():
    decision = decide(_m("2", 0.82), _m("1", 0.80), GateParams(min_delta=0.01))
    assert decision.promote
    assert any("+0.0200" in r for r in decision.reasons)


def test_gain_below_min_delta_is_refused_with_the_numbers():
    decision = decide(_m("2", 0.805), _m("1", 0.80), GateParams(min_delta=0.01))
    assert not decision.promote
    assert any("< min_delta 0.01" in r for r in decision.reasons)


def test_better_accuracy_but_a_class_recall_collapse_is_refused_naming_the_class():
    challenger = _m("2", 0.90, recall={"a": 0.99, "b": 0.50})
    decision = decide(challenger, _m("1", 0.80), GateParams(max_class_recall_drop=0.1))
    assert not decision.promote
    assert any("'b'" in r and "max_class_recall_drop" in r for r in decision.reasons)


def test_calibration_guardrail():
    decision = decide(_m("2", 0.9, ece=0.30), _m("1", 0.8, ece=0.05), GateParams(max_ece_increase=0.1))
    assert not decision.promote and any("calibration" in r for r in decision.reasons)


def test_too_few_new_labels_is_refused():
    decision = decide(_m("2", 0.9, new_labels=5), _m("1", 0.8), GateParams(min_new_labels=50))
    assert not decision.promote and any("min_new_labels" in r for r in decision.reasons)


def test_different_holdouts_cannot_be_compared():
    with pytest.raises(ValueError, match="different holdout"):
        decide(_m("2", 0.9, holdout="h2"), _m("1", 0.8, holdout="h1"), GateParams())


def test_neg_log_loss_as_primary_metric_means_lower_loss_wins():
    challenger = ModelMetrics("2", {"neg_log_loss": -0.4, "accuracy": 0.8}, {}, "h", 10)
    champion = ModelMetrics("1", {"neg_log_loss": -0.5, "accuracy": 0.8}, {}, "h", 0)
    assert decide(challenger, champion, GateParams(primary_metric="neg_log_loss")).promote
    assert not decide(champion, challenger, GateParams(primary_metric="neg_log_loss")).promote


def test_a_rolled_back_challenger_is_judged_on_its_metrics_not_refused_for_negative_new_labels():
    # Before: "only -100 new labels < min_new_labels" after every data rollback.
    decision = decide(_m("3", 0.9, new_labels=-100), _m("2", 0.85), GateParams(min_new_labels=50))
    assert decision.promote
    assert any("100 fewer labels" in r and "does not apply" in r for r in decision.reasons)
    assert not any("-100" in r for r in decision.reasons)
