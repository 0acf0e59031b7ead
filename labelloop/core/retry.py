"""Bounded retries with exponential backoff for one call to an outside service (vendor, DVC remote).

Two layers retry, each bounded, with different jobs:

- here, inside one stage call: a few quick attempts (seconds apart) that ride out a transient blip —
  a refused connection while a server restarts, a 5xx, a timeout. Only errors the caller marks as
  transient are retried; a 4xx, a bad path or bad data fail at once. The operation retried must be
  idempotent as a whole (export per batch id, fetch, content-addressed push), never one half of it.
- the Prefect task (`tasks/*.py`, `retries=` with delays of 2-30 s): reruns the whole stage after a
  longer outage. A stage run by hand or by the CLI gets only the first layer.

The policy is read from the environment each time, so a test, a deployment or one shell can tighten
or loosen it without a code change: LABELLOOP_RETRY_ATTEMPTS (default 3), LABELLOOP_RETRY_BACKOFF_SECONDS
(first delay, doubled per retry, capped at 10 s; default 1) and LABELLOOP_HTTP_TIMEOUT_SECONDS (per
request; default 30).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
ENV_ATTEMPTS = "LABELLOOP_RETRY_ATTEMPTS"
ENV_BACKOFF = "LABELLOOP_RETRY_BACKOFF_SECONDS"
ENV_TIMEOUT = "LABELLOOP_HTTP_TIMEOUT_SECONDS"
MAX_BACKOFF_SECONDS = 10.0

logger = logging.getLogger("labelloop.core.retry")


class TransientError(RuntimeError):
    """An outside service did not answer usefully this time (unreachable, 5xx, timeout); worth a retry."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_seconds: float = 1.0
    timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            attempts=int(_env_number(ENV_ATTEMPTS, cls.attempts, minimum=1)),
            backoff_seconds=_env_number(ENV_BACKOFF, cls.backoff_seconds, minimum=0),
            timeout_seconds=_env_number(ENV_TIMEOUT, cls.timeout_seconds, minimum=0.001),
        )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.backoff_seconds * 2 ** (retry - 1), MAX_BACKOFF_SECONDS)


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def with_retries(what: str, operation: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """Run `operation`; on a `TransientError` wait and try again, at most `policy.attempts` times.

    The last `TransientError` is raised again with how many attempts were made over how long, so
    the message a user sees says both what failed and that it was retried.
    """
    policy = policy or RetryPolicy.from_env()
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return operation()
        except TransientError as error:
            if attempt >= policy.attempts:
                elapsed = time.monotonic() - started
                raise type(error)(f"{error} (gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                                  f"in {elapsed:.1f} s)") from error
            delay = policy.delay(attempt)
            logger.warning("%s: %s; retry %d of %d in %.1f s", what, error, attempt, policy.attempts - 1, delay)
            time.sleep(delay)
            attempt += 1
