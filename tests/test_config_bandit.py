"""`select.strategy: auto` and its strict `select.bandit` section."""

import pytest

from labelloop.config import BanditParams, ConfigError, SelectParams, parse_params


def test_auto_is_a_valid_strategy_with_default_arms():
    params = parse_params({"select": {"strategy": "auto"}}).select
    assert params.strategy == "auto"
    assert params.bandit.arms == ["random", "margin", "hybrid"]


def test_default_strategy_is_not_changed_by_the_bandit_section():
    assert SelectParams().strategy == "hybrid"


def test_any_registered_strategy_can_be_an_arm():
    assert BanditParams(arms=["random", "entropy", "bald"]).arms == ["random", "entropy", "bald"]


@pytest.mark.parametrize(("arms", "message"), [
    (["margin", "hybrid"], "must include 'random'"),
    (["random", "confusion"], "unknown arm 'confusion'"),
    (["random", "auto"], "unknown arm 'auto'"),
    (["random", "margin", "margin"], "'margin' named twice"),
])
def test_bad_arms_name_the_key_and_the_allowed_arms(arms, message):
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"strategy": "auto", "bandit": {"arms": arms}}})
    text = str(error.value)
    assert "select.bandit.arms" in text and message in text
    if "random" in message or "unknown" in message:
        assert "allowed:" in text and "margin" in text and "entropy" in text


def test_bandit_section_is_strict():
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"bandit": {"learning_rate": 0.1}}})
    assert "select.bandit.learning_rate" in str(error.value) and "eta" in str(error.value)


def test_unknown_strategy_lists_auto_among_the_allowed():
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"strategy": "bandit"}})
    assert "select.strategy" in str(error.value) and "auto" in str(error.value)


@pytest.mark.parametrize(("key", "value"), [("gamma", 0.0), ("gamma", 1.5), ("eta", 0.0), ("reward_scale", -1.0)])
def test_rates_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"select.bandit.{key}"):
        parse_params({"select": {"bandit": {key: value}}})


def test_start_settings_default_to_the_measured_choices_and_can_be_set():
    params = parse_params({}).select.bandit
    assert (params.random_start, params.warmup, params.gain_measure, params.random_decay) == (-4.0, 2, "accuracy", 0.5)
    params = parse_params({"select": {"bandit": {"random_start": 0, "warmup": 0, "gain_measure": "probability"}}})
    assert (params.select.bandit.random_start, params.select.bandit.warmup) == (0.0, 0)
    assert params.select.bandit.gain_measure == "probability"
    assert parse_params({"select": {"bandit": {"random_decay": 1}}}).select.bandit.random_decay == 1.0


@pytest.mark.parametrize(("key", "value", "message"), [
    ("random_start", 1.0, "less than or equal to 0"),
    ("warmup", -1, "greater than or equal to 0"),
    ("warmup", 1.5, "integer"),
    ("gain_measure", "auc", "'accuracy' or 'probability'"),
    ("random_decay", 0.0, "greater than 0"),
    ("random_decay", 1.5, "less than or equal to 1"),
])
def test_bad_start_settings_name_the_key_and_what_is_allowed(key, value, message):
    with pytest.raises(ConfigError) as error:
        parse_params({"select": {"bandit": {key: value}}})
    assert f"select.bandit.{key}" in str(error.value) and message in str(error.value)
