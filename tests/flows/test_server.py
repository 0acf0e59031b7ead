"""The workspace's background Prefect server (flows/server.py): start, reuse by later commands, stop, and
what a stale record, a reused pid, a hung server, a failed start and two commands racing do.

One test starts a real server (through the CLI, as a user does); the others use stand-in processes
(`sleep` under a server-like command line) so no second server starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from labelloop.flows import server
from labelloop.workspace import Workspace

LABELLOOP = str(Path(sys.executable).parent / "labelloop")


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([LABELLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _alive(pid: int) -> bool:
    return server.command_line(pid) is not None


def _stand_in(*marker: str) -> subprocess.Popen:
    """A process whose command line holds `marker` (what `owner` checks), doing nothing for a minute."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *marker])


def _record(ws: Workspace, pid: int, port: int = 1) -> server.Background:
    process = server.Background(server.SERVER, pid, f"http://127.0.0.1:{port}", str(server.log_path(ws, server.SERVER)),
                                "2026-01-01T00:00:00", (server.SERVER_APP, "--port", str(port)))
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    server.write_state(ws, process)
    return process


@pytest.fixture
def fake_start(monkeypatch):
    """`_start` replaced by a stand-in server that answers health checks; returns the calls made."""
    started: list[server.Background] = []
    children: list[subprocess.Popen] = []

    def start(ws, timeout, environ):
        time.sleep(0.5)  # long enough for a racing command to arrive at the lock
        child = _stand_in(server.SERVER_APP, "--port", "4242")
        children.append(child)
        process = _record(ws, child.pid, 4242)
        started.append(process)
        return process

    monkeypatch.setattr(server, "_start", start)
    monkeypatch.setattr(server, "healthy", lambda url, timeout=3.0: url == "http://127.0.0.1:4242")
    yield started
    for child in children:
        child.kill()
        child.wait()


@pytest.mark.slow  # one real Prefect server (~15-25 s to start) and a stage command in a fresh process
def test_started_by_the_first_command_reused_by_the_next_and_stopped(workspace):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "LABELLOOP_PREFECT_SERVER", "PREFECT_HOME")}
    ws = str(workspace.root)
    try:
        first = _cli("server", "start", "-w", ws, env=env)
        assert first.returncode == 0, first.stderr
        assert "Prefect server started at http://127.0.0.1:" in first.stdout
        process = server.read_state(workspace, server.SERVER)
        assert process is not None and _alive(process.pid) and server.healthy(process.url)
        assert "running at " + process.url in _cli("server", "status", "-w", ws, env=env).stdout
        assert f"prefect server: running at {process.url}" in _cli("status", "-w", ws, env=env).stdout

        again = _cli("server", "start", "-w", ws, env=env)
        assert f"already running at {process.url} (pid {process.pid}" in again.stdout

        stage = _cli("dataset", "-w", ws, env=env)  # a stage command talks to that server: no new one started
        assert stage.returncode == 0, stage.stderr
        assert "started this workspace's Prefect server" not in stage.stderr
        assert server.read_state(workspace, server.SERVER) == process
        request = urllib.request.Request(f"{process.api_url}/flow_runs/filter", data=b'{"limit": 10}',
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.load(response)
        assert [run["state_type"] for run in runs] == ["COMPLETED"]  # the dataset flow run, recorded on this server

        stopped = _cli("server", "stop", "-w", ws, env=env)
        assert "Prefect server: stopped" in stopped.stdout
        assert not _alive(process.pid) and server.read_state(workspace, server.SERVER) is None
        assert "Prefect server: not running" in _cli("server", "status", "-w", ws, env=env).stdout
    finally:
        leftover = server.read_state(workspace, server.SERVER)
        if leftover is not None and server.owner(leftover) == "ours":
            server.terminate(leftover)


def test_a_record_of_a_process_that_is_gone_is_replaced(tmp_path, fake_start):
    ws = Workspace.at(tmp_path / "ws")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record(ws, gone.pid)
    assert server.describe(ws)[0].startswith(f"stale: pid {gone.pid} no longer runs")
    process, started = server.ensure(ws)
    assert started and len(fake_start) == 1 and process.pid != gone.pid
    assert server.read_state(ws, server.SERVER) == process


def test_a_pid_now_used_by_another_program_is_left_alone(tmp_path, fake_start):
    ws = Workspace.at(tmp_path / "ws")
    other = subprocess.Popen(["sleep", "60"])  # the recorded pid, given by the system to another program
    try:
        _record(ws, other.pid)
        assert "is now another program" in server.describe(ws)[0]
        _, started = server.ensure(ws)
        assert started and other.poll() is None  # never signalled
        assert server.stop(ws)[0] == "stopped" and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_server_of_ours_that_does_not_answer_is_replaced(tmp_path, fake_start, monkeypatch):
    ws = Workspace.at(tmp_path / "ws")
    hung = _stand_in(server.SERVER_APP, "--port", "1")
    monkeypatch.setattr(server, "_wait_healthy", lambda process, seconds: server.healthy(process.url))
    try:
        _record(ws, hung.pid, 1)
        assert server.describe(ws)[0] == "not answering"
        process, started = server.ensure(ws)
        assert started and process.pid != hung.pid
        assert hung.wait(timeout=30) is not None  # terminated: it was ours
    finally:
        hung.kill()
        hung.wait()


def test_two_commands_starting_at_once_share_one_server(tmp_path, fake_start):
    ws = Workspace.at(tmp_path / "ws")
    results: list[tuple[server.Background, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(server.ensure(ws))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(fake_start) == 1
    assert sorted(started for _, started in results) == [False, True]
    assert results[0][0] == results[1][0]


def test_a_server_that_fails_to_start_is_one_error_naming_its_log(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    fake = tmp_path / "fake-modules"
    fake.mkdir()
    (fake / "uvicorn.py").write_text("import sys\nprint('cannot bind: address already in use')\nsys.exit(3)\n")
    environ = {**os.environ, "PYTHONPATH": str(fake)}  # `python -m uvicorn` finds this one first
    with pytest.raises(server.ServerError) as error:
        server.ensure(ws, timeout=60, environ=environ)
    message = str(error.value)
    assert "exited with status 3" in message and str(server.log_path(ws, server.SERVER)) in message
    assert "cannot bind: address already in use" in message
    assert server.read_state(ws, server.SERVER) is None  # nothing recorded for the next command to trust


def test_stop_without_a_server_says_so(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    assert server.stop(ws) == ("not running", None)
    assert server.describe(ws) == ("not running", None)


def test_the_environment_chooses_ephemeral_or_background():
    from labelloop.tasks.environment import prefect_server_mode

    assert prefect_server_mode({}) == "background"
    assert prefect_server_mode({"LABELLOOP_PREFECT_SERVER": "Ephemeral"}) == "ephemeral"
    with pytest.raises(ValueError, match="LABELLOOP_PREFECT_SERVER='tmp': allowed values are background, ephemeral"):
        prefect_server_mode({"LABELLOOP_PREFECT_SERVER": "tmp"})


def test_the_server_runs_with_the_workspaces_prefect_home_and_its_own_port(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    env = server.server_environment(ws, 4321, {"PREFECT_API_URL": "http://elsewhere/api", "PATH": "/bin",
                                               "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql://x"})
    assert env["PREFECT_HOME"] == str(ws.prefect_home) and env["PREFECT_SERVER_API_PORT"] == "4321"
    assert "PREFECT_API_URL" not in env and "PREFECT_API_DATABASE_CONNECTION_URL" not in env and env["PATH"] == "/bin"
