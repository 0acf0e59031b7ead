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


def test_the_delay_doubles_per_retry_up_to_a_cap():
    policy = RetryPolicy(attempts=5, backoff_seconds=0.5)
    assert (policy.delay(1), policy.delay(2), policy.delay(10)) == (0.5, 1.0, 10.0)
