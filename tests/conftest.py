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
# CLI commands called in-process (and the CLI processes tests start) use Prefect's temporary server, not a
# workspace's background one that would outlive the test; tests/flows/test_server.py tests that one.
os.environ.setdefault("LABELLOOP_PREFECT_SERVER", "ephemeral")


# Session fixtures that stand for one thing on this machine (a server on a fixed port, a stack that
# takes minutes to start): every test using one runs on the same xdist worker.
SINGLETON_FIXTURES = {"label_studio": "label-studio", "real_stack": "real-stack"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """For `make test` (pytest-xdist, --dist loadgroup): tests that share an expensive fixture instance
    run on one worker, so it is built once — a singleton's tests in its group, and the tests of a module
    that use one of its module-scoped fixtures in the module's group. Other tests spread freely.

    The singletons' groups go first, then the modules' (with --no-loadscope-reorder xdist hands out work
    in this order): the real stack takes a third of the suite's time on its worker and must not start last."""
    if not getattr(config.option, "loadgroup", False):  # what an xdist worker is told for --dist loadgroup
        return
    rank = {}
    for item in items:
        singleton = next((name for fixture, name in SINGLETON_FIXTURES.items() if fixture in item.fixturenames), None)
        module_shared = singleton is None and _uses_module_scoped_fixture(item)
        group = singleton or (item.nodeid.split("::", 1)[0] if module_shared else None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        rank[item.nodeid] = 0 if singleton else 1 if module_shared else 2
    items.sort(key=lambda item: rank[item.nodeid])  # stable: collection order within each rank


def pytest_collection_finish(session):
    """xdist carries a test's group in its node id; if a pytest or xdist release stops that, say so."""
    if getattr(session.config.option, "loadgroup", False):
        lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup ignored the xdist_group of {len(lost)} tests (e.g. {lost[0]}): "
                                    "check the pytest and pytest-xdist versions")


def _uses_module_scoped_fixture(item) -> bool:
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:  # not a test function (a doctest, say): nothing shared
        return False
    return any(defs and defs[-1].scope in ("module", "package", "class")
               for defs in definitions.name2fixturedefs.values())


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real, temporary Prefect API for the whole session (one per xdist worker); cache records in a fresh dir.

    Flow-run heartbeats are off: they let a server mark the runs of a dead worker process as crashed,
    and every flow here runs in this process; joining the heartbeat thread at each flow run's end took
    ~0.6 s, 40% of a cycle's time in the tests. The cycles run in subprocesses (the two CLI cycles at
    once, the real stack's worker) keep Prefect's default."""
    storage = tmp_path_factory.mktemp("prefect-storage")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(storage)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory):
    """One real workspace (git + DVC registry, holdout, data-v1) made once; tests get copies."""
    from labelloop.apps.init import init_workspace
    from labelloop.config import Params

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
