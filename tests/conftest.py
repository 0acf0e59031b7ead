"""Shared fixtures: offline env, a session-wide real Prefect API, and fresh real workspaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real, temporary Prefect API for the whole session; cache records in a fresh dir."""
    storage = tmp_path_factory.mktemp("prefect-storage")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(storage)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory):
    """One real workspace (git + DVC registry, holdout, data-v1) made once; tests get copies."""
    from labelloop.config import Params
    from labelloop.apps.init import init_workspace

    root = tmp_path_factory.mktemp("template") / "ws"
    params = Params().with_overrides(production={"rows_per_cycle": 400}, select={"batch_size": 40},
                                     train={"n_estimators": 40, "max_depth": 4})
    return init_workspace(root, params)


def clone_workspace(template, destination: Path):
    """A private copy of a workspace, its DVC remote re-pointed at the copy's own remote."""
    from labelloop.adapters import versioning
    from labelloop.workspace import Workspace

    shutil.copytree(template.root, destination, symlinks=True)
    ws = Workspace.at(destination)
    versioning.set_remote(ws.registry_dir, str(ws.dvc_remote_dir))
    return ws


@pytest.fixture
def workspace(workspace_template, tmp_path):
    return clone_workspace(workspace_template, tmp_path / "ws")


@contextlib.contextmanager
def lock_held_elsewhere(workspace):
    """The workspace lock held by another thread (as good as another process for flock) while the body runs."""
    from labelloop.core.lock import workspace_lock

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with workspace_lock(workspace):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join()
