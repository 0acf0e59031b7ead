"""What the process environment configures, read here and nowhere below the entry points.

A deployment (job variables), a shell (`source .stack/env`) or a test sets these variables; the CLI,
the flows and the tasks read them through this module and hand the values to `labelloop` as
arguments (`Workspace.tracking_server`, a `RetryPolicy`), so domain, stage and adapter code never
looks at the environment.

    LABELLOOP_WORKSPACE              the workspace a command works on when none is given (else ./workspace)
    LABELLOOP_TRACKING_URI           an MLflow tracking server; unset: SQLite in the workspace.
                                     Not $MLFLOW_TRACKING_URI: `mlflow.set_tracking_uri` exports that
                                     variable, so it would leak one workspace's store into the next
                                     workspace opened in the same process.
    LABELLOOP_RETRY_ATTEMPTS         attempts per call to an outside service (default 3)
    LABELLOOP_RETRY_BACKOFF_SECONDS  first delay, doubled per retry, capped at 10 s (default 1)
    LABELLOOP_HTTP_TIMEOUT_SECONDS   per HTTP request (default 30)
    LABELLOOP_PREFECT_SERVER         without PREFECT_API_URL, which Prefect API the CLI's flows use:
                                     `background` (default: the workspace's own server, started once and
                                     reused, `labelloop.flows.server`) or `ephemeral` (Prefect's temporary
                                     server inside each process; the test suite's in-process CLI calls)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from labelloop.core.retry import RetryPolicy
from labelloop.workspace import Workspace

ENV_WORKSPACE = "LABELLOOP_WORKSPACE"
ENV_TRACKING_URI = "LABELLOOP_TRACKING_URI"
ENV_RETRY_ATTEMPTS = "LABELLOOP_RETRY_ATTEMPTS"
ENV_RETRY_BACKOFF = "LABELLOOP_RETRY_BACKOFF_SECONDS"
ENV_HTTP_TIMEOUT = "LABELLOOP_HTTP_TIMEOUT_SECONDS"
ENV_PREFECT_SERVER = "LABELLOOP_PREFECT_SERVER"
PREFECT_SERVER_MODES = ("background", "ephemeral")
DEFAULT_WORKSPACE = "./workspace"


def open_workspace(root: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Workspace:
    """The workspace at `root` (default: $LABELLOOP_WORKSPACE, else ./workspace), with the tracking
    server $LABELLOOP_TRACKING_URI names."""
    environ = os.environ if environ is None else environ
    path = root if root is not None else (environ.get(ENV_WORKSPACE) or DEFAULT_WORKSPACE)
    return Workspace.at(path, tracking_server=environ.get(ENV_TRACKING_URI))


def retry_policy(environ: Mapping[str, str] | None = None) -> RetryPolicy:
    """The bounded retries for outside services this process was configured with (defaults where unset).

    Read at each call, so a test, a deployment or one shell can tighten or loosen it without a code change."""
    environ = os.environ if environ is None else environ
    return RetryPolicy(
        attempts=int(_number(environ, ENV_RETRY_ATTEMPTS, RetryPolicy.attempts, minimum=1)),
        backoff_seconds=_number(environ, ENV_RETRY_BACKOFF, RetryPolicy.backoff_seconds, minimum=0),
        timeout_seconds=_number(environ, ENV_HTTP_TIMEOUT, RetryPolicy.timeout_seconds, minimum=0.001),
    )


def prefect_server_mode(environ: Mapping[str, str] | None = None) -> str:
    """`background` or `ephemeral` ($LABELLOOP_PREFECT_SERVER; default background)."""
    environ = os.environ if environ is None else environ
    mode = (environ.get(ENV_PREFECT_SERVER) or "background").strip().lower()
    if mode not in PREFECT_SERVER_MODES:
        raise ValueError(f"{ENV_PREFECT_SERVER}={environ.get(ENV_PREFECT_SERVER)!r}: allowed values are "
                         f"{', '.join(PREFECT_SERVER_MODES)}")
    return mode


def _number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value
