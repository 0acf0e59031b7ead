"""The bandit behind `select.strategy: auto`: probabilities with a floor, idempotent bookkeeping, the reward."""

from dataclasses import replace

import numpy as np
import pytest

from labelloop.config import BanditParams
from labelloop.domain.acquisition import bandit

DEFAULTS = BanditParams()


def _start(arms, gamma=DEFAULTS.gamma, eta=DEFAULTS.eta, *, random_start=DEFAULTS.random_start,
           warmup=DEFAULTS.warmup, random_decay=DEFAULTS.random_decay):
    """A fresh state under `select.bandit`'s defaults unless told otherwise."""
    return bandit.initial_state(arms, gamma, eta, random_start=random_start, warmup=warmup, random_decay=random_decay)


def _warm(arms, gamma=DEFAULTS.gamma, eta=DEFAULTS.eta, random_start=-4.0):
    """Random starts at its floor (the default), a one-batch warm-up (the default is 2)."""
    return _start(arms, gamma, eta, random_start=random_start, warmup=1)


def _plain(arms, gamma=DEFAULTS.gamma, eta=DEFAULTS.eta):
    """Plain EXP3: equal starting weights, no warm-up."""
    return _start(arms, gamma, eta, random_start=0.0, warmup=0)


def _measured(state, n=None):
    """`state` with `n` batches' gains recorded (None: one past the warm-up, so the floor applies; neutral rewards:
    the weights do not move)."""
    for i in range(state.warmup + 1 if n is None else n):
        state = bandit.update(state, f"seen-{i}", state.arms[-1], 0.5, 0.5, gain=0.01)
    return state


def test_probabilities_keep_the_floor_however_lopsided_the_weights():
    state = _measured(_start(["random", "margin", "hybrid"], gamma=0.3))
    state = replace(state, log_weights=(0.0, 500.0, -500.0))
    p = bandit.probabilities(state)
    assert p.sum() == pytest.approx(1.0)
    assert p.min() >= 0.3 / 3 - 1e-12
    assert p[1] == pytest.approx(0.7 + 0.1)


def test_by_default_random_starts_at_its_floor_after_a_two_batch_warm_up():
    state = _start(["random", "margin", "hybrid"], gamma=0.3)  # select.bandit's defaults
    for n in range(4):
        p = bandit.probabilities(_measured(state, n))[0]
        assert p < 0.01 if n < 3 else 0.1 <= p < 0.11
    # The first two gains are no baseline, so the first three batches are paid ½:
    assert bandit.batch_reward(_measured(state, 2), 0.001) == 0.5
    assert bandit.batch_reward(_measured(state, 3), 0.001) == pytest.approx(0.5 + (0.001 - 0.01) / 0.04)


def test_plain_arms_start_equal_with_the_floor_from_the_first_batch():
    state = _plain(["random", "margin", "hybrid"], gamma=0.3)
    np.testing.assert_allclose(bandit.probabilities(state), [1 / 3] * 3)
    state = replace(state, log_weights=(0.0, 500.0, -500.0))
    assert bandit.probabilities(state).min() >= 0.1 - 1e-12  # no gain recorded yet, the floor holds


def test_random_starts_at_its_floor_and_choose_is_a_function_of_state_and_seed():
    fresh = _warm(["random", "margin", "hybrid"], gamma=0.3)
    # Before two gains are recorded the floor is off (those batches are paid ½ whatever they bring):
    p = dict(zip(fresh.arms, bandit.probabilities(fresh), strict=True))
    assert p["random"] < 0.01 and p["margin"] == pytest.approx(p["hybrid"])
    assert bandit.probabilities(_measured(fresh, 1))[0] < 0.01
    state = _measured(fresh)
    p = dict(zip(state.arms, bandit.probabilities(state), strict=True))
    assert 0.1 <= p["random"] < 0.11  # the floor γ / K, plus under 1% of the rest
    assert p["margin"] == pytest.approx(p["hybrid"]) and p["margin"] > 0.44
    equal = _measured(_warm(["random", "margin", "hybrid"], random_start=0.0))
    np.testing.assert_allclose(bandit.probabilities(equal), [1 / 3] * 3)
    seed = bandit.choice_seed("abc123", 0)
    first = bandit.choose(state, np.random.default_rng(seed))
    again = bandit.choose(state, np.random.default_rng(bandit.choice_seed("abc123", 0)))
    assert first == again
    draws = [bandit.choose(state, np.random.default_rng(bandit.choice_seed(f"key{i}")))[0] for i in range(200)]
    assert set(draws) == {"random", "margin", "hybrid"}  # random keeps being drawn, at about its floor
    assert 0.03 < bandit.arm_shares(state.arms, draws)["random"] < 0.2


def test_a_batch_with_no_audit_items_does_not_count_as_measured():
    state = bandit.update(_warm(["random", "margin"]), "b0", "margin", 0.5, None)
    state = bandit.update(state, "b1", "margin", 0.5, 0.5, gain=0.02)
    assert bandit.measured(state) == 1
    assert bandit.probabilities(state)[0] < 0.02  # no floor yet: e^-4 / (1 + e^-4)
    assert bandit.probabilities(_measured(state, 1))[0] >= state.gamma / 2


def test_random_is_always_an_arm():
    with pytest.raises(ValueError, match="random"):
        _start(["margin", "hybrid"])


def test_update_is_idempotent_per_batch_id():
    state = _start(["random", "margin"], gamma=0.2, eta=0.5, random_start=0.0)
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

    state = bandit.update(_start(["random", "margin"]), "b1", "random", 0.4, 0.2, gain=-0.01, n_audit=30)
    loaded = bandit.BanditState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert loaded == state and loaded.warmup == DEFAULTS.warmup
    assert bandit.update(loaded, "b1", "random", 0.4, 0.2) == loaded


def test_a_state_written_before_the_warm_up_was_recorded_loads_and_takes_the_configured_one():
    old = _start(["random", "margin"]).to_dict()
    del old["warmup"]
    loaded = bandit.BanditState.from_dict(old)
    assert loaded.log_weights == (DEFAULTS.random_start, 0.0) and loaded.warmup == 0
    assert bandit.reconcile(loaded, ["random", "margin"], 0.3, 0.5, 2).warmup == 2


def test_no_reward_records_the_batch_without_moving_the_weights():
    state = _start(["random", "margin"])
    after = bandit.update(state, "b1", "margin", 0.5, None)
    assert after.log_weights == state.log_weights
    assert after.record("b1").reward is None
    # ...and a later reward for the same batch is not paid either (the batch was measured: no audit items then).
    assert bandit.update(after, "b1", "margin", 0.5, 1.0) == after


def test_update_rejects_a_reward_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bandit.update(_start(["random"]), "b", "random", 1.0, 1.5)


def _play(state, seed, reward_of, rounds=60):
    """`state` after `rounds` batches drawn by it, each arm paid `reward_of(arm)`; the arms' probabilities then."""
    rng = np.random.default_rng(seed)
    for t in range(rounds):
        arm, p = bandit.choose(state, rng)
        state = bandit.update(state, f"b{t}", arm, p[arm], reward_of(arm))
    return dict(zip(state.arms, bandit.probabilities(state), strict=True))


def test_a_consistently_better_arm_gains_probability():
    state = _measured(_start(["random", "margin", "hybrid"], gamma=0.3, eta=0.5, random_start=0.0, random_decay=1.0))
    probabilities = _play(state, 0, lambda arm: 0.8 if arm == "margin" else 0.4)
    assert probabilities["margin"] == max(probabilities.values())
    assert probabilities["margin"] > 0.6
    assert min(probabilities.values()) >= 0.1 - 1e-12


def test_reconcile_adds_and_drops_arms_keeping_records():
    state = bandit.update(_plain(["random", "margin"]), "b1", "margin", 0.5, 1.0)
    merged = bandit.reconcile(state, ["random", "margin", "entropy"], 0.3, 0.5, 2)
    assert merged.arms == ("random", "margin", "entropy") and merged.warmup == 2  # the warm-up follows the config
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
    state = _plain(["random", "margin"])
    assert bandit.gain_baseline(state) == 0.0  # no warm-up: the first batch is paid against no gain at all
    for i, gain in enumerate([0.1, None, 0.04, 0.02, 0.0]):
        reward = None if gain is None else 0.5
        state = bandit.update(state, f"b{i}", "random", 0.5, reward, gain=gain)
    assert bandit.gain_baseline(state, window=3) == pytest.approx(0.02)
    assert bandit.gain_baseline(state, window=10) == pytest.approx(0.04)
    assert bandit.batch_reward(_plain(["random"]), 0.09, 0.02) == 1.0


def test_gain_baseline_leaves_out_the_warm_up():
    state = _warm(["random", "margin"])
    assert bandit.gain_baseline(state) is None
    for i, gain in enumerate([0.1, None, 0.04, 0.02, 0.0, -0.02]):
        reward = None if gain is None else 0.5
        state = bandit.update(state, f"b{i}", "random", 0.5, reward, gain=gain)
        if i == 0:  # the seed model's first batch is no baseline: its gain is large whatever the arm
            assert bandit.gain_baseline(state) is None
    assert bandit.gain_baseline(state, window=3) == pytest.approx(0.0)
    assert bandit.gain_baseline(state, window=10) == pytest.approx(0.01)


def test_batch_reward_is_neutral_until_there_is_a_baseline_then_paid_around_it():
    state = _warm(["random", "margin"])
    assert bandit.batch_reward(state, 0.09, 0.02) == 0.5  # the first batch: nothing to compare with
    assert bandit.batch_reward(state, float("nan"), 0.02) is None  # no audit items
    state = bandit.update(state, "b0", "margin", 0.5, 0.5, gain=0.09)
    assert bandit.batch_reward(state, 0.01, 0.02) == 0.5  # the second: the first's gain is not a baseline
    state = bandit.update(state, "b1", "random", 0.5, 0.5, gain=0.01)
    assert bandit.batch_reward(state, 0.02, 0.02) == pytest.approx(0.75)  # (0.02 − 0.01) / (2 · 0.02) above ½
    assert bandit.batch_reward(state, -0.05, 0.02) == 0.0


def test_neutral_first_rewards_leave_the_weights_and_random_keeps_its_floor_when_the_others_win():
    state = replace(_warm(["random", "margin", "hybrid"], gamma=0.3, eta=0.5), random_decay=1.0)  # no decay
    start = state.log_weights
    for i in range(2):
        arm, p = bandit.choose(state, np.random.default_rng(i))
        state = bandit.update(state, f"b{i}", arm, p[arm], bandit.batch_reward(state, 0.08 / (i + 1)), gain=0.08 / (i + 1))
    assert state.log_weights == pytest.approx(start)
    rng = np.random.default_rng(1)
    for t in range(2, 40):  # the uncertainty arms keep gaining more than random
        arm, p = bandit.choose(state, rng)
        gain = 0.002 if arm == "random" else 0.012
        state = bandit.update(state, f"b{t}", arm, p[arm], bandit.batch_reward(state, gain), gain=gain)
    assert dict(zip(state.arms, bandit.probabilities(state), strict=True))["random"] == pytest.approx(0.1, abs=0.01)


def test_random_earns_its_share_back_when_it_is_paid_more():
    state = _warm(["random", "margin", "hybrid"], gamma=0.3, eta=0.5)
    probabilities = _play(state, 2, lambda arm: 0.9 if arm == "random" else 0.3)
    assert probabilities["random"] == max(probabilities.values()) and probabilities["random"] > 0.6


def test_arm_shares():
    assert bandit.arm_shares(["random", "margin"], ["margin", "margin", "random", "margin"]) == {
        "random": 0.25, "margin": 0.75}
    assert bandit.arm_shares(["random"], []) == {"random": 0.0}


def test_true_class_probability_and_the_batch_gain_on_either_measure():
    y = np.array(["a", "b", "a", "z"])  # "z": a label the models do not know, probability 0
    before = np.array([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    after = np.array([[0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.5, 0.5]])
    np.testing.assert_allclose(bandit.true_class_probability(y, before, ["a", "b"]), [0.6, 0.4, 0.2, 0.0])
    with pytest.raises(ValueError, match="shape"):
        bandit.true_class_probability(y, before[:, :1], ["a", "b"])
    gain = bandit.batch_gain(y, before, after, ["a", "b"], measure="probability")
    assert gain == pytest.approx((0.1 + 0.2 + 0.4 + 0.0) / 4)
    w = np.array([1.0, 0.0, 0.0, 1.0])
    assert bandit.batch_gain(y, before, after, ["a", "b"], w, measure="probability") == pytest.approx(0.05)
    assert np.isnan(bandit.batch_gain(y[:0], before[:0], after[:0], ["a", "b"], measure="probability"))
    # argmax: right on 1 of 4 before, 3 of 4 after
    assert bandit.batch_gain(y, before, after, ["a", "b"], measure="accuracy") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown gain measure 'auc'; allowed: accuracy, probability"):
        bandit.batch_gain(y, before, after, ["a", "b"], measure="auc")


def test_with_no_warm_up_the_first_batch_is_paid_and_the_floor_holds_from_the_start():
    warm, plain = _start(["random", "margin"], warmup=2), _start(["random", "margin"], warmup=0)
    assert bandit.probabilities(warm)[0] < 0.02  # random's starting weight, no floor during the warm-up
    assert bandit.probabilities(plain)[0] >= plain.gamma / 2  # the floor γ / K from the first batch
    assert bandit.batch_reward(warm, 0.01, 0.02) == 0.5
    assert bandit.batch_reward(plain, 0.01, 0.02) == pytest.approx(0.75)  # against a baseline of 0
    moved = bandit.update(plain, "b0", "margin", 0.5, bandit.batch_reward(plain, 0.01, 0.02), gain=0.01)
    assert moved.log_weights != plain.log_weights


def test_random_start_zero_starts_uniform_and_other_values_lower_random_only():
    np.testing.assert_allclose(bandit.probabilities(_start(["random", "margin", "hybrid"], random_start=0.0)), [1 / 3] * 3)
    p = bandit.probabilities(_start(["random", "margin", "hybrid"], random_start=-1.0))
    assert p[0] == pytest.approx(np.exp(-1) / (np.exp(-1) + 2)) and p[1] == pytest.approx(p[2])


@pytest.mark.parametrize(("setting", "message"), [
    ({"random_start": 1.0}, "random_start must be at most 0"),
    ({"random_start": float("nan")}, "random_start must be at most 0"),
    ({"warmup": -1}, "warmup must be"),
    ({"warmup": 1.5}, "warmup must be"),
    ({"random_decay": 0.0}, "random_decay must be in"),
    ({"random_decay": 1.5}, "random_decay must be in"),
])
def test_bad_start_settings_are_refused_with_their_name(setting, message):
    with pytest.raises(ValueError, match=message):
        _start(["random", "margin"], **setting)


def _paid(state, arm, gains):
    """`state` with one batch per gain drawn by `arm` at probability 0.1, paid ½ (the weights do not move: only the
    records differ, and the decay depends on the gains recorded, not on EXP3's update)."""
    for gain in gains:
        state = bandit.update(state, f"{arm}-{len(state.records)}", arm, 0.1, 0.5, gain=gain)
    return state


def test_random_floor_decays_only_once_random_is_measured_and_it_comes_back_when_paid_more():
    start = _measured(_start(["random", "margin", "hybrid"], gamma=0.3, random_decay=0.5))
    assert bandit.random_floor(start) == pytest.approx(0.1) and 0.1 <= bandit.probabilities(start)[0] < 0.11
    # The others paid, random not measured yet: the floor holds however many batches they drew.
    others = _paid(start, "margin", [0.01] * 10)
    assert bandit.random_floor(others) == pytest.approx(0.1) and bandit.probabilities(others)[0] >= 0.1
    # Random measured once: its floor halves; twice: a quarter (its weight is e^-4: the rest of its share is ~1%).
    once, twice = _paid(others, "random", [0.002]), _paid(others, "random", [0.002, 0.03])
    assert bandit.random_floor(once) == pytest.approx(0.05) and bandit.random_floor(twice) == pytest.approx(0.025)
    p = bandit.probabilities(twice)
    assert 0.025 <= p[0] < 0.035 and p.sum() == pytest.approx(1.0) and p[1] == pytest.approx(p[2]) and p[1] >= 0.1
    # random_decay 1 (the old behaviour): the floor holds however often random was measured.
    assert bandit.probabilities(replace(twice, random_decay=1.0))[0] >= 0.1
    # Paid more than the others from then on, random's weight gives it its share back, beyond the floor it had.
    back = _play(twice, 2, lambda arm: 0.9 if arm == "random" else 0.3, rounds=40)
    assert back["random"] == max(back.values()) and back["random"] > 0.5


def test_the_warm_up_batches_paid_half_do_not_count_toward_the_decay():
    state = _start(["random", "margin"], gamma=0.3, random_decay=0.5)  # warm-up 2: the first 3 are paid ½
    state = _paid(_paid(state, "margin", [0.1, 0.1]), "random", [0.0])
    assert bandit.paid(state) == []
    state = _paid(state, "margin", [0.01])
    assert bandit.random_floor(state) == pytest.approx(0.15)  # random not measured yet: γ / K
    assert bandit.random_floor(_paid(state, "random", [0.0])) == pytest.approx(0.075)


def test_with_the_decay_one_lucky_batch_drawn_at_a_small_probability_moves_the_weight_as_if_drawn_at_the_floor():
    decayed = _measured(_start(["random", "margin"], gamma=0.2, eta=0.5, random_decay=0.5))
    plain = replace(decayed, random_decay=1.0)
    move = bandit.update(decayed, "lucky", "random", 0.01, 1.0).log_weights
    assert move[0] - decayed.log_weights[0] == pytest.approx(0.5 * 0.5 / 0.1)  # η·(r − ½) / (γ / K), not / 0.01
    move = bandit.update(plain, "lucky", "random", 0.01, 1.0).log_weights
    assert move[0] - move[1] - (plain.log_weights[0] - plain.log_weights[1]) == pytest.approx(0.5 * 0.5 / 0.01)

def _gains(state, seed, gain_of, rounds=40):
    """`state` after `rounds` batches drawn by it, each arm gaining `gain_of(arm)` and paid on it; the probabilities."""
    rng = np.random.default_rng(seed)
    for t in range(rounds):
        arm, p = bandit.choose(state, rng)
        gain = gain_of(arm)
        state = bandit.update(state, f"b{t}", arm, p[arm], bandit.batch_reward(state, gain), gain=gain)
    return dict(zip(state.arms, bandit.probabilities(state), strict=True))


def test_with_the_decay_random_falls_below_its_floor_when_the_others_keep_gaining_more():
    gains = {"random": 0.002, "margin": 0.012, "hybrid": 0.012}
    decayed = _gains(_start(["random", "margin", "hybrid"], random_decay=0.5), 3, gains.get)
    kept = _gains(_start(["random", "margin", "hybrid"], random_decay=1.0), 3, gains.get)
    assert kept["random"] == pytest.approx(0.1, abs=0.01) and decayed["random"] < 0.05

def test_random_decay_is_stored_and_an_older_state_without_it_loads_without_decay():
    import json

    state = _paid(_measured(_start(["random", "margin"], random_decay=0.5)), "random", [0.0])
    loaded = bandit.BanditState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert loaded == state and loaded.random_decay == 0.5
    old = state.to_dict()
    del old["random_decay"]
    assert bandit.BanditState.from_dict(old).random_decay == 1.0
    assert bandit.reconcile(bandit.BanditState.from_dict(old), ["random", "margin"], 0.3, 0.5, 2,
                            random_decay=0.5).random_decay == 0.5
