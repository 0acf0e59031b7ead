"""Shared fixtures: offline env, a session-wide real Prefect API, and fresh real workspaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
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
SINGLETON_FIXTURES = {"real_stack": "real-stack", "label_studio": "label-studio"}  # the longest group first

# Rough seconds the longest tests take on an idle 2-core box (module → test function, for every parametrization),
# for the order xdist hands out work in: longest first. Any other test counts 20 s if marked slow, 5 s if it
# uses a workspace or the Prefect API, else 1 s. Only the order depends on these figures: a wrong one costs
# time, never a test.
KNOWN_SECONDS = {
    "tests/integration/test_real_tables.py": {"test_init_then_three_cycles_on_a_real_table": 90},  # init + 3 cycles
    "tests/integration/test_ui_browser.py": {"test_custom_cycle_run_from_labelloop_ui_with_one_changed_parameter": 80},
    "tests/reliability/test_cli_concurrency.py": {
        "test_two_cli_cycles_at_once_one_runs_the_other_exits_at_once_naming_the_lock": 75},
    "tests/test_data_versions.py": {"test_data_checkout_is_a_separate_clone_where_dvc_repro_and_exp_run_work": 60},
    "tests/flows/test_run_guarantees.py": {
        "test_rollback_then_two_ui_cycles_with_overrides_keep_one_params_set_and_the_rollback": 58,
        "test_a_cycle_killed_after_its_dataset_step_is_completed_by_the_next": 50,
        "test_a_registry_off_its_production_line_stops_the_cycle_before_any_write": 30},
    "tests/flows/test_server.py": {"test_started_by_the_first_command_reused_by_the_next_and_stopped": 40},
    "tests/flows/test_events.py": {"test_the_server_runs_retrain_once_per_import_that_lands_labels_and_not_on_a_rerun": 40},
    "tests/reliability/test_secrets_and_privacy.py": {
        "test_a_full_cycle_writes_the_token_and_password_nowhere": 40,
        "test_credentials_in_every_uri_reach_no_file_log_artifact_or_error_line": 40},
    "tests/flows/test_cycle_auto.py": {"test_a_cycle_with_auto_records_the_arm_and_pays_its_reward_once": 30},
    "tests/flows/test_cycle.py": {"test_every_stage_flow_runs_alone": 30},
    "tests/test_workspace_paths.py": {"test_two_workspaces_whose_paths_differ_after_a_question_mark_share_nothing": 20,
                                      "test_init_train_version_and_read_back_under_an_odd_path": 15},
    "tests/flows/test_cli.py": {"test_model_rollback_moves_champion_back_and_is_not_undone_by_resume_gate": 10,
                                "test_simulate_writes_curves_summary_and_plot": 10},
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """For `make test` (pytest-xdist, --dist loadgroup): tests that share an expensive fixture instance
    run on one worker, so it is built once — a singleton's tests in its group, and the tests of a module
    that use one of its module-scoped fixtures in the module's group. Other tests spread freely.

    The singletons' groups go first, then the modules' groups, then the other tests (with --no-loadscope-reorder
    xdist hands out work in this order): the real stack takes a third of the suite's time on its worker and must
    not start last, and a module's shared state on the worker's Prefect server (tests/flows/test_cycle.py reads
    its cycles' artifacts back) is made before any other test runs a cycle there. Within each of these tiers the
    longest units of work go first (KNOWN_SECONDS), so that the last ones to start are short and both workers
    finish together."""
    if not getattr(config.option, "loadgroup", False):  # what an xdist worker is told for --dist loadgroup
        return
    tier, unit = {}, {}
    for item in items:
        singleton = next((name for fixture, name in SINGLETON_FIXTURES.items() if fixture in item.fixturenames), None)
        module_shared = singleton is None and _uses_module_scoped_fixture(item)
        group = singleton or (item.nodeid.split("::", 1)[0] if module_shared else None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        tier[item.nodeid] = 0 if singleton else 1 if module_shared else 2
        unit[item.nodeid] = group or item.nodeid
    seconds: dict[str, float] = {}
    for item in items:
        seconds[unit[item.nodeid]] = seconds.get(unit[item.nodeid], 0.0) + _expected_seconds(item)
    singleton_rank = {name: rank for rank, name in enumerate(SINGLETON_FIXTURES.values())}
    position = {item.nodeid: index for index, item in enumerate(items)}
    first = {}
    for item in items:
        first.setdefault(unit[item.nodeid], position[item.nodeid])
    items.sort(key=lambda item: (tier[item.nodeid], singleton_rank.get(unit[item.nodeid], 0), -seconds[unit[item.nodeid]],
                                 first[unit[item.nodeid]], position[item.nodeid]))  # a unit's tests together, in order


def _expected_seconds(item) -> float:
    module, _, name = item.nodeid.split("[", 1)[0].partition("::")
    known = KNOWN_SECONDS.get(module, {}).get(name)
    if known is not None:
        return known
    if item.get_closest_marker("slow"):
        return 20.0
    return 5.0 if {"workspace", "workspace_template", "prefect_api"} & set(item.fixturenames) else 1.0


# How to stop each singleton instance started in this process, registered by its fixture (stop_after_group). A
# list: a module that imports a singleton's fixture makes a second instance of it (which finds the server running).
_SINGLETON_STOPS: list[tuple[str, Callable[[], None]]] = []


def stop_after_group(fixture: str, stop: Callable[[], None]) -> Callable[[], None]:
    """`stop`, to be run once: by the singleton's fixture at its teardown, or — under --dist loadgroup, where its
    group's tests run back to back on one worker — right after the group's last test, so that an idle stack or
    server does not take CPU from the rest of the session. Returns what the fixture calls at its teardown."""
    done = []

    def once() -> None:
        if not done:
            done.append(True)
            _SINGLETON_STOPS.remove(entry)
            stop()

    entry = (fixture, once)
    _SINGLETON_STOPS.append(entry)
    return once


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        if getattr(item.config.option, "loadgroup", False):
            for fixture, stop in reversed(list(_SINGLETON_STOPS)):  # the last started first
                if fixture in item.fixturenames and (nextitem is None or fixture not in nextitem.fixturenames):
                    stop()


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
    # select.audit_fraction 0: the tests built on this workspace count batch rows exactly; the audit sample (on by
    # default) is tested where it is the point (tests/stages/test_audit.py, tests/flows/test_cycle_auto.py, the demo).
    params = Params().with_overrides(production={"rows_per_cycle": 400}, select={"batch_size": 40, "audit_fraction": 0},
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
