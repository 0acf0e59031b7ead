"""Bounded retries: only transient errors are retried, never more than the policy allows."""

import pytest

from labelloop.core.retry import RetryPolicy, TransientError, with_retries

FAST = RetryPolicy(attempts=3, backoff_seconds=0.0)


def test_a_transient_fault_is_retried_until_the_call_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("503")
        return "ok"

    assert with_retries("flaky", flaky, FAST) == "ok" and len(calls) == 3


def test_retries_are_bounded_and_the_last_error_says_so():
    calls = []

    def down():
        calls.append(1)
        raise TransientError("connection refused")

    with pytest.raises(TransientError, match=r"connection refused \(gave up after 3 attempts in"):
        with_retries("down", down, FAST)
    assert len(calls) == 3


def test_a_permanent_error_is_not_retried():
    calls = []

    def bad():
        calls.append(1)
        raise ValueError("401")

    with pytest.raises(ValueError, match="401"):
        with_retries("bad", bad, FAST)
    assert len(calls) == 1


def test_policy_from_the_environment_is_validated(monkeypatch):
    monkeypatch.setenv("LABELLOOP_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("LABELLOOP_RETRY_BACKOFF_SECONDS", "0.5")
    policy = RetryPolicy.from_env()
    assert (policy.attempts, policy.delay(1), policy.delay(2), policy.delay(10)) == (5, 0.5, 1.0, 10.0)
    monkeypatch.setenv("LABELLOOP_RETRY_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="LABELLOOP_RETRY_ATTEMPTS='0' must be at least 1"):
        RetryPolicy.from_env()
    monkeypatch.setenv("LABELLOOP_RETRY_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="is not a number"):
        RetryPolicy.from_env()
