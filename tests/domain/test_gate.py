from math import comb

import numpy as np
import pytest
from pydantic import ValidationError

from labelloop.config import GateParams
from labelloop.domain.gate import (
    BOOTSTRAP,
    BOOTSTRAP_RESAMPLES,
    MCNEMAR,
    SEED_T,
    GateDecision,
    ModelMetrics,
    PairedRows,
    SeedTwins,
    decide,
    mcnemar,
    paired_bootstrap,
    paired_evidence,
    seed_evidence,
    t_quantile,
)
from labelloop.domain.metrics import holdout_metrics


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


def test_without_per_row_predictions_the_point_comparison_says_it_is_untested():
    decision = decide(_m("2", 0.82), _m("1", 0.80), GateParams())
    assert decision.promote and decision.evidence == []
    assert any("untested" in r for r in decision.reasons)


# -- the paired test -------------------------------------------------------------------------------

K = 4


def _proba(predicted: np.ndarray, k: int = K) -> np.ndarray:
    proba = np.full((len(predicted), k), 0.1 / (k - 1))
    proba[np.arange(len(predicted)), predicted] = 0.9
    return proba


def _pair(n: int, challenger_only: int, champion_only: int, both_right: int, seed: int = 0, name: str = "holdout",
          weights: np.ndarray | None = None) -> PairedRows:
    """n rows; the challenger alone is right on `challenger_only`, the champion alone on `champion_only`,
    both on `both_right`, neither on the rest (shuffled)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    wrong = (y + 1) % K
    kinds = np.array([0] * challenger_only + [1] * champion_only + [2] * both_right
                     + [3] * (n - challenger_only - champion_only - both_right))
    rng.shuffle(kinds)
    challenger = np.where((kinds == 0) | (kinds == 2), y, wrong)
    champion = np.where((kinds == 1) | (kinds == 2), y, wrong)
    return PairedRows(name, y, _proba(challenger), _proba(champion), weights)


def _metrics_of(version: str, rows: PairedRows, which: str) -> ModelMetrics:
    proba = rows.challenger_proba if which == "challenger" else rows.champion_proba
    metrics, recall = holdout_metrics(proba, np.array([str(c) for c in rows.y]), [str(c) for c in range(K)])
    return ModelMetrics(version, metrics, recall, "h", 100)


def _decide(rows: PairedRows, **rules) -> GateDecision:
    return decide(_metrics_of("2", rows, "challenger"), _metrics_of("1", rows, "champion"), GateParams(**rules), [rows])


def test_a_clearly_better_challenger_is_promoted_by_mcnemar():
    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)
    decision = _decide(rows)
    assert decision.promote
    [evidence] = decision.evidence
    assert (evidence.test, evidence.rows, evidence.n, evidence.metric) == (MCNEMAR, "holdout", 1287, "accuracy")
    assert (evidence.challenger_only, evidence.champion_only) == (80, 20)
    assert evidence.difference == pytest.approx(60 / 1287)
    assert evidence.lower > 0 and evidence.p_value < 1e-6 and evidence.passed
    # The paired difference is the difference of the recorded accuracies.
    assert evidence.difference == pytest.approx(decision.challenger_value - decision.champion_value)


def test_a_tiny_noisy_gain_is_rejected_and_the_reason_names_test_rows_difference_interval_and_p():
    # +0.0031 on 1,287 rows (4 more rows right out of 78 discordant): inside the noise.
    rows = _pair(1287, challenger_only=41, champion_only=37, both_right=1100)
    decision = _decide(rows)
    assert not decision.promote
    [reason] = [r for r in decision.reasons if "McNemar" in r]
    [evidence] = decision.evidence
    assert not evidence.passed and evidence.lower < 0 < evidence.upper
    assert "McNemar exact on 1,287 holdout rows" in reason
    assert "challenger alone right on 41, champion alone on 37" in reason
    assert "accuracy +0.0031" in reason
    assert f"one-sided 90% bounds [{evidence.lower:+.4f}, {evidence.upper:+.4f}]" in reason
    assert f"p={evidence.p_value:.2g} > 0.1 = 1 - min_confidence" in reason
    assert "min_delta 0.0" in reason and reason.endswith("→ reject")
    # Without the test (min_confidence 0) the same gain promotes, as the gate did before.
    assert _decide(rows, min_confidence=0).promote


def test_mcnemar_p_value_is_the_exact_binomial_tail_of_the_discordant_rows():
    # b = 10, c = 2: p = P(X >= 10) for X ~ Binomial(12, 1/2) = (1 + 12 + 66) / 4096.
    evidence = mcnemar(_pair(200, 10, 2, 150), threshold=0.0, confidence=0.9)
    assert evidence.p_value == pytest.approx(79 / 4096)
    # The bounds invert the same test: the lower bound sits where p would be exactly 1 - confidence.
    at_bound = mcnemar(_pair(200, 10, 2, 150), threshold=evidence.lower, confidence=0.9)
    assert at_bound.p_value == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("discordant", [20, 39, 80, 150])
def test_mcnemar_never_promotes_an_equal_challenger_more_often_than_one_minus_min_confidence(discordant):
    """Exactly: over every split b + c of the discordant rows, weighted by its probability when the two
    models are equally good (b ~ Binomial(b + c, 1/2)). A mid-p test fails this (13.2% at 20 rows)."""
    size = sum(comb(discordant, b) / 2 ** discordant
               for b in range(discordant + 1) if mcnemar(_pair(400, b, discordant - b, 100), 0.0, 0.9).passed)
    assert 0.03 < size <= 0.1


def test_a_required_gain_is_tested_not_just_compared():
    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)  # +0.047
    assert _decide(rows, min_delta=0.02).promote  # shown above +0.02 with 90% confidence
    decision = _decide(rows, min_delta=0.04)  # the point gain clears 0.04, the test does not
    assert not decision.promote and "min_delta 0.04" in decision.reasons[0]


def test_non_inferiority_promotes_a_retrain_that_is_not_worse_and_refuses_one_that_is():
    same = _pair(1287, challenger_only=0, champion_only=0, both_right=1100)  # a retrain predicting the same
    assert not _decide(same).promote  # no gain to show
    decision = _decide(same, mode="non_inferiority")
    assert decision.promote
    assert "a loss smaller than non_inferiority_margin 0.01" in decision.reasons[0]
    slightly_worse = _pair(5000, challenger_only=100, champion_only=110, both_right=4000)  # -0.002
    assert _decide(slightly_worse, mode="non_inferiority").promote
    worse = _pair(1287, challenger_only=20, champion_only=60, both_right=1000)  # -0.031
    decision = _decide(worse, mode="non_inferiority")
    assert not decision.promote and decision.reasons[0].endswith("→ reject")
    assert _decide(worse, mode="non_inferiority", non_inferiority_margin=0.08).promote


def test_a_guardrail_still_refuses_a_challenger_the_test_passes():
    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)
    challenger = _metrics_of("2", rows, "challenger")
    champion = _metrics_of("1", rows, "champion")
    collapsed = ModelMetrics("2", challenger.metrics, {**champion.class_recall, "0": 0.0}, "h", 100)
    decision = decide(collapsed, champion, GateParams(max_class_recall_drop=0.2), [rows])
    assert decision.evidence[0].passed and not decision.promote
    assert any("max_class_recall_drop" in r for r in decision.reasons)


@pytest.mark.parametrize("metric", ["macro_f1", "neg_log_loss"])
def test_macro_f1_and_log_loss_use_a_paired_bootstrap_that_reproduces_the_recorded_difference(metric):
    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)
    decision = _decide(rows, primary_metric=metric)
    [evidence] = decision.evidence
    assert evidence.test == BOOTSTRAP and (evidence.resamples, evidence.seed) == (BOOTSTRAP_RESAMPLES, 0)
    assert evidence.difference == pytest.approx(decision.challenger_value - decision.champion_value)
    assert decision.promote and evidence.lower > 0
    assert f"paired bootstrap (2,000 resamples, seed 0) on 1,287 holdout rows: {metric}" in decision.reasons[0]
    noisy = _pair(1287, challenger_only=41, champion_only=37, both_right=1100)
    assert not _decide(noisy, primary_metric=metric).promote


def test_the_bootstrap_is_reproducible_with_its_seed():
    rows = _pair(800, challenger_only=40, champion_only=30, both_right=600)
    first = paired_bootstrap("macro_f1", rows, 0.0, 0.9, resamples=500, seed=7)
    assert paired_bootstrap("macro_f1", rows, 0.0, 0.9, resamples=500, seed=7) == first
    other = paired_bootstrap("macro_f1", rows, 0.0, 0.9, resamples=500, seed=8)
    assert other.difference == first.difference and (other.lower, other.p_value) != (first.lower, first.p_value)


def test_weighted_rows_are_tested_by_the_bootstrap_with_a_weighted_difference():
    # Audit rows later carry inverse sampling probabilities: accuracy is then weighted and bootstrapped.
    rows = _pair(600, challenger_only=60, champion_only=0, both_right=400)
    right_only_by_challenger = rows.challenger_proba.argmax(axis=1) != rows.champion_proba.argmax(axis=1)
    weights = np.where(right_only_by_challenger, 0.5, 1.0)
    weighted = PairedRows("audit", rows.y, rows.challenger_proba, rows.champion_proba, weights)
    evidence = paired_evidence(weighted, GateParams())
    assert evidence.test == BOOTSTRAP and evidence.rows == "audit"
    assert evidence.difference == pytest.approx(30 / weights.sum())


def test_every_row_set_must_pass():
    holdout = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)
    audit = _pair(300, challenger_only=10, champion_only=12, both_right=200, seed=1, name="audit")
    decision = decide(_metrics_of("2", holdout, "challenger"), _metrics_of("1", holdout, "champion"), GateParams(),
                      [holdout, audit])
    assert [e.rows for e in decision.evidence] == ["holdout", "audit"]
    assert [e.passed for e in decision.evidence] == [True, False] and not decision.promote
    assert any("300 audit rows" in r and r.endswith("→ reject") for r in decision.reasons)


def test_false_promotions_of_an_equal_challenger_stay_within_one_minus_min_confidence():
    """Many challengers exactly as good as the champion (each row's two predictions exchangeable): the test
    promotes at most ~10% of them at min_confidence 0.9 (seeded, so the count is fixed)."""
    rng = np.random.default_rng(2026)
    promoted = 0
    trials = 400
    for _ in range(trials):
        n = 1000
        y = rng.integers(0, K, n)
        wrong = (y + 1) % K
        hard = rng.random(n) < 0.15  # rows where each model is right half the time, independently
        right = [~hard | (rng.random(n) < 0.5) for _ in range(2)]
        rows = PairedRows("holdout", y, _proba(np.where(right[0], y, wrong)), _proba(np.where(right[1], y, wrong)))
        promoted += paired_evidence(rows, GateParams()).passed
    assert 0.05 * trials < promoted <= 0.11 * trials  # a test that never promotes would fail this too


def test_bad_paired_rows_and_gate_keys_are_refused_by_name():
    y = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="champion_proba must be"):
        PairedRows("holdout", y, _proba(y), _proba(np.zeros(2, dtype=int)))
    with pytest.raises(ValidationError, match="min_confidence"):
        GateParams(min_confidence=1.0)
    with pytest.raises(ValidationError, match="mode"):
        GateParams(mode="better")


# -- the audit guard: the audit rows neither model trained on -----------------------------------------

_BETTER_ON_HOLDOUT = dict(n=1287, challenger_only=80, champion_only=20, both_right=1000)
_WORSE_ON_AUDIT = dict(n=60, challenger_only=0, champion_only=15, both_right=40)
_EQUAL_ON_AUDIT = dict(n=60, challenger_only=5, champion_only=5, both_right=40)


@pytest.mark.parametrize(("holdout", "audit", "rules", "promote", "audit_says"), [
    (_BETTER_ON_HOLDOUT, _EQUAL_ON_AUDIT, {}, True, "not significantly worse (upper bound >= 0) → pass"),
    (_BETTER_ON_HOLDOUT, _WORSE_ON_AUDIT, {}, False, "significantly worse on live traffic (upper bound < 0) → reject"),
    (_BETTER_ON_HOLDOUT, _WORSE_ON_AUDIT, {"audit_min_rows": 61}, True, "60 rows < audit_min_rows 61: reported, not used"),
    (_BETTER_ON_HOLDOUT, _WORSE_ON_AUDIT, {"audit_guard": False}, True, None),
    (_BETTER_ON_HOLDOUT, _WORSE_ON_AUDIT, {"min_confidence": 0}, True, None),
    (dict(n=1287, challenger_only=41, champion_only=37, both_right=1100), _EQUAL_ON_AUDIT, {}, False,
     "not significantly worse (upper bound >= 0) → pass"),  # a guard never promotes
], ids=["equal-on-audit", "worse-on-audit", "too-few-audit-rows", "guard-off", "no-test", "holdout-fails"])
def test_the_audit_guard_decision_table(holdout, audit, rules, promote, audit_says):
    rows = _pair(holdout["n"], holdout["challenger_only"], holdout["champion_only"], holdout["both_right"])
    weights = np.random.default_rng(3).uniform(5, 15, audit["n"])  # inverse sampling probabilities
    audit_rows = _pair(audit["n"], audit["challenger_only"], audit["champion_only"], audit["both_right"], seed=1,
                       name="audit", weights=weights)
    decision = decide(_metrics_of("2", rows, "challenger"), _metrics_of("1", rows, "champion"), GateParams(**rules),
                      [rows], audit_rows)
    assert decision.promote is promote
    guard = [r for r in decision.reasons if r.startswith("audit guard:")]
    if audit_says is None:
        assert guard == [] and "audit" not in [e.rows for e in decision.evidence]
        return
    [reason] = guard
    evidence = decision.evidence[-1]
    assert evidence.rows == "audit" and evidence.n == audit["n"] and evidence.test == BOOTSTRAP
    # The reason names the test, the rows, the difference and its interval.
    assert reason.endswith(audit_says)
    assert f"{BOOTSTRAP} ({BOOTSTRAP_RESAMPLES:,} resamples, seed 0) on {audit['n']} audit rows" in reason
    assert f"accuracy {evidence.difference:+.4f}, one-sided 90% bounds [{evidence.lower:+.4f}, {evidence.upper:+.4f}]" in reason
    assert evidence.passed == (evidence.upper >= 0)


def test_the_audit_difference_is_importance_weighted():
    audit = _pair(60, challenger_only=0, champion_only=15, both_right=40, seed=1, name="audit")
    only_champion = audit.champion_proba.argmax(axis=1) == audit.y
    only_champion &= audit.challenger_proba.argmax(axis=1) != audit.y
    weights = np.where(only_champion, 3.0, 1.0)
    weighted = PairedRows("audit", audit.y, audit.challenger_proba, audit.champion_proba, weights)
    decision = decide(_metrics_of("2", audit, "challenger"), _metrics_of("1", audit, "champion"), GateParams(), [], weighted)
    assert decision.evidence[-1].difference == pytest.approx(-45 / weights.sum())


# -- the audit guards per class and per segment ----------------------------------------------------

def _runs(runs, weights=None) -> PairedRows:
    """Audit rows from runs of (segment, true class, challenger right, champion right, rows)."""
    segment, y, ch_right, cp_right = (np.concatenate([np.repeat(np.asarray([run[i]], dtype=object if i == 0 else None),
                                                                run[4]) for run in runs]) for i in range(4))
    y = y.astype(int)
    wrong = (y + 1) % K
    return PairedRows("audit", y, _proba(np.where(ch_right.astype(bool), y, wrong)),
                      _proba(np.where(cp_right.astype(bool), y, wrong)), weights, ("a", "b", "c", "d"),
                      {"plan": segment})


# Class 'a' = segment 'pro' (30 rows): the challenger loses half of them; it wins back as many in 'free', so
# the overall audit difference is 0 and only a per-group guard can see the collapse.
_COLLAPSE = [("pro", 0, False, True, 15), ("pro", 0, True, True, 15), ("free", 1, True, False, 15),
             ("free", 2, True, True, 60), ("free", 3, False, False, 15)]
_AUDIT_N = sum(run[4] for run in _COLLAPSE)


@pytest.mark.parametrize(("rules", "promote", "says"), [
    ({"max_class_recall_drop": 0.3}, False,
     ("audit class guard: class 'a' on 30 rows: recall drop +0.5000, one-sided 90% lower bound +{bound:.4f} > "
      "max_class_recall_drop 0.3 on the audit rows neither model trained on (paired bootstrap (2,000 resamples, seed 0), "
      "importance-weighted) → reject")),
    ({"max_class_recall_drop": 0.3, "audit_min_rows_per_group": 31}, True,
     "fewer rows, reported, not used: class 'a' (30 rows, drop +0.5000)"),
    ({"max_class_recall_drop": 0.45}, True, "none of 2 classes"),  # above the allowance, but not significantly
    ({"max_class_recall_drop": 0.6}, True, "(closest: class 'a' on 30 rows: recall drop +0.5000"),
    ({"max_segment_accuracy_drop": 0.3}, False,
     ("audit segment guard on plan: segment plan='pro' on 30 rows: accuracy drop +0.5000, one-sided 90% lower bound "
      "+{bound:.4f} > max_segment_accuracy_drop 0.3")),
    ({"max_segment_accuracy_drop": 0.3, "audit_min_rows_per_group": 31}, True,
     "fewer rows, reported, not used: segment plan='pro' (30 rows, drop +0.5000)"),
    ({"max_segment_accuracy_drop": 0.6}, True, "none of 2 segments with at least audit_min_rows_per_group 20 audit rows"),
    ({}, True, None),  # both allowances 1: the guards are off
    ({"max_segment_accuracy_drop": 0.3, "audit_guard": False}, True, None),
    ({"max_segment_accuracy_drop": 0.3, "min_confidence": 0}, True, None),
], ids=["class-collapse", "class-too-few-rows", "class-drop-not-significant", "class-within", "segment-collapse",
        "segment-too-few-rows", "segment-within", "off", "audit-guard-off", "no-test"])
def test_the_audit_class_and_segment_guards_decision_table(rules, promote, says):
    holdout = _pair(**_BETTER_ON_HOLDOUT)
    audit = _runs(_COLLAPSE, weights=np.ones(_AUDIT_N))
    decision = decide(_metrics_of("2", holdout, "challenger"), _metrics_of("1", holdout, "champion"),
                      GateParams(**rules), [holdout], audit)
    assert decision.promote is promote
    # The overall audit difference is 0: only a group guard can reject.
    assert all(r.endswith("→ pass") for r in decision.reasons if r.startswith("audit guard:"))
    guards = [r for r in decision.reasons if r.startswith(("audit class guard", "audit segment guard"))]
    if says is None:
        assert guards == [] and {e.rows for e in decision.evidence} <= {"holdout", "audit"}
        return
    group = decision.evidence[-1]  # the rejecting group, else the one closest to rejecting
    assert group.rows in ("audit class 'a'", "audit segment plan='pro'") or "not used" in says
    assert any(says.format(bound=-group.upper) in r for r in guards)
    if not promote:
        assert (group.n, group.test, group.passed) == (30, BOOTSTRAP, False)
        assert group.difference == pytest.approx(-0.5) and -group.upper > 0.3
        assert [r for r in guards if r.endswith("→ reject")]  # the group's reason and the guard's


def test_the_audit_group_guards_never_promote():
    noisy = _pair(1287, challenger_only=41, champion_only=37, both_right=1100)  # fails the holdout test
    audit = _runs(_COLLAPSE, weights=np.ones(_AUDIT_N))
    rules = GateParams(max_class_recall_drop=0.6, max_segment_accuracy_drop=0.6)
    decision = decide(_metrics_of("2", noisy, "challenger"), _metrics_of("1", noisy, "champion"), rules, [noisy], audit)
    assert not decision.promote
    assert [r.endswith("→ pass") for r in decision.reasons if r.startswith(("audit class", "audit segment"))] == [True] * 2


def test_the_audit_group_guards_are_importance_weighted():
    # Segment 'pro': the challenger alone wrong on 6 of 40 rows (unweighted drop 0.15, within 0.2); the rows it
    # loses carry 10 times the weight of the others (traffic sampled 10 times less there): a weighted drop of 60/94.
    runs = [("pro", 0, False, True, 6), ("pro", 0, True, True, 34), ("free", 1, True, False, 6),
            ("free", 2, True, True, 34)]
    lost = np.r_[np.ones(6), np.zeros(34), np.ones(6), np.zeros(34)].astype(bool)
    rules = GateParams(max_segment_accuracy_drop=0.2)
    holdout = _pair(**_BETTER_ON_HOLDOUT)
    outcome = {}
    for name, weights in (("uniform", np.ones(80)), ("weighted", np.where(lost, 10.0, 1.0))):
        decision = decide(_metrics_of("2", holdout, "challenger"), _metrics_of("1", holdout, "champion"), rules,
                          [holdout], _runs(runs, weights))
        pro = next(e for e in decision.evidence if e.rows == "audit segment plan='pro'")
        outcome[name] = (decision.promote, pro.difference)
    assert outcome["uniform"] == (True, pytest.approx(-6 / 40))
    assert outcome["weighted"] == (False, pytest.approx(-60 / 94))


def test_paired_rows_refuse_segments_and_class_names_of_the_wrong_size():
    y = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="segments\\['plan'\\] must hold one segment per row"):
        PairedRows("audit", y, _proba(y), _proba(y), segments={"plan": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="2 class names for 4 probability columns"):
        PairedRows("audit", y, _proba(y), _proba(y), classes=("a", "b"))
    with pytest.raises(ValidationError, match="max_segment_accuracy_drop"):
        GateParams(max_segment_accuracy_drop=1.5)
    with pytest.raises(ValidationError, match="audit_min_rows_per_group"):
        GateParams(audit_min_rows_per_group=0)


# -- the seed term: seed twins of the challenger (issue 16) ------------------------------------------

def _worse(proba: np.ndarray, y: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """`proba` with `rows` of its right rows made wrong: a twin whose holdout accuracy is rows/n lower."""
    right = np.flatnonzero(proba.argmax(axis=1) == y)
    flipped = np.random.default_rng(seed).choice(right, rows, replace=False)
    predicted = proba.argmax(axis=1)
    predicted[flipped] = (y[flipped] + 1) % K
    return _proba(predicted)


def _twins(rows: PairedRows, *drops: int) -> SeedTwins:
    """The challenger (random_state 7) and one twin per drop, each that many right rows fewer."""
    probas = [rows.challenger_proba, *(_worse(rows.challenger_proba, rows.y, d, i) for i, d in enumerate(drops))]
    return SeedTwins(tuple(range(7, 7 + len(probas))), tuple(probas))


def test_the_seed_term_widens_the_interval_and_rejects_a_gain_inside_the_seed_spread():
    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)  # +0.047, clear for McNemar
    twins = _twins(rows, 60, 30)  # the seed alone moves accuracy by up to 60 rows (0.047)
    rules = GateParams()
    paired, seeded = paired_evidence(rows, rules), seed_evidence(rows, twins, rules)
    assert paired.passed and seeded.difference == pytest.approx(paired.difference)
    assert seeded.upper - seeded.lower > paired.upper - paired.lower and seeded.lower < 0 < paired.lower
    decision = decide(_metrics_of("2", rows, "challenger"), _metrics_of("1", rows, "champion"), rules, [rows], twins=twins)
    assert not decision.promote and _decide(rows).promote  # the paired test alone promoted it
    [reason] = [r for r in decision.reasons if r.startswith(SEED_T)]
    assert "on 1,287 holdout rows" in reason and "the challenger (random_state 7) and 2 seed twins (random_state 8, 9)" in reason
    assert f"seed sd {seeded.seed_sd:.4f}" in reason and "t on 2 df" in reason and reason.endswith("→ reject")
    assert [e.test for e in decision.evidence] == [MCNEMAR, SEED_T]


def test_with_no_seed_spread_the_decision_is_the_paired_tests():
    for pair in (_pair(1287, 80, 20, 1000), _pair(1287, 41, 37, 1100)):  # one promoted, one rejected
        twins = SeedTwins((0, 1, 2), (pair.challenger_proba,) * 3)
        with_twins = decide(_metrics_of("2", pair, "challenger"), _metrics_of("1", pair, "champion"), GateParams(), [pair],
                            twins=twins)
        without = _decide(pair)
        assert with_twins.promote == without.promote and with_twins.evidence[0] == without.evidence[0]
        assert with_twins.evidence[1].passed and "no seed spread" in with_twins.reasons[1]


def test_the_seed_t_is_judged_on_k_minus_1_degrees_of_freedom():
    from scipy.stats import t

    rows = _pair(1287, challenger_only=80, champion_only=20, both_right=1000)
    for drops in ((20,), (20, 10), (20, 10, 35)):
        twins = _twins(rows, *drops)
        k = len(drops) + 1
        accuracies = np.array([np.mean(p.argmax(axis=1) == rows.y) for p in twins.probas])
        difference = accuracies[0] - np.mean(rows.champion_proba.argmax(axis=1) == rows.y)
        se = np.sqrt(2) * np.std(accuracies, ddof=1)
        evidence = seed_evidence(rows, twins, GateParams(min_confidence=0.9))
        assert evidence.p_value == pytest.approx(t.sf(difference / se, k - 1))
        assert evidence.lower == pytest.approx(difference - t.ppf(0.9, k - 1) * se)
        assert evidence.passed == (evidence.p_value <= 0.1)
    assert t_quantile(0.9, 1) == pytest.approx(3.0777, abs=1e-4)  # k = 2: one twin, very conservative


def test_seed_twins_need_a_twin_and_probabilities_of_the_rows():
    rows = _pair(100, 10, 5, 50)
    with pytest.raises(ValueError, match="at least one twin"):
        SeedTwins((0,), (rows.challenger_proba,))
    with pytest.raises(ValueError, match="one shape"):
        SeedTwins((0, 1), (rows.challenger_proba, rows.challenger_proba[:50]))
    with pytest.raises(ValueError, match="holdout rows"):
        seed_evidence(rows, SeedTwins((0, 1), (rows.challenger_proba[:50],) * 2), GateParams())
