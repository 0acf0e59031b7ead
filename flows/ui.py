"""`labelloop ui -w WS`: the Prefect UI on the workspace's own server, with its deployments served.

The CLI makes sure the workspace's background Prefect server runs (`labelloop.flows.server`), then starts
this module as a second background process, which registers one deployment per stage flow, `retrain`
and the full cycle (`flows/deploy.py`'s SPECS: the same flows as the production deployments), and then
serves them with Prefect's runner — no work pool, no worker, no Postgres. A run started in the UI
("Run → Custom run") runs in a subprocess of this process.

The deployments hold only the workspace path: each run reads the workspace's `params.yaml` as it is at
run time, and the sections a custom run fills in override it for that run only (`flows/stages.resolve`).

    python -m labelloop.flows.ui WORKSPACE     what the CLI starts (its output: .prefect/labelloop-ui.log)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from labelloop.core.io import write_json
from labelloop.core.lock import workspace_lock
from labelloop.flows import server
from labelloop.flows.deploy import SPECS, workspace_slug
from labelloop.workspace import Workspace

UI = "ui"
DEPLOYMENT_NAME = "local"
READY_TIMEOUT_SECONDS = 240.0  # a fresh process imports the flows (the ML stack) before it registers them


def ready_path(ws: Workspace) -> Path:
    """Written by the serving process once its deployments are registered: {flow name: deployment id}."""
    return ws.prefect_home / "labelloop-ui-deployments.json"


def deployment_specs(ws: Workspace) -> dict:
    """The SPECS this workspace gets: `production` only where there is simulated traffic to serve."""
    return {key: spec for key, spec in SPECS.items() if not spec.needs_simulator or ws.traffic_path.exists()}


def build_deployments(ws: Workspace) -> list:
    """One RunnerDeployment per spec: no schedule, parameters = the workspace only, the run form made
    for overrides (`deploy.run_form_schema`); retrain with its event trigger (`deploy.event_triggers`)."""
    from prefect.types.entrypoint import EntrypointType

    from labelloop.flows.deploy import event_triggers, for_run_form, load_flow

    deployments = []
    for spec in deployment_specs(ws).values():
        deployments.append(for_run_form(load_flow(spec).to_deployment(
            name=DEPLOYMENT_NAME,
            parameters={"workspace": str(ws.root)},
            triggers=event_triggers(spec, ws.root),  # retrain runs when `labelloop import` (or its deployment) lands labels
            description=(f"{spec.description}\n\nWorkspace: {ws.root}. Empty fields take the workspace's params.yaml "
                         "as it is when the run starts; a field filled in overrides it for this run only."),
            tags=["labelloop", f"workspace:{workspace_slug(ws.root)}", *spec.tags],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ), spec))
    return deployments


def serve_workspace(root: str) -> None:
    """Register the deployments, say so in the ready file, then run what the UI starts until stopped."""
    import asyncio

    from prefect.runner import Runner

    from labelloop.core.threads import apply_thread_environment

    apply_thread_environment()
    ws = Workspace.at(root).require()
    # Prefect's default poll (10 s): polling every second, a run submitted from the UI twice failed to be created
    # (the page's "Something went wrong", no flow run, nothing in the server's log), the SQLite server being busy
    # with the runner's polls is the suspect (not seen at the default).
    runner = Runner(name=f"labelloop-ui-{workspace_slug(ws.root)}", pause_on_shutdown=False, limit=1)
    ids = {deployment.flow_name: str(runner.add_deployment(deployment)) for deployment in build_deployments(ws)}
    write_json(ready_path(ws), {"pid": os.getpid(), "deployments": ids})
    sys.stdout.write(f"serving {len(ids)} deployments of {ws.root}\n")
    sys.stdout.flush()
    asyncio.run(runner.start())


def ensure_served(ws: Workspace, api: server.Background, timeout: float = READY_TIMEOUT_SECONDS) -> tuple[dict[str, str], bool]:
    """{flow name: deployment id} served for the workspace; (that, started now?). Starts the serving
    process unless one of ours runs with its deployments registered on this server."""
    with workspace_lock(ws, name=server.LOCK_NAME, wait_seconds=timeout + 30):
        process = server.read_state(ws, UI)
        ready = _ready(ws)
        if process is not None:
            if server.owner(process) == "ours" and ready and ready.get("pid") == process.pid and process.url == api.url:
                return ready["deployments"], False
            if server.owner(process) == "ours":  # serving another server's deployments (the server was restarted)
                server.terminate(process)
            server.drop_state(ws, UI)
        return _start(ws, api, timeout), True


def _ready(ws: Workspace) -> dict | None:
    try:
        return json.loads(ready_path(ws).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _start(ws: Workspace, api: server.Background, timeout: float) -> dict[str, str]:
    ready_path(ws).unlink(missing_ok=True)
    log = server.log_path(ws, UI)
    command = [sys.executable, "-m", "labelloop.flows.ui", str(ws.root)]
    env = dict(os.environ, PREFECT_API_URL=api.api_url, PREFECT_HOME=str(ws.prefect_home))
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} serving deployments on {api.url}\n".encode())
        out.flush()
        child = subprocess.Popen(command, env=env, cwd=ws.root, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    # url = the server whose deployments it serves: a restarted server gets a new serving process
    process = server.Background(UI, child.pid, api.url, str(log), time.strftime("%Y-%m-%dT%H:%M:%S"),
                                ("labelloop.flows.ui", str(ws.root)))
    server.write_state(ws, process)
    deadline = time.monotonic() + timeout
    while True:
        ready = _ready(ws)
        if ready is not None and ready.get("pid") == child.pid:
            return ready["deployments"]
        code = child.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                server.terminate(process)
            server.drop_state(ws, UI)
            why = f"exited with status {code}" if code is not None else f"registered nothing within {timeout:.0f} s"
            raise server.ServerError(f"the process serving {ws.root}'s deployments {why}; its log is {log}:\n"
                                     f"{server.tail(log)}")
        time.sleep(0.5)


def stop(ws: Workspace) -> str:
    """Stop the serving process: 'stopped', 'stale' or 'not running'."""
    outcome, _ = server.stop(ws, UI)
    ready_path(ws).unlink(missing_ok=True)
    return outcome


if __name__ == "__main__":  # pragma: no cover - the background process `labelloop ui` starts
    serve_workspace(sys.argv[1])
