"""The workspace's own Prefect server, started once in the background and reused by every later command.

Without `PREFECT_API_URL`, Prefect starts a temporary server inside each process (10–17 s on this kind of
machine, every command). Instead the first stage command, `cycle` or `ui` on a workspace starts
`uvicorn prefect.server.api.server:create_app` detached from the terminal, with `PREFECT_HOME` = the
workspace's `.prefect` (SQLite database there, the runs of earlier commands kept), on a free port of
127.0.0.1; later commands find it through a state file and talk to it.

    <workspace>/.prefect/labelloop-server.json   pid, port, URL, start time, log path
    <workspace>/.prefect/labelloop-server.log    the server's output (named in every start error)
    <workspace>/state/prefect-server.lock        held while one command checks or starts the server

Reuse is checked, never assumed: the recorded pid must still run, its command line must be this server's
(a pid the system gave to another program is left alone and the record dropped), and `/api/health` must
answer. A server that is ours but does not answer is stopped and replaced. Two commands starting at
once: the lock makes the second wait and then reuse the first's server. A server that does not come
up is one `ServerError` naming its exit status and its log, with the log's last lines.

`labelloop server start|stop|status -w WS` does the same by hand; `stop` also ends the `labelloop ui`
process serving the workspace's deployments (`labelloop.flows.ui`), which depends on the server.

This module does not import Prefect (it starts a process), so `labelloop server status` answers at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from labelloop.core.io import write_json
from labelloop.core.lock import workspace_lock
from labelloop.workspace import Workspace

SERVER = "server"
SERVER_APP = "prefect.server.api.server:create_app"
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 180.0  # first start on a busy 2-core machine: imports + database migrations
LOCK_NAME = "prefect-server"


class ServerError(RuntimeError):
    """The workspace's Prefect server could not be started or stopped; the message names its log."""


@dataclass(frozen=True)
class Background:
    """A process labelloop started for a workspace: the Prefect server, or the `ui` deployment server."""

    name: str
    pid: int
    url: str | None
    log: str
    started_at: str
    marker: tuple[str, ...]  # arguments its command line must hold: a reused pid never passes for ours

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def state_path(ws: Workspace, name: str) -> Path:
    return ws.prefect_home / f"labelloop-{name}.json"


def log_path(ws: Workspace, name: str) -> Path:
    return ws.prefect_home / f"labelloop-{name}.log"


def read_state(ws: Workspace, name: str) -> Background | None:
    path = state_path(ws, name)
    try:
        data = json.loads(path.read_text())
        return Background(data["name"], int(data["pid"]), data.get("url"), data["log"], data["started_at"],
                          tuple(data["marker"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # torn or hand-edited: as good as no record
        return None


def write_state(ws: Workspace, process: Background) -> None:
    write_json(state_path(ws, process.name), asdict(process))


def drop_state(ws: Workspace, name: str) -> None:
    state_path(ws, name).unlink(missing_ok=True)


# -- is the recorded process still ours? -------------------------------------------------------------------
def command_line(pid: int) -> list[str] | None:
    """The process's arguments (Linux /proc); None when no such process runs (a zombie counts as gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if state in ("Z", "X"):
        _reap(pid)
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int) -> None:
    """Collect a child that exited (when this process started it), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: init reaps it
        pass


def owner(process: Background) -> str:
    """'ours' (running, its command line holds the marker), 'gone' (no such process) or 'foreign'
    (the pid now belongs to another program)."""
    arguments = command_line(process.pid)
    if arguments is None:
        return "gone"
    joined = "\0".join(arguments)
    return "ours" if all(part in arguments or part in joined for part in process.marker) else "foreign"


def healthy(url: str | None, timeout: float = 3.0) -> bool:
    """Prefect's health endpoint answers `true`."""
    if url is None:
        return False
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- start, reuse, stop ---------------------------------------------------------------------------------------
def running(ws: Workspace) -> Background | None:
    """The workspace's server when it runs, is ours and answers; None otherwise (the record untouched)."""
    process = read_state(ws, SERVER)
    if process is None or owner(process) != "ours" or not healthy(process.url):
        return None
    return process


def ensure(ws: Workspace, timeout: float = START_TIMEOUT_SECONDS,
           environ: Mapping[str, str] | None = None) -> tuple[Background, bool]:
    """The workspace's server, started when none answers; (server, started now?).

    Under the workspace's server lock: a second command arriving meanwhile waits, then reuses it."""
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    with workspace_lock(ws, name=LOCK_NAME, wait_seconds=timeout + 30):
        process = read_state(ws, SERVER)
        if process is not None:
            found = owner(process)
            if found == "ours" and _wait_healthy(process, 10.0):
                return process, False
            if found == "ours":  # ours but not answering (hung, or stopped half-way): replace it
                terminate(process)
            drop_state(ws, SERVER)  # gone, foreign (the pid was reused: never signalled) or replaced
        return _start(ws, timeout, os.environ if environ is None else environ), True


def server_environment(ws: Workspace, port: int, environ: Mapping[str, str]) -> dict[str, str]:
    """What the server process runs with: the workspace's PREFECT_HOME (and so its SQLite database), the
    port it serves on (the UI asks its API there), no analytics, and none of a client's API settings."""
    env = {k: v for k, v in environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_UI_API_URL",
                        "PREFECT_PROFILES_PATH")}
    env.update({
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_LOGGING_LEVEL": env.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
        "DO_NOT_TRACK": "1",
    })
    return env


def _start(ws: Workspace, timeout: float, environ: Mapping[str, str]) -> Background:
    port = free_port()
    log = log_path(ws, SERVER)
    command = [sys.executable, "-m", "uvicorn", "--factory", SERVER_APP, "--host", HOST, "--port", str(port),
               "--timeout-keep-alive", "30", "--log-level", "warning"]
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(command)}\n".encode())
        out.flush()
        child = subprocess.Popen(command, env=server_environment(ws, port, environ), cwd=ws.prefect_home,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # its own session: a Ctrl-C in this terminal does not stop it
    process = Background(SERVER, child.pid, f"http://{HOST}:{port}", str(log), time.strftime("%Y-%m-%dT%H:%M:%S"),
                         (SERVER_APP, "--port", str(port)))
    write_state(ws, process)  # recorded at once: a start interrupted now is found (and replaced) by the next command
    deadline = time.monotonic() + timeout
    while not healthy(process.url):
        code = child.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                terminate(process)
            drop_state(ws, SERVER)
            why = f"exited with status {code}" if code is not None else f"did not answer within {timeout:.0f} s"
            raise ServerError(f"the Prefect server for {ws.root} {why}; its log is {log}:\n{tail(log)}")
        time.sleep(0.5)
    return process


def _wait_healthy(process: Background, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if healthy(process.url):
            return True
        if time.monotonic() > deadline or owner(process) != "ours":
            return False
        time.sleep(0.5)


def terminate(process: Background, grace_seconds: float = 15.0) -> None:
    """SIGTERM to the process's group (uvicorn and what it started), SIGKILL after the grace period.
    Only ever called for a process whose command line was checked to be ours."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        try:
            if os.getpgid(process.pid) == process.pid:  # a session of its own (how labelloop starts them)
                os.killpg(process.pid, sig)
            else:
                os.kill(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if command_line(process.pid) is None:
                return
            time.sleep(0.2)


def stop(ws: Workspace, name: str = SERVER) -> tuple[str, Background | None]:
    """Stop a background process of the workspace: ('stopped' | 'not running' | 'stale', its record)."""
    with workspace_lock(ws, name=LOCK_NAME, wait_seconds=60):
        process = read_state(ws, name)
        if process is None:
            return "not running", None
        found = owner(process)
        if found == "ours":
            terminate(process)
        drop_state(ws, name)
        return ("stopped" if found == "ours" else "stale"), process


def describe(ws: Workspace, name: str = SERVER) -> tuple[str, Background | None]:
    """('running' | 'not answering' | 'not running' | 'stale: ...', record) without changing anything."""
    process = read_state(ws, name)
    if process is None:
        return "not running", None
    found = owner(process)
    if found == "gone":
        return f"stale: pid {process.pid} no longer runs (the next command starts a new one)", process
    if found == "foreign":
        return f"stale: pid {process.pid} is now another program (left alone; the next command starts a new one)", process
    if process.url is not None and not healthy(process.url):
        return "not answering", process
    return "running", process


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"
