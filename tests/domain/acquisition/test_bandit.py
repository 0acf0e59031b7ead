"""The bandit behind `select.strategy: auto`: probabilities with a floor, idempotent bookkeeping, the reward."""

import numpy as np
import pytest

from labelloop.domain.acquisition import bandit


def test_probabilities_keep_the_floor_however_lopsided_the_weights():
    state = bandit.initial_state(["random", "margin", "hybrid"], gamma=0.3)
    state = bandit.BanditState(state.arms, (0.0, 500.0, -500.0), state.gamma, state.eta)
    p = bandit.probabilities(state)
    assert p.sum() == pytest.approx(1.0)
    assert p.min() >= 0.3 / 3 - 1e-12
    assert p[1] == pytest.approx(0.7 + 0.1)


def test_equal_weights_give_equal_probabilities_and_choose_is_a_function_of_state_and_seed():
    state = bandit.initial_state(["random", "margin", "hybrid"])
    np.testing.assert_allclose(bandit.probabilities(state), [1 / 3] * 3)
    seed = bandit.choice_seed("abc123", 0)
    first = bandit.choose(state, np.random.default_rng(seed))
    again = bandit.choose(state, np.random.default_rng(bandit.choice_seed("abc123", 0)))
    assert first == again
    draws = {bandit.choose(state, np.random.default_rng(bandit.choice_seed(f"key{i}")))[0] for i in range(40)}
    assert draws == {"random", "margin", "hybrid"}


def test_random_is_always_an_arm():
    with pytest.raises(ValueError, match="random"):
        bandit.initial_state(["margin", "hybrid"])


def test_update_is_idempotent_per_batch_id():
    state = bandit.initial_state(["random", "margin"], gamma=0.2, eta=0.5)
    once = bandit.update(state, "batch-0001", "margin", 0.5, 1.0, gain=0.03)
    twice = bandit.update(once, "batch-0001", "margin", 0.5, 1.0, gain=0.03)
    assert twice == once
    assert len(twice.records) == 1
    # The rewarded arm moved up, exactly once: log-weight + eta·(r − ½)/p = 0.5·0.5/0.5 = 0.5 over random's 0.
    assert twice.log_weights[1] - twice.log_weights[0] == pytest.approx(0.5)
    # A different batch does count.
    assert len(bandit.update(twice, "batch-0002", "margin", 0.5, 1.0).records) == 2


def test_state_round_trips_through_json_and_a_rerun_after_reload_still_counts_once():
    import json

    state = bandit.update(bandit.initial_state(["random", "margin"]), "b1", "random", 0.4, 0.2, gain=-0.01, n_audit=30)
    loaded = bandit.BanditState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert loaded == state
    assert bandit.update(loaded, "b1", "random", 0.4, 0.2) == loaded


def test_no_reward_records_the_batch_without_moving_the_weights():
    state = bandit.initial_state(["random", "margin"])
    after = bandit.update(state, "b1", "margin", 0.5, None)
    assert after.log_weights == state.log_weights
    assert after.record("b1").reward is None
    # ...and a later reward for the same batch is not paid either (the batch was measured: no audit items then).
    assert bandit.update(after, "b1", "margin", 0.5, 1.0) == after


def test_update_rejects_a_reward_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bandit.update(bandit.initial_state(["random"]), "b", "random", 1.0, 1.5)


def test_a_consistently_better_arm_gains_probability():
    state = bandit.initial_state(["random", "margin", "hybrid"], gamma=0.3, eta=0.5)
    rng = np.random.default_rng(0)
    for t in range(60):
        arm, p = bandit.choose(state, rng)
        reward = 0.8 if arm == "margin" else 0.4
        state = bandit.update(state, f"b{t}", arm, p[arm], reward)
    probabilities = dict(zip(state.arms, bandit.probabilities(state), strict=True))
    assert probabilities["margin"] == max(probabilities.values())
    assert probabilities["margin"] > 0.6
    assert min(probabilities.values()) >= 0.1 - 1e-12


def test_reconcile_adds_and_drops_arms_keeping_records():
    state = bandit.update(bandit.initial_state(["random", "margin"]), "b1", "margin", 0.5, 1.0)
    merged = bandit.reconcile(state, ["random", "margin", "entropy"], 0.3, 0.5)
    assert merged.arms == ("random", "margin", "entropy")
    assert merged.log_weights[2] == pytest.approx(np.mean(state.log_weights))
    assert merged.records == state.records


def test_weighted_accuracy_and_gain():
    y = np.array(["a", "b", "a", "b"])
    before = np.array(["a", "a", "a", "a"])
    after = np.array(["a", "b", "a", "a"])
    w = np.array([1.0, 3.0, 1.0, 1.0])
    assert bandit.weighted_accuracy(y, before, w) == pytest.approx(2 / 6)
    assert bandit.weighted_accuracy(y, after, w) == pytest.approx(5 / 6)
    assert bandit.accuracy_gain(y, before, after, w) == pytest.approx(0.5)
    assert np.isnan(bandit.accuracy_gain(y[:0], before[:0], after[:0]))


def test_scaled_reward_maps_gain_to_zero_one_around_the_baseline():
    assert bandit.scaled_reward(0.0, 0.02) == 0.5
    assert bandit.scaled_reward(0.02, 0.02) == 1.0
    assert bandit.scaled_reward(-0.5, 0.02) == 0.0
    assert bandit.scaled_reward(0.03, 0.02, baseline=0.03) == 0.5
    assert bandit.scaled_reward(float("nan"), 0.02) is None


def test_gain_baseline_is_the_mean_of_the_last_measured_gains():
    state = bandit.initial_state(["random", "margin"])
    assert bandit.gain_baseline(state) == 0.0
    for i, gain in enumerate([0.1, None, 0.04, 0.02, 0.0]):
        reward = None if gain is None else 0.5
        state = bandit.update(state, f"b{i}", "random", 0.5, reward, gain=gain)
    assert bandit.gain_baseline(state, window=3) == pytest.approx(0.02)


def test_arm_shares():
    assert bandit.arm_shares(["random", "margin"], ["margin", "margin", "random", "margin"]) == {
        "random": 0.25, "margin": 0.75}
    assert bandit.arm_shares(["random"], []) == {"random": 0.0}
