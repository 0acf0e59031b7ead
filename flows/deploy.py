"""Register labelloop's deployments with the configured Prefect API (a process work pool runs them).

    labelloop deploy [--workspace DIR] [--name production] [--work-pool labelloop] [--mode stages|cycle]
                     [--set SECTION.KEY=VALUE ...] [--timezone UTC] [--paused] [--only FLOW ...]

One deployment per stage flow, one for `retrain` (dataset → train → gate when new labels arrived)
and one for the full `active_learning_cycle`, all named `--name` and bound to one workspace.
A deployment's only parameter value is the workspace: every run reads the workspace's `params.yaml`
as it is when the run starts (edit the file, the next scheduled run uses it; nothing to redeploy), and a
section filled in the UI's custom-run form overrides only the fields filled, for that run
(`flows/stages.resolve`). The parameter types are the pydantic section models, so the UI validates
them like the file. A new workspace is made from `--params` (else the embedded defaults) and `--set`.

Entrypoints are module paths (`labelloop.flows.stages.capture_flow`): the worker imports the flows
from the installed labelloop package, so a deployment works from a wheel as well as from a checkout.

Schedules (`--mode stages`, the default): production traffic hourly (simulated workspaces only),
capture / select / export daily, import hourly; the full cycle's daily schedule exists but is paused.
`--mode cycle` inverts that. Retrain has no schedule: a deployment trigger (a Prefect automation owned by
the deployment, `event_triggers`) runs it when a stand-alone import of its workspace lands labels
(the event `labelloop.labels.imported`, `tasks/events.py`), enabled in `--mode stages` and disabled
with `--paused` or in `--mode cycle` (the cycle retrains on what it imports itself).

Overlap: every deployment of a workspace goes to one work queue with concurrency limit 1, so two
runs on one workspace never run at once (the next one waits in Scheduled/Late until the slot is
free); the cycle deployment also has its own limit 1 with ENQUEUE (state AwaitingConcurrencySlot)
and the cycle holds the workspace file lock as the last line of defence.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import typer

from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy
from labelloop.tasks.events import IMPORTED_BY_LABEL, LABELS_IMPORTED, WORKSPACE_LABEL, workspace_slug
from labelloop.workspace import Workspace

CYCLE_SECTIONS = ("production", "capture", "select", "export", "import_", "train", "gate")


@dataclass(frozen=True)
class Spec:
    flow: str  # module path of the flow object: "labelloop.flows.stages.capture_flow"
    sections: dict[str, str]  # flow parameter name -> the params.yaml section it overrides for one run
    cron: str | None = None
    description: str = ""
    active_in: tuple[str, ...] = ("stages",)
    needs_simulator: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    on_event: str | None = None  # run on this labelloop event of the deployment's workspace (`event_triggers`)


SPECS: dict[str, Spec] = {
    "production": Spec("labelloop.flows.stages.production_flow", {"params": "production"}, "0 * * * *",
                       "Simulated production traffic scored by the champion (demo workspaces only).", needs_simulator=True),
    "capture": Spec("labelloop.flows.stages.capture_flow", {"params": "capture"}, "0 1 * * *",
                    "New prediction-log parts → validated → low-confidence candidates (daily)."),
    "select": Spec("labelloop.flows.stages.select_flow", {"params": "select"}, "20 1 * * *",
                   "Score the pool with the champion, write the next batch (daily)."),
    "export": Spec("labelloop.flows.stages.export_flow", {"params": "export"}, "40 1 * * *",
                   "Send selected batches to the annotation vendor (daily)."),
    "import": Spec("labelloop.flows.stages.import_flow", {"params": "import"}, "5 * * * *",
                   "Fetch, validate and aggregate the vendor's labels (hourly)."),
    "retrain": Spec("labelloop.flows.ops.retrain_flow", {"train": "train", "gate": "gate"}, None,
                    "dataset → retrain → gate, run by the event an import that lands labels sends (no-op without new labels).",
                    on_event=LABELS_IMPORTED),
    "dataset": Spec("labelloop.flows.stages.dataset_flow", {}, None, "New DVC data version from imported labels (manual)."),
    "train": Spec("labelloop.flows.stages.train_flow", {"params": "train"}, None,
                  "Train a challenger on the current data version (manual)."),
    "gate": Spec("labelloop.flows.stages.gate_flow", {"params": "gate"}, None,
                 "Challenger vs champion; promote if the rules pass (manual)."),
    "cycle": Spec("labelloop.flows.cycle.active_learning_cycle", {s: s.rstrip("_") for s in CYCLE_SECTIONS}, "0 3 * * *",
                  "One full turn of the loop (production → … → gate).", active_in=("cycle",), tags=("cycle",)),
}


def queue_name(root: Path) -> str:
    return f"ws-{workspace_slug(root)}"


def event_triggers(spec: Spec, root: Path, enabled: bool = True) -> list:
    """The deployment's triggers: for a spec with `on_event`, one `DeploymentEventTrigger` that runs the
    deployment (with its own parameters: the workspace) on each such event of this workspace that a
    stand-alone import sent — the cycle, which retrains on its own imports, is left out
    (`labelloop.imported-by`). Reactive, threshold 1: one run per event; an import sends one event per
    run that landed labels and none on a rerun (`tasks/events.py`). Prefect keeps it as an automation owned
    by the deployment, replaced on every registration."""
    if spec.on_event is None:
        return []
    from prefect.events import DeploymentEventTrigger

    slug = workspace_slug(root)
    return [DeploymentEventTrigger(
        name=f"{slug}: {spec.flow.rsplit('.', 1)[-1].removesuffix('_flow')} on {spec.on_event}",
        description=f"Run this deployment when {root} lands new labels (a stand-alone import run).",
        enabled=enabled,
        expect={spec.on_event},
        match={WORKSPACE_LABEL: slug, IMPORTED_BY_LABEL: "import"},
        posture="Reactive",
        threshold=1,
    )]


def ensure_workspace(ws: Workspace, params_file: Path | None, overrides: dict[str, dict[str, Any]],
                     retry: RetryPolicy) -> Workspace:
    """The workspace `ws`; created from `params_file` (+ overrides) when it does not exist yet."""
    from labelloop.apps.init import init_workspace
    from labelloop.config import load_params

    if ws.exists():
        if overrides:
            typer.echo(f"note: --set applies only to a new workspace; {ws.root} keeps its params.yaml", err=True)
        return ws
    params = load_params(params_file).with_overrides(**overrides)
    typer.echo(f"creating workspace {ws.root} from {params_file or 'the default params.yaml'}")
    init_workspace(ws.root, params, retry=retry)
    return ws


def parameters_for(workspace: str) -> dict[str, Any]:
    """What a deployment stores: the workspace alone. The params are read from its params.yaml at run
    time; freezing them here made every later edit of the file silently ineffective for deployed runs."""
    return {"workspace": workspace}


# Flow parameters the cycle passes to its stage flows; not for a person to fill in.
INTERNAL_PARAMETERS = ("resolved", "expected_challenger")
OVERRIDE_NOTE = ("Fields left empty keep the workspace's params.yaml as it is when the run starts; "
                 "a field filled in overrides it for this run only.")


def run_form_schema(schema: dict[str, Any], sections: dict[str, str]) -> dict[str, Any]:
    """The parameter schema the custom-run form is built from, made for overrides: no defaults inside the
    section models (a prefilled class default would be sent back and silently replace params.yaml's
    value), each section open as an empty object, the cycle's internal parameters hidden. Types, enums
    (dropdowns), bounds and descriptions stay, and Prefect still validates a run's parameters against it."""
    schema = json.loads(json.dumps(schema))  # a deep copy
    properties = schema.get("properties", {})
    for name in INTERNAL_PARAMETERS:
        properties.pop(name, None)
    schema["required"] = [name for name in schema.get("required", []) if name in properties]
    for name in sections:
        if name in properties:
            properties[name]["default"] = {}
            properties[name]["description"] = OVERRIDE_NOTE
    definitions = schema.get("definitions", {})
    for definition in definitions.values():
        for key, field_schema in definition.get("properties", {}).items():
            field_schema.pop("default", None)
            if field_schema.get("type") == "boolean":
                # The form always sends a checkbox (false when untouched), which would override params.yaml: offer a
                # dropdown instead, sent only when chosen ("true"/"false", read as booleans); the API still takes a boolean.
                definition["properties"][key] = {"anyOf": [{"type": "string", "enum": ["true", "false"]}, {"type": "boolean"}],
                                                 **{k: v for k, v in field_schema.items() if k != "type"}}
    used = _references(properties, definitions)
    schema["definitions"] = {name: body for name, body in definitions.items() if name in used}
    return schema


def _references(node: Any, definitions: dict[str, Any], found: set[str] | None = None) -> set[str]:
    """Names of the definitions `node` refers to, directly or through other definitions."""
    found = set() if found is None else found
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        name = ref.rsplit("/", 1)[-1] if ref.startswith("#/definitions/") else None
        if name and name not in found:
            found.add(name)
            _references(definitions.get(name, {}), definitions, found)
        for value in node.values():
            _references(value, definitions, found)
    elif isinstance(node, list):
        for value in node:
            _references(value, definitions, found)
    return found


def for_run_form(deployment, spec: Spec):
    """`deployment` (a RunnerDeployment) with its parameter schema made by `run_form_schema`."""
    from prefect.utilities.callables import ParameterSchema

    schema = run_form_schema(deployment._parameter_openapi_schema.model_dump(), spec.sections)
    deployment._parameter_openapi_schema = ParameterSchema(**schema)
    return deployment


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
                typer.echo(f"work pool {pool!r} (process) created")
            except ObjectAlreadyExists:
                pass
        try:
            existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
            if existing.concurrency_limit != 1:
                client.update_work_queue(existing.id, concurrency_limit=1)
        except ObjectNotFound:
            client.create_work_queue(queue, work_pool_name=pool, concurrency_limit=1,
                                     description="All runs on one labelloop workspace: one at a time.")
            typer.echo(f"work queue {queue!r} (concurrency 1) created in pool {pool!r}")


def load_flow(spec: Spec):
    """The flow object a spec names (imported from the installed package, as the worker will)."""
    module, name = spec.flow.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def register(ws: Workspace, name: str, pool: str, mode: str = "stages", timezone: str = "UTC", paused: bool = False,
             params_file: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None,
             only: list[str] | None = None, retry: RetryPolicy = DEFAULT_RETRY) -> dict[str, str]:
    """Create or update every deployment for the workspace `ws` (created if missing, its first data
    versions pushed with `retry`); returns {deployment full name: id}."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import deploy
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    ws = ensure_workspace(ws, params_file, overrides or {}, retry)
    ws.params()  # a params.yaml that does not validate fails here, before anything is registered
    queue = queue_name(ws.root)
    ensure_pool_and_queue(pool, queue)
    from labelloop.adapters.tracking import mlflow_uri
    from labelloop.tasks.environment import ENV_TRACKING_URI
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
    has_simulator = ws.traffic_path.exists()
    created: dict[str, str] = {}
    for key, spec in SPECS.items():
        if only and key not in only:
            continue
        if spec.needs_simulator and not has_simulator:
            continue
        loaded = load_flow(spec)
        schedules = []
        if spec.cron:
            schedules = [Cron(spec.cron, timezone=timezone, active=(mode in spec.active_in) and not paused)]
        concurrency = None
        if key == "cycle":
            concurrency = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
        deployment = for_run_form(loaded.to_deployment(
            name=name,
            work_queue_name=queue,
            job_variables={"env": env},
            schedules=schedules,
            triggers=event_triggers(spec, ws.root, enabled=(mode in spec.active_in) and not paused),
            concurrency_limit=concurrency,
            parameters=parameters_for(str(ws.root)),
            description=f"{spec.description}\n\nWorkspace: {ws.root}",
            tags=["labelloop", f"workspace:{workspace_slug(ws.root)}", *spec.tags],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ), spec)
        [deployment_id] = cast(list, deploy(deployment, work_pool_name=pool, build=False, push=False,
                                            print_next_steps_message=False, ignore_warnings=True))  # sync: a list
        created[f"{loaded.name}/{name}"] = str(deployment_id)
    return created
