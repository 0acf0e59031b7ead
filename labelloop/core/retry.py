"""Bounded retries with exponential backoff for one call to an outside service (vendor, DVC remote).

Two layers retry, each bounded, with different jobs:

- here, inside one stage call: a few quick attempts (seconds apart) that ride out a transient blip —
  a refused connection while a server restarts, a 5xx, a timeout. Only errors the caller marks as
  transient are retried; a 4xx, a bad path or bad data fail at once. The operation retried must be
  idempotent as a whole (export per batch id, fetch, content-addressed push), never one half of it.
- the Prefect task (`tasks/*.py`, `retries=` with delays of 2-30 s): reruns the whole stage after a
  longer outage. A stage run by hand or by the CLI gets only the first layer.

The policy is an argument: the entry points (CLI, flows, tasks) build it from the environment
(`labelloop.tasks.environment.retry_policy`: LABELLOOP_RETRY_ATTEMPTS, LABELLOOP_RETRY_BACKOFF_SECONDS,
LABELLOOP_HTTP_TIMEOUT_SECONDS), so a test, a deployment or one shell can tighten or loosen it without
a code change; code called without one uses the defaults below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 10.0

logger = logging.getLogger("labelloop.core.retry")


class TransientError(RuntimeError):
    """An outside service did not answer usefully this time (unreachable, 5xx, timeout); worth a retry."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # per call, the first one included
    backoff_seconds: float = 1.0  # before the first retry; doubled per retry, capped at MAX_BACKOFF_SECONDS
    timeout_seconds: float = 30.0  # per HTTP request

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.backoff_seconds * 2 ** (retry - 1), MAX_BACKOFF_SECONDS)


DEFAULT_RETRY = RetryPolicy()


def with_retries(what: str, operation: Callable[[], T], policy: RetryPolicy) -> T:
    """Run `operation`; on a `TransientError` wait and try again, at most `policy.attempts` times.

    The last `TransientError` is raised again with how many attempts were made over how long, so
    the message a user sees says both what failed and that it was retried.
    """
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
