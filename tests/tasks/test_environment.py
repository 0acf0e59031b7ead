"""The entry points read the process environment (tasks/environment.py); everything below gets arguments."""

from pathlib import Path

import pytest

from labelloop.tasks.environment import open_workspace, retry_policy
from labelloop.workspace import sqlite_uri


def test_policy_from_the_environment_is_validated():
    policy = retry_policy({"LABELLOOP_RETRY_ATTEMPTS": "5", "LABELLOOP_RETRY_BACKOFF_SECONDS": "0.5"})
    assert (policy.attempts, policy.delay(1), policy.delay(2), policy.delay(10)) == (5, 0.5, 1.0, 10.0)
    assert retry_policy({"LABELLOOP_HTTP_TIMEOUT_SECONDS": " "}).timeout_seconds == 30.0  # blank: the default
    with pytest.raises(ValueError, match="LABELLOOP_RETRY_ATTEMPTS='0' must be at least 1"):
        retry_policy({"LABELLOOP_RETRY_ATTEMPTS": "0"})
    with pytest.raises(ValueError, match="is not a number"):
        retry_policy({"LABELLOOP_RETRY_ATTEMPTS": "many"})


def test_the_workspace_and_its_tracking_server_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_workspace(environ={}).root == tmp_path / "workspace"
    assert open_workspace(environ={"LABELLOOP_WORKSPACE": str(tmp_path / "ws")}).root == tmp_path / "ws"
    given = open_workspace("other", environ={"LABELLOOP_WORKSPACE": str(tmp_path / "ws")})
    assert given.root == tmp_path / "other" and given.tracking_uri == sqlite_uri(tmp_path / "other" / "mlflow.db")
    served = open_workspace(Path("ws"), environ={"LABELLOOP_TRACKING_URI": "http://127.0.0.1:5000"})
    assert served.tracking_server == served.tracking_uri == "http://127.0.0.1:5000"
