"""Register labelloop's deployments with the configured Prefect API (a process work pool runs them).

    python -m labelloop.flows.deploy [--workspace DIR] [--name production] [--work-pool labelloop] [--mode stages|cycle]
                           [--set SECTION.KEY=VALUE ...] [--timezone UTC] [--paused]

One deployment per stage flow, one for `retrain` (dataset → train → gate when new labels arrived)
and one for the full `active_learning_cycle`, all named `--name` and bound to one workspace.
Parameter defaults come from the workspace's `params.yaml` (the repo's `params.yaml` for a new
workspace), so the UI's custom-run form shows the values in force and every field is editable; the
parameter types are the pydantic section models, so the UI validates them like the file.
Rerun `make deploy` after editing params.yaml.

Schedules (`--mode stages`, the default): production traffic hourly (simulated workspaces only),
capture / select / export daily, import hourly, retrain hourly after import (no-op without new
labels); the full cycle's daily schedule exists but is paused. `--mode cycle` inverts that.

Overlap: every deployment of a workspace goes to one work queue with concurrency limit 1, so two
runs on one workspace never run at once (the next one waits in Scheduled/Late until the slot is
free); the cycle deployment also has its own limit 1 with ENQUEUE (state AwaitingConcurrencySlot)
and the cycle holds the workspace file lock as the last line of defence.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CYCLE_SECTIONS = ("production", "capture", "select", "export", "import_", "train", "gate")


@dataclass(frozen=True)
class Spec:
    flow: str  # "path.py:function"
    sections: dict[str, str]  # flow parameter name -> params.yaml section
    cron: str | None = None
    description: str = ""
    active_in: tuple[str, ...] = ("stages",)
    needs_simulator: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


SPECS: dict[str, Spec] = {
    "production": Spec("flows/stages.py:production_flow", {"params": "production"}, "0 * * * *",
                       "Simulated production traffic scored by the champion (demo workspaces only).", needs_simulator=True),
    "capture": Spec("flows/stages.py:capture_flow", {"params": "capture"}, "0 1 * * *",
                    "New prediction-log parts → validated → low-confidence candidates (daily)."),
    "select": Spec("flows/stages.py:select_flow", {"params": "select"}, "20 1 * * *",
                   "Score the pool with the champion, write the next batch (daily)."),
    "export": Spec("flows/stages.py:export_flow", {"params": "export"}, "40 1 * * *",
                   "Send selected batches to the annotation vendor (daily)."),
    "import": Spec("flows/stages.py:import_flow", {"params": "import"}, "5 * * * *",
                   "Fetch, validate and aggregate the vendor's labels (hourly)."),
    "retrain": Spec("flows/ops.py:retrain_flow", {"train": "train", "gate": "gate"}, "35 * * * *",
                    "dataset → retrain → gate when new labels arrived (hourly, no-op otherwise)."),
    "dataset": Spec("flows/stages.py:dataset_flow", {}, None, "New DVC data version from imported labels (manual)."),
    "train": Spec("flows/stages.py:train_flow", {"params": "train"}, None, "Train a challenger on the current data version (manual)."),
    "gate": Spec("flows/stages.py:gate_flow", {"params": "gate"}, None, "Challenger vs champion; promote if the rules pass (manual)."),
    "cycle": Spec("flows/cycle.py:active_learning_cycle", {s: s.rstrip("_") for s in CYCLE_SECTIONS}, "0 3 * * *",
                  "One full turn of the loop (production → … → gate).", active_in=("cycle",), tags=("cycle",)),
}


def workspace_slug(root: Path) -> str:
    """A short, stable name for a workspace: its directory name + a hash of its absolute path."""
    base = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-") or "workspace"
    return f"{base[:24]}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def queue_name(root: Path) -> str:
    return f"ws-{workspace_slug(root)}"


def ensure_workspace(root: Path, params_file: Path | None, overrides: dict[str, dict[str, Any]]):
    """The workspace at `root`; created from `params_file` (+ overrides) when it does not exist yet."""
    from labelloop.config import load_params
    from labelloop.apps.init import init_workspace
    from labelloop.workspace import Workspace

    ws = Workspace.at(root)
    if ws.exists():
        if overrides:
            print(f"note: --set applies only to a new workspace; {ws.root} keeps its params.yaml", file=sys.stderr)
        return ws
    params = load_params(params_file or REPO / "params.yaml").with_overrides(**overrides)
    print(f"creating workspace {ws.root} from {params_file or REPO / 'params.yaml'}")
    return init_workspace(ws.root, params)


def parameters_for(spec: Spec, workspace: str, params) -> dict[str, Any]:
    values: dict[str, Any] = {"workspace": workspace}
    for argument, section in spec.sections.items():
        values[argument] = params.section(section).model_dump(mode="json")
    return values


def ensure_pool_and_queue(pool: str, queue: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                print(f"work pool {pool!r} (process) created")
            except ObjectAlreadyExists:
                pass
        try:
            existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
            if existing.concurrency_limit != 1:
                client.update_work_queue(existing.id, concurrency_limit=1)
        except ObjectNotFound:
            client.create_work_queue(queue, work_pool_name=pool, concurrency_limit=1,
                                     description="All runs on one labelloop workspace: one at a time.")
            print(f"work queue {queue!r} (concurrency 1) created in pool {pool!r}")


def register(workspace: Path, name: str, pool: str, mode: str = "stages", timezone: str = "UTC", paused: bool = False,
             params_file: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None,
             only: list[str] | None = None) -> dict[str, str]:
    """Create or update every deployment; returns {deployment full name: id}."""
    from prefect import flow as prefect_flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    ws = ensure_workspace(workspace, params_file, overrides or {})
    params = ws.params()
    queue = queue_name(ws.root)
    ensure_pool_and_queue(pool, queue)
    from labelloop.workspace import ENV_TRACKING_URI

    from labelloop.adapters.tracking import mlflow_uri
    from labelloop.tasks.vendor import SECRET_BLOCKS, TOKEN_ENV

    # The tracking server the flows must use (labelloop reads $LABELLOOP_TRACKING_URI; else the workspace's SQLite).
    # Job variables are stored in Prefect's database: no credentials there. A password in the URI stays in
    # the worker's own environment (MLFLOW_TRACKING_USERNAME/PASSWORD); the vendor token goes to a Secret block.
    env = {k: mlflow_uri(os.environ[k], environ={}) for k in (ENV_TRACKING_URI, "MLFLOW_TRACKING_URI") if os.environ.get(k)}
    if os.environ.get(TOKEN_ENV):
        from prefect.blocks.system import Secret

        Secret(value=os.environ[TOKEN_ENV]).save(SECRET_BLOCKS[TOKEN_ENV], overwrite=True)
    # Flow-run processes import the ML stack at once: the passive OpenMP wait must be in their environment.
    env |= {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
            "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1", "PYTHONWARNINGS": "ignore"}
    has_simulator = (ws.simulator_dir / "traffic.parquet").exists()
    created: dict[str, str] = {}
    for key, spec in SPECS.items():
        if only and key not in only:
            continue
        if spec.needs_simulator and not has_simulator:
            continue
        loaded = prefect_flow.from_source(source=str(REPO), entrypoint=spec.flow)
        schedules = []
        if spec.cron:
            schedules = [Cron(spec.cron, timezone=timezone, active=(mode in spec.active_in) and not paused)]
        concurrency = None
        if key == "cycle":
            concurrency = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
        deployment_id = loaded.deploy(
            name=name,
            work_pool_name=pool,
            work_queue_name=queue,
            job_variables={"env": env, "working_dir": str(REPO)},
            schedules=schedules,
            concurrency_limit=concurrency,
            parameters=parameters_for(spec, str(ws.root), params),
            description=f"{spec.description}\n\nWorkspace: {ws.root}",
            tags=["labelloop", f"workspace:{workspace_slug(ws.root)}", *spec.tags],
            print_next_steps=False,
        )
        created[f"{loaded.name}/{name}"] = str(deployment_id)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop.flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=os.environ.get("LABELLOOP_WORKSPACE", "./workspace"))
    parser.add_argument("--name", default="production", help="Deployment name (flow/NAME).")
    parser.add_argument("--work-pool", default=os.environ.get("WORK_POOL", "labelloop"))
    parser.add_argument("--mode", choices=["stages", "cycle"], default="stages",
                        help="stages: per-stage schedules active, cycle schedule paused; cycle: the reverse.")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--paused", action="store_true", help="Register every schedule inactive.")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml for a new workspace [default: the repo's].")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="SECTION.KEY=VALUE for a new workspace.")
    parser.add_argument("--only", action="append", default=None, choices=sorted(SPECS), help="Register only these.")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        parser.error("PREFECT_API_URL is not set: start the stack (make stack-up) and `source .stack/env`, or use `make deploy`")
    from labelloop.flows.cli import parse_overrides

    created = register(Path(args.workspace).expanduser().resolve(), args.name, args.work_pool, args.mode, args.timezone,
                       args.paused, args.params, parse_overrides(args.set_), args.only)
    api = os.environ["PREFECT_API_URL"].removesuffix("/api")
    for full_name, deployment_id in created.items():
        print(f"deployment {full_name:<36} {api}/deployments/deployment/{deployment_id}")
    print(f"{len(created)} deployments on work pool {args.work_pool!r}; start a worker: "
          f"prefect worker start --pool {args.work_pool}  (make deploy does)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
